import { randomBytes, randomUUID } from 'node:crypto';
import { expect, it } from 'vitest';
import { MAX_NOTICE, openNotice, sealNotice } from '../../src/engine/notice.js';

/** Events sealed into a notification (src/engine/notice.ts): readable and trusted only with the request's key. */
const events = [{ type: 'delta', choices: [{ index: 0, text: 'Hello there, zebra', finishReason: null }], at: 1 }, { type: 'done', choices: [{ index: 0, finishReason: 'stop' }] }];

function parts(item: string) {
  const [id, seq, seal, body] = item.split(':');
  return { id: id!, seq: Number(seq), seal: seal!, body: body! };
}

it('opens with its key, for its request and position only; anything else does not open', () => {
  const key = randomBytes(16);
  const id = randomUUID();
  const item = sealNotice(key, id, 7, JSON.stringify(events))!;
  const p = parts(item);
  expect(p.id).toBe(id);
  expect(p.seq).toBe(7);
  expect(p.seal).toHaveLength(38);
  expect(Buffer.from(p.body, 'base64url').toString('latin1')).not.toContain('zebra');
  expect(openNotice(key, id, 7, p.seal, p.body)).toEqual(events);
  // Another key, request or position; a flipped byte; garbage.
  expect(openNotice(randomBytes(16), id, 7, p.seal, p.body)).toBeNull();
  expect(openNotice(key, randomUUID(), 7, p.seal, p.body)).toBeNull();
  expect(openNotice(key, id, 8, p.seal, p.body)).toBeNull();
  const flipped = Buffer.from(p.body, 'base64url');
  flipped[0]! ^= 1;
  expect(openNotice(key, id, 7, p.seal, flipped.toString('base64url'))).toBeNull();
  expect(openNotice(key, id, 7, 'x'.repeat(38), p.body)).toBeNull();
  expect(openNotice(key, id, 7, p.seal, '')).toBeNull();
  // Two seals of the same events differ (a fresh nonce each).
  expect(sealNotice(key, id, 7, JSON.stringify(events))).not.toBe(item);
});

it('what cannot travel in a notification is not sealed (it is announced and read instead)', () => {
  const key = randomBytes(16);
  const big = JSON.stringify([{ type: 'delta', choices: [{ index: 0, text: 'x'.repeat(2000), finishReason: null }] }]);
  expect(sealNotice(key, randomUUID(), 0, big)).toBeNull();
  const fits = JSON.stringify([{ type: 'delta', choices: [{ index: 0, text: 'x'.repeat(1200), finishReason: null }] }]);
  expect(sealNotice(key, randomUUID(), 0, fits)!.length).toBeLessThanOrEqual(MAX_NOTICE);
  // An opened item must hold events (objects with a type), no more than its position allows.
  const id = randomUUID();
  for (const json of ['[]', '{"type":"delta"}', '[1,2]', JSON.stringify([...events, ...events])]) {
    const p = parts(sealNotice(key, id, 2, json)!);
    expect(openNotice(key, id, 2, p.seal, p.body), json).toBeNull();
  }
});

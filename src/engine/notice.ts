import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import type { EngineEvent } from './types.js';

/**
 * Events that travel in their notification (sql/010_events.sql), sealed with the request's
 * notify_key: a secret serve draws for each request it queues and only the worker that claims
 * the request reads back. Its waiter takes sealed events from the notification as they come,
 * without a round trip to read them. Any role can LISTEN and NOTIFY on any channel whose name it
 * learns, so the events are encrypted (AES-128-GCM: nothing to read) and authenticated (nothing
 * to forge); an item that does not open is only a hint to read the rows, as a plain one.
 *
 *   <request id>:<last seq>:<seal>:<events>
 *
 * <events>: base64url of the encrypted JSON array of the events ending at <last seq> (the JSON
 * written to ai.request_events with them); <seal>: base64url of the 12-byte nonce and the 16-byte
 * tag; the additional data is '<request id>:<last seq>', so a sealed item cannot be replayed
 * for another request or position.
 */

/** Longest item a worker seals; longer events are announced as `<id>:<seq>` and read. */
export const MAX_NOTICE = 2000;

/** The sealed item for `eventsJson` (a JSON array) ending at `lastSeq`, or null when it is too long to travel. */
export function sealNotice(key: Buffer, requestId: string, lastSeq: number, eventsJson: string): string | null {
  const plain = Buffer.from(eventsJson);
  // base64 is 4/3 of the bytes: skip the work when it cannot fit.
  if (plain.length * 4 > (MAX_NOTICE - 100) * 3) return null;
  const nonce = randomBytes(12);
  const cipher = createCipheriv('aes-128-gcm', key, nonce);
  cipher.setAAD(Buffer.from(`${requestId}:${lastSeq}`));
  const body = Buffer.concat([cipher.update(plain), cipher.final()]);
  const item = `${requestId}:${lastSeq}:${Buffer.concat([nonce, cipher.getAuthTag()]).toString('base64url')}:${body.toString('base64url')}`;
  return item.length <= MAX_NOTICE ? item : null;
}

/** The events a sealed item carries, first to last, or null when it does not open (or is malformed). */
export function openNotice(key: Buffer, requestId: string, lastSeq: number, seal: string, body: string): EngineEvent[] | null {
  try {
    const s = Buffer.from(seal, 'base64url');
    if (s.length !== 28) return null;
    const decipher = createDecipheriv('aes-128-gcm', key, s.subarray(0, 12));
    decipher.setAAD(Buffer.from(`${requestId}:${lastSeq}`));
    decipher.setAuthTag(s.subarray(12));
    const plain = Buffer.concat([decipher.update(Buffer.from(body, 'base64url')), decipher.final()]);
    const events = JSON.parse(plain.toString('utf8')) as unknown;
    return Array.isArray(events) && events.length > 0 && events.length <= lastSeq + 1 && events.every((e) => typeof e === 'object' && e !== null && typeof (e as { type?: unknown }).type === 'string')
      ? (events as EngineEvent[])
      : null;
  } catch {
    return null;
  }
}

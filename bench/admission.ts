/**
 * What budgets and rate limits cost the enqueue (sql/074_admission.sql), measured on the
 * statement itself, without serve or models: `ai.enqueue_request` from C concurrent connections,
 *
 *   none     keys without a budget or limit (no ai.spend row is touched: the baseline)
 *   own      every connection its own key with a budget and both rate limits (a row each)
 *   shared   every connection the same key and team, both with budgets and limits (the hot row)
 *
 * in interleaved rounds (none, own, shared, none, ...), reporting admissions per second and the
 * statement's p50 / p99 latency. The shared case is the worst: every admission of one key takes
 * the same two row locks in turn.
 *
 *   npx tsx bench/admission.ts [--clients 8] [--per-client 200] [--rounds 3]
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { benchDatabase } from './lib.js';

const { values } = parseArgs({ options: { clients: { type: 'string' }, 'per-client': { type: 'string' }, rounds: { type: 'string' } } });
const C = Number(values.clients ?? 8);
const N = Number(values['per-client'] ?? 200);
const ROUNDS = Number(values.rounds ?? 3);

const db = await benchDatabase();
const conns: pg.Client[] = [];
try {
  const setup = new pg.Client({ connectionString: db.url });
  await setup.connect();
  const team = (await setup.query(`insert into ai.teams (name, budget_tokens, rpm_limit, tpm_limit) values ('t', 1e15, 1e9, 1e15) returning id`)).rows[0].id;
  const key = async (limited: boolean, teamId: string | null) =>
    (await setup.query(`insert into ai.api_keys (name, prefix, key_hash, team_id, budget_tokens, rpm_limit, tpm_limit) values ('k', 'x', $1, $2, $3, $4, $5) returning id`,
      [randomBytes(32), teamId, limited ? 1e15 : null, limited ? 1e9 : null, limited ? 1e15 : null])).rows[0].id as string;
  const keys: Record<'none' | 'own' | 'shared', string[]> = { none: [], own: [], shared: [] };
  for (let i = 0; i < C; i++) {
    keys.none.push(await key(false, null));
    keys.own.push(await key(true, null));
  }
  keys.shared = Array(C).fill(await key(true, team)) as string[];
  for (let i = 0; i < C; i++) {
    const c = new pg.Client({ connectionString: db.url });
    await c.connect();
    conns.push(c);
  }
  const results: Record<string, { rate: number[]; p50: number[]; p99: number[] }> = {};
  for (let round = 0; round < ROUNDS; round++) {
    for (const mode of ['none', 'own', 'shared'] as const) {
      const lat: number[] = [];
      const t0 = performance.now();
      await Promise.all(conns.map(async (c, i) => {
        for (let j = 0; j < N; j++) {
          const s = performance.now();
          await c.query(`select ai.enqueue_request($1, 'chat.completions', 'm', 'm', '{"messages":[]}', '{}', false, $2, 3, null, 1000000, 100, '1 minute')`, [randomUUID(), keys[mode][i]!]);
          lat.push(performance.now() - s);
        }
      }));
      const secs = (performance.now() - t0) / 1000;
      // Untimed: end them (settling the limited ones), so the queue-bound count stays as short for every mode.
      await setup.query(`update ai.requests set status = 'completed', usage = '{"prompt_tokens": 1, "completion_tokens": 1}' where status = 'queued'`);
      lat.sort((a, b) => a - b);
      const r = (results[mode] ??= { rate: [], p50: [], p99: [] });
      r.rate.push((C * N) / secs);
      r.p50.push(lat[Math.floor(lat.length * 0.5)]!);
      r.p99.push(lat[Math.floor(lat.length * 0.99)]!);
    }
  }
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  console.log(`ai.enqueue_request, ${C} connections x ${N} each, ${ROUNDS} interleaved rounds (medians of the rounds)`);
  console.log('| keys | admissions/s | p50 ms | p99 ms |\n| --- | --- | --- | --- |');
  for (const [mode, r] of Object.entries(results)) console.log(`| ${mode} | ${med(r.rate).toFixed(0)} | ${med(r.p50).toFixed(2)} | ${med(r.p99).toFixed(2)} |`);
  await setup.end();
} finally {
  for (const c of conns) await c.end().catch(() => {});
  await db.drop();
}

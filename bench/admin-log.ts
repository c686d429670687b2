/**
 * What a page of the admin request log (GET /admin/requests) costs at a large log, with and
 * without the (queued_at, id) btree of migration 0045. A throwaway database gets ROWS requests
 * spread over 30 days (3 models, 20 keys, 2 % failed); each query is the route's own
 * (listRequests), timed on one connection. The two sides alternate round by round: "without"
 * drops the index inside a transaction that is rolled back, so both sides see the same table.
 *
 *   npx tsx bench/admin-log.ts [ROWS]      (default 1000000; needs PostgreSQL as for the tests)
 */
import pg from 'pg';
import { listRequests, type RequestFilter } from '../src/db/admin-repo.js';
import { usage, type UsageDimension } from '../src/db/admin-stats-repo.js';
import { benchDatabase, machine, stat } from './lib.js';

const ROWS = Number(process.argv[2] ?? 1_000_000);
const ROUNDS = 5;
const CALLS = 5;

const db = await benchDatabase();
const client = new pg.Client({ connectionString: db.url });
try {
  await client.connect();
  const t0 = Date.now();
  await client.query(`insert into ai.api_keys (name, prefix, key_hash) select 'k' || i, 'sk-' || i, sha256(i::text::bytea) from generate_series(1, 20) i`);
  await client.query(
    `insert into ai.requests (id, endpoint, model, requested_model, input, status, key_id, queued_at, usage)
     select gen_random_uuid(), 'chat.completions', m, m, '[]', case when i % 50 = 0 then 'failed' else 'completed' end,
            (select id from ai.api_keys order by name offset (i % 20) limit 1),
            now() - (random() * interval '30 days'), '{"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}'
       from generate_series(1, $1::int) i, lateral (select (array['tiny', 'small', 'embed'])[1 + i % 3] as m) x`,
    [ROWS],
  );
  await client.query('vacuum analyze ai.requests');
  process.stderr.write(`[bench] ${ROWS} rows in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  const key = (await client.query<{ id: string }>(`select id from ai.api_keys where name = 'k7'`)).rows[0]!.id;
  // A cursor deep in the log: where page 200 of 50 starts.
  const deep = await listRequests(client, { limit: 10_000 });
  const last = deep.rows.at(-1)!;
  const micros = (await client.query<{ m: string }>(`select (extract(epoch from queued_at) * 1000000)::bigint::text as m from ai.requests where id = $1`, [last.id])).rows[0]!.m;
  const cases: [string, Omit<RequestFilter, 'limit'>][] = [
    ['first page', {}],
    ['page 200 (cursor)', { after: { micros, id: last.id } }],
    ['model filter', { model: 'small' }],
    ['status=failed', { status: 'failed' }],
    ['key filter', { keyId: key }],
    ['last 24 h, model', { model: 'tiny', since: new Date(Date.now() - 86_400_000) }],
  ];
  const times = new Map<string, { with: number[]; without: number[] }>(cases.map(([n]) => [n, { with: [], without: [] }]));
  const timeAll = async (side: 'with' | 'without') => {
    for (const [name, f] of cases) {
      for (let i = 0; i < CALLS; i++) {
        const s = performance.now();
        const page = await listRequests(client, { ...f, limit: 50 });
        times.get(name)![side].push(performance.now() - s);
        if (page.rows.length !== 50) throw new Error(`${name}: ${page.rows.length} rows`);
      }
    }
  };
  for (let round = 0; round < ROUNDS; round++) {
    const order: ('with' | 'without')[] = round % 2 ? ['without', 'with'] : ['with', 'without'];
    for (const side of order) {
      if (side === 'with') await timeAll('with');
      else {
        await client.query('begin');
        await client.query('drop index ai.requests_log_idx');
        await timeAll('without');
        await client.query('rollback');
      }
    }
  }
  console.log(`admin request log, 50-row pages over ${ROWS.toLocaleString()} rows; ms per page, median (min–max) of ${ROUNDS * CALLS}, sides interleaved`);
  console.log(JSON.stringify(machine()));
  console.log('| query | with requests_log_idx | without |\n| --- | --- | --- |');
  const f = (xs: number[]) => {
    const s = stat(xs);
    return `${s.median.toFixed(1)} (${s.min.toFixed(1)}–${s.max.toFixed(1)})`;
  };
  for (const [name, t] of times) console.log(`| ${name} | ${f(t.with)} | ${f(t.without)} |`);
  // GET /admin/usage reads every request in its window (no counters, by design): what that costs.
  const pool = new pg.Pool({ connectionString: db.url, max: 1 });
  try {
    console.log(`\nadmin usage over the same log; ms per call, median (min–max) of ${CALLS}\n| group_by | last 30 days | last 24 h |\n| --- | --- | --- |`);
    for (const groupBy of [[], ['day'], ['model'], ['key'], ['day', 'model', 'key']] as UsageDimension[][]) {
      const cell = async (ms: number) => {
        const xs: number[] = [];
        for (let i = 0; i < CALLS; i++) {
          const s = performance.now();
          await usage(pool, groupBy, new Date(Date.now() - ms), null);
          xs.push(performance.now() - s);
        }
        return f(xs);
      };
      console.log(`| ${groupBy.join(',') || '(total)'} | ${await cell(30 * 86_400_000)} | ${await cell(86_400_000)} |`);
    }
  } finally {
    await pool.end();
  }
} finally {
  await client.end().catch(() => {});
  await db.drop();
}

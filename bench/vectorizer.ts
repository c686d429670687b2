/**
 * Issue 21's backfill figure: a chunking vectorizer created over a table of long documents,
 * chunks/s until its backfill is done (created → queue empty), against the same formatted chunks
 * embedded in this process with the same model and thread settings (the worker's `embed`, in
 * calls of MAX_CALL_INPUTS, the worker's largest model call). Rounds alternate the sides in a
 * random order; every round has its own table and texts.
 *
 * Where the vectorizer's time goes comes from the worker's own account of the job (its log line
 * `vectorizer N: … rows, … chunks in … ms (claim …, split …, model …, write …)`) and the CPU
 * seconds of the worker and of PostgreSQL's backends over the round.
 */
import { MAX_CALL_INPUTS } from '../src/worker/embedding/batcher.js';
import { format, splitRecursive } from '../src/worker/vectorize/chunking.js';
import { basename, dirname } from 'node:path';
import type { LoadedEmbedModel } from '../src/worker/loader.js';
import { ensureFixtureModels } from '../fixtures/models/index.mjs';
import { EMBED, cpuDuring } from './gateway.js';
import { embedInProcess, loadInProcessEmbed } from './inproc.js';
import { num, perSec, roundRatio, seeded, sentence, SETTLE_GAP_MS, type Ctx, type SectionResult } from './kit.js';
import { cli, progress, sleep, stat, type CliProcess } from './lib.js';

const SIZE = 800;
const OVERLAP = 100;
const SEPARATORS = ['\n\n', '\n', ' ', ''];
const TEMPLATE = '$title: $chunk';

/** A document of 2–20 KB: paragraphs of 3–8 sentences, unique by round and id. */
function documentText(round: number, id: number, rand: () => number): string {
  const target = 2000 + Math.floor(rand() * 18000);
  const paras: string[] = [];
  let len = 0;
  for (let p = 0; len < target; p++) {
    const n = 3 + Math.floor(rand() * 6);
    const para = Array.from({ length: n }, (_, k) => `${sentence(id * 977 + p * 13 + k, `r${round}d${id}p${p}s`)}.`).join(' ');
    paras.push(para);
    len += para.length + 2;
  }
  return paras.join('\n\n').slice(0, target);
}

/** The worker's account of one job (see src/worker/vectorize-task.ts). */
interface JobTimes {
  rows: number;
  chunks: number;
  ms: number;
  claim: number;
  claimWaited: number;
  split: number;
  model: number;
  write: number;
  waited: number;
  index: number;
  batches: number;
}

const JOB_LINE = /vectorizer (\d+): (\d+) rows, (\d+) chunks in (\d+) ms \(batches (\d+); claim (\d+) ms of which (\d+) ms waited on, split (\d+) ms, model (\d+) ms, write (\d+) ms of which (\d+) ms waited on; index (\d+) ms\)/g;

function jobTimes(output: string, id: number): JobTimes {
  const t: JobTimes = { rows: 0, chunks: 0, ms: 0, claim: 0, claimWaited: 0, split: 0, model: 0, write: 0, waited: 0, index: 0, batches: 0 };
  for (const m of output.matchAll(JOB_LINE)) {
    if (Number(m[1]) !== id) continue;
    t.rows += Number(m[2]);
    t.chunks += Number(m[3]);
    t.ms += Number(m[4]);
    t.batches += Number(m[5]);
    t.claim += Number(m[6]);
    t.claimWaited += Number(m[7]);
    t.split += Number(m[8]);
    t.model += Number(m[9]);
    t.write += Number(m[10]);
    t.waited += Number(m[11]);
    t.index += Number(m[12]);
  }
  return t;
}

/**
 * How the vectorizer side runs: `deferred` as ai.create_vectorizer does (the HNSW index built
 * once the backfill is done), `at_once` with the index created in create_vectorizer's
 * transaction, so every chunk is inserted into it one by one (how it was before migration 0080).
 */
type Variant = 'deferred' | 'at_once';

interface Side {
  /** The model's name in the gateway. */
  model: string;
  /** The worker that serves it (its log has the job's account). */
  worker: CliProcess;
  /** The same model, loaded in this process with the same settings. */
  inproc: LoadedEmbedModel;
  docs: number;
  rounds: number;
  /** Tells this side's tables and texts from the other's. */
  tag: string;
  variants: Variant[];
}

interface RoundDetail {
  round: number;
  variant: Variant;
  chunks: number;
  per_s: number;
  cpu_s: { wallS: number; workerS: number; postgresS: number };
  job: JobTimes;
}

/** Creates the vectorizer over `table` and waits until its backfill is done: queue empty, index built. */
async function backfill(c: Ctx, side: Side, variant: Variant, table: string, chunks: number, docs: number, round: number): Promise<RoundDetail> {
  const db = c.stack.pool;
  const outputFrom = side.worker.output().length;
  let id = 0;
  let perS = 0;
  const cpu = await cpuDuring(c.stack, async () => {
    const t = performance.now();
    const client = await db.connect();
    try {
      await client.query('begin');
      id = (await client.query<{ id: number }>(
        `select ai.create_vectorizer($1::regclass, 'body', $2, chunking => ai.chunking_recursive($3, $4), formatting => $5) as id`,
        [table, side.model, SIZE, OVERLAP, TEMPLATE],
      )).rows[0]!.id;
      if (variant === 'at_once') await client.query(`create index on ${table}_embeddings using hnsw (embedding vector_cosine_ops)`);
      await client.query('commit');
    } finally {
      client.release();
    }
    for (;;) {
      const q = await db.query<{ n: number; pending: boolean }>(
        `select (select count(*)::int from ai.vectorizer_queue where vectorizer_id = $1) as n, (select index_pending from ai.vectorizers where id = $1) as pending`, [id]);
      if (q.rows[0]!.n === 0 && !q.rows[0]!.pending) break;
      if (performance.now() - t > 600_000) throw new Error(`vectorizer round ${round + 1}: backfill not done in 10 minutes`);
      await sleep(25);
    }
    perS = perSec(chunks, performance.now() - t);
  });
  const s = (await db.query<{ failed: string; chunks: string; done: string }>(`select failed, chunks, done from ai.vectorizer_status where id = $1`, [id])).rows[0]!;
  if (Number(s.failed) !== 0 || Number(s.chunks) !== chunks || Number(s.done) !== docs) {
    throw new Error(`vectorizer round ${round + 1} (${variant}): ${s.done} of ${docs} documents, ${s.chunks} of ${chunks} chunks, ${s.failed} failed`);
  }
  const hnsw = await db.query(`select from pg_indexes where tablename = $1 and indexdef like '%hnsw%'`, [`${table}_embeddings`]);
  if (hnsw.rowCount !== 1) throw new Error(`vectorizer round ${round + 1} (${variant}): ${hnsw.rowCount} HNSW indexes on the destination`);
  // The job logs its account when it ends, just after the backfill is done.
  let job = jobTimes(side.worker.output().slice(outputFrom), id);
  for (let k = 0; k < 40 && job.rows < docs; k++) {
    await sleep(50);
    job = jobTimes(side.worker.output().slice(outputFrom), id);
  }
  await db.query(`select ai.drop_vectorizer($1)`, [id]);
  return { round, variant, chunks, per_s: perS, cpu_s: cpu, job };
}

async function backfillRounds(c: Ctx, side: Side, rand: () => number) {
  const db = c.stack.pool;
  const rates: Record<Variant | 'inproc', number[]> = { deferred: [], at_once: [], inproc: [] };
  const detail: RoundDetail[] = [];
  /** CPU seconds of this process over each round's in-process side. */
  const inprocCpu: number[] = [];
  await embedInProcess(side.inproc, ['warm up the in-process model']);
  for (let r = 0; r < side.rounds; r++) {
    const bodies = Array.from({ length: side.docs }, (_, i) => documentText(r, i + 1, rand));
    // One table per variant, the same documents.
    for (const v of side.variants) {
      await db.query(`create table bench_vdocs_${side.tag}_${v}_${r} (id int primary key, title text not null, body text not null)`);
      await db.query(`insert into bench_vdocs_${side.tag}_${v}_${r} select i, 'Title ' || i, b from unnest($1::text[]) with ordinality as x(b, i)`, [bodies]);
    }
    // The texts the worker embeds: each chunk formatted with its row (the same splitter and template code).
    const texts = bodies.flatMap((b, i) => splitRecursive(b, SIZE, OVERLAP, SEPARATORS).map((ch) => format(TEMPLATE, ch, { title: `Title ${i + 1}` })));
    progress(`vectorizer (${side.model}) round ${r + 1}/${side.rounds}: ${side.docs} documents, ${texts.length} chunks`);
    // The sides in a random order, a settle gap between them.
    const order: (Variant | 'inproc')[] = [...side.variants, 'inproc'];
    for (let i = order.length - 1; i > 0; i--) {
      const k = Math.floor(rand() * (i + 1));
      [order[i], order[k]] = [order[k]!, order[i]!];
    }
    for (const what of order) {
      if (what === 'inproc') {
        const t = performance.now();
        const c0 = process.cpuUsage();
        for (let i = 0; i < texts.length; i += MAX_CALL_INPUTS) await embedInProcess(side.inproc, texts.slice(i, i + MAX_CALL_INPUTS));
        rates.inproc.push(perSec(texts.length, performance.now() - t));
        const c1 = process.cpuUsage(c0);
        inprocCpu.push((c1.user + c1.system) / 1e6);
      } else {
        const d = await backfill(c, side, what, `bench_vdocs_${side.tag}_${what}_${r}`, texts.length, side.docs, r);
        rates[what].push(d.per_s);
        detail.push(d);
      }
      await sleep(SETTLE_GAP_MS);
    }
    for (const v of side.variants) await db.query(`drop table bench_vdocs_${side.tag}_${v}_${r}`);
  }
  const ratio = roundRatio(rates.deferred, rates.inproc);
  const last = detail.filter((d) => d.variant === 'deferred').pop()!;
  const j = last.job;
  let note = `last round: ${last.chunks} chunks in ${num(last.cpu_s.wallS)} s; the job: ${j.batches} batches, claim ${num(j.claim)} ms (${num(j.claimWaited)} ms of it waited on), split ${num(j.split)} ms, model ${num(j.model)} ms, ` +
    `write ${num(j.write)} ms (${num(j.waited)} ms of it waited on), index build ${num(j.index)} ms; CPU s: worker ${num(last.cpu_s.workerS)}, postgres ${num(last.cpu_s.postgresS)}`;
  if (side.variants.includes('at_once')) {
    const a = detail.filter((d) => d.variant === 'at_once').pop()!;
    note += `; with the index made at once (before migration 0080): ${roundRatio(rates.at_once, rates.inproc).value.toFixed(2)}× in-process, ` +
      `the deferred index ${roundRatio(rates.deferred, rates.at_once).value.toFixed(2)}× its rate (medians of per-round ratios), last round postgres CPU ${num(a.cpu_s.postgresS)} s, write ${num(a.job.write)} ms (${num(a.job.waited)} ms waited on)`;
  }
  note += `; in-process: calls of ${MAX_CALL_INPUTS}, last round ${num(inprocCpu[inprocCpu.length - 1] ?? NaN)} CPU s; threads per model ${process.env.SWITCHYARD_THREADS || 'onnxruntime default'} on both sides`;
  return { rates, ratio, note, detail, inproc_cpu_s: inprocCpu };
}

const TINY_EMBED = 'tiny-embed';

export async function vectorizer(c: Ctx): Promise<SectionResult> {
  const rand = seeded(21);
  const figure = (docs: number, what: string) =>
    `backfill of a chunking vectorizer (${docs} documents of 2–20 KB, ${SIZE}/${OVERLAP} recursive, '${TEMPLATE}'), ${what}, vs in-process batched embedding of the same chunks`;
  // 1. The bench's MiniLM-L6-shaped model: the model is most of the time.
  const main: Side = { model: EMBED, worker: c.stack.workers[0]!, inproc: c.embed, docs: c.quick ? 6 : 16, rounds: c.quick ? 2 : 4, tag: 'm', variants: ['deferred'] };
  const a = await backfillRounds(c, main, rand);
  // 2. The test suite's tiny-embed (32 dimensions, 2 layers): the model costs little, so what
  // the vectorizer adds (claims, splitting, writes, the HNSW index) shows. The running worker
  // picks up a newly registered model; it is removed again at the end.
  const fixtures = await ensureFixtureModels();
  const path = fixtures.models[TINY_EMBED];
  const worker = c.stack.workers[0]!;
  const tinyDocs = c.quick ? 120 : 400;
  await cli(c.stack.db.url, ['models', 'add', TINY_EMBED, '--task', 'embedding', '--source', path, '--dtype', 'fp32']).done;
  let b: Awaited<ReturnType<typeof backfillRounds>>;
  const tiny = await loadInProcessEmbed(dirname(path), basename(path));
  try {
    await worker.waitFor(new RegExp(`model ${TINY_EMBED} ready in`), 120_000);
    b = await backfillRounds(c, { model: TINY_EMBED, worker, inproc: tiny, docs: tinyDocs, rounds: c.quick ? 3 : 5, tag: 't', variants: ['deferred', 'at_once'] }, rand);
  } finally {
    await tiny.model.dispose();
    await cli(c.stack.db.url, ['models', 'remove', TINY_EMBED]).done.catch(() => {});
  }
  return {
    rows: [
      {
        id: 'vectorizer.backfill', figure: figure(main.docs, `model ${EMBED} (MiniLM-L6's shape)`), unit: 'chunks/s',
        gateway: stat(a.rates.deferred), inproc: stat(a.rates.inproc), compare: a.ratio, target: '≥ 0.7× (issue 21)', met: a.ratio.value >= 0.7, note: a.note,
      },
      {
        id: 'vectorizer.backfill_tiny', figure: figure(tinyDocs, `model ${TINY_EMBED} (32 dimensions, 2 layers: the vectorizer's own costs show)`), unit: 'chunks/s',
        gateway: stat(b.rates.deferred), inproc: stat(b.rates.inproc), compare: b.ratio, target: '≥ 0.7× (issue 21)', met: b.ratio.value >= 0.7, note: b.note,
      },
    ],
    raw: { chunk_size: SIZE, chunk_overlap: OVERLAP, template: TEMPLATE, [EMBED]: { documents: main.docs, per_s: a.rates, detail: a.detail, inproc_cpu_s: a.inproc_cpu_s }, [TINY_EMBED]: { documents: tinyDocs, per_s: b.rates, detail: b.detail, inproc_cpu_s: b.inproc_cpu_s } },
  };
}

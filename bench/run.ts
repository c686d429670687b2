/**
 * The benchmark suite: the gateway (real `serve` + `worker` processes on a throwaway database)
 * against the same models called in-process, side by side in one run.
 *
 *   npm run bench                      full run (about 15 minutes on 2 cores); updates BENCHMARKS.md
 *   npm run bench -- --quick           fewer rounds, shorter generations (about five minutes on 2 cores)
 *   npm run bench -- --only streaming,embeddings    some sections (names: see --help)
 *
 * Writes bench/results/<time>-<mode>.json (every figure, raw numbers, machine, versions, commit)
 * and bench/results/latest.{json,md}, and prints the markdown table.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { startStack } from './gateway.js';
import { InProcessChat, loadInProcessEmbed } from './inproc.js';
import { machine, progress, type Stat } from './lib.js';
import { ensureBenchModels } from './models.js';
import { SECTIONS, type Ctx, type Row, type SectionName } from './sections.js';
import { tuneWorkerHeap } from '../src/worker/heap.js';

// This process holds the in-process models and is every gateway request's client: it gets the
// worker's heap setting (src/worker/heap.ts), or its own full collections pause both sides.
if (process.env.BENCH_HEAP !== '0') tuneWorkerHeap();

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    only: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
const names = Object.keys(SECTIONS) as SectionName[];
if (values.help) {
  console.log(`npm run bench [-- --quick] [-- --only ${names.join(',')}]`);
  process.exit(0);
}
const only = values.only ? (values.only.split(',').map((s) => s.trim()) as SectionName[]) : names;
for (const n of only) if (!names.includes(n)) throw new Error(`unknown section '${n}'; sections: ${names.join(', ')}`);
const quick = values.quick!;
const mode = quick ? 'quick' : 'full';

function versions() {
  // Read package.json files by path: packages' export maps may not expose them.
  const version = (pkg: string, from = ROOT) => {
    for (let dir = from; dir.length > 1; dir = join(dir, '..')) {
      try {
        return (JSON.parse(readFileSync(join(dir, 'node_modules', pkg, 'package.json'), 'utf8')) as { version: string }).version;
      } catch {
        /* look further up */
      }
    }
    return 'unknown';
  };
  // The onnxruntime-node transformers.js actually loads (a nested copy wins over the root one).
  const transformersDir = join(ROOT, 'node_modules/@huggingface/transformers');
  const git = (args: string[]) => {
    try {
      return execFileSync('git', args, { cwd: ROOT, encoding: 'utf8' }).trim();
    } catch {
      return 'unknown';
    }
  };
  return {
    transformers: version('@huggingface/transformers'),
    onnxruntime_node: version('onnxruntime-node', transformersDir),
    onnxruntime_node_root: version('onnxruntime-node'),
    graphile_worker: version('graphile-worker'),
    fastify: version('fastify'),
    switchyard: (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version,
    commit: git(['rev-parse', '--short', 'HEAD']),
    uncommitted_files: git(['status', '--porcelain']).split('\n').filter(Boolean).length,
  };
}

// ---------------------------------------------------------------- formatting

const digits = (v: number) => (Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2);
const num = (v: number) => (Number.isInteger(v) ? String(v) : Number.isFinite(v) ? v.toFixed(digits(v)) : 'n/a');
const cell = (s: Stat | null, unit: string) => {
  if (!s) return '';
  if (s.n <= 1) return `${num(s.median)} ${unit}`;
  return `${num(s.median)} ${unit} (${num(s.min)}–${num(s.max)})`;
};
const compareCell = (r: Row) => {
  if (!r.compare) return '';
  const v = r.compare.value;
  if (r.compare.kind === 'ratio') return `${v.toFixed(2)}${r.compare.unit.startsWith('×') ? r.compare.unit : ` ${r.compare.unit}`}`;
  return `${v >= 0 ? '+' : ''}${num(v)} ${r.compare.unit}`;
};
const metCell = (r: Row) => (r.unsupported ? 'n/a' : r.met === null ? '' : r.met ? '✅ met' : '❌ missed');

export function table(rows: Row[]): string {
  const lines = [
    '| figure | gateway | in-process | gateway vs in-process | target | |',
    '| --- | --- | --- | --- | --- | --- |',
  ];
  for (const r of rows) {
    const gateway = r.unsupported ?? cell(r.gateway, r.unit);
    const fig = r.note ? `${r.figure}<br><sub>${r.note}</sub>` : r.figure;
    lines.push(`| ${fig} | ${gateway} | ${cell(r.inproc, r.unit)} | ${compareCell(r)} | ${r.target ?? ''} | ${metCell(r)} |`);
  }
  return lines.join('\n');
}

// ---------------------------------------------------------------- run

const started = new Date();
// The machines are shared: the load around the run says how much to trust its absolute numbers.
const loadAtStart = machine().loadavg_1m;
const t0 = performance.now();
const models = await ensureBenchModels(progress);
progress('loading the in-process models');
const chat = await InProcessChat.load(models.dir, models.chat);
const tiny = await InProcessChat.load(dirname(models.tiny), basename(models.tiny));
const embed = await loadInProcessEmbed(models.dir, models.embed);
// Warm up: the first forward passes of a session (and of each batch size) are slow.
for (const b of [1, 8]) await chat.generate(chat.promptIds([{ role: 'user', content: 'warm up' }]), 4, b);
for (let i = 0; i < 3; i++) await tiny.generate(tiny.promptIds([{ role: 'user', content: 'warm up' }]), 4);
progress('starting serve + worker on a fresh database');
const stack = await startStack(models);
progress(`gateway at ${stack.base}`);
const ctx: Ctx = { stack, chat, tiny, embed, quick };
const sections: Record<string, { rows: Row[]; raw: Record<string, unknown>; seconds: number; error?: string }> = {};
let interrupted = false;
const onSignal = () => {
  interrupted = true;
  progress('interrupted: stopping the processes and dropping the database');
  void stack.stop().finally(() => process.exit(130));
};
process.once('SIGINT', onSignal);
process.once('SIGTERM', onSignal);
try {
  for (const name of only) {
    if (interrupted) break;
    const ts = performance.now();
    progress(`section ${name}`);
    try {
      const r = await SECTIONS[name](ctx);
      sections[name] = { ...r, seconds: Math.round((performance.now() - ts) / 100) / 10 };
    } catch (err) {
      // One failing section must not lose the others' figures.
      const message = (err as Error).stack ?? String(err);
      progress(`section ${name} failed: ${message}`);
      sections[name] = { rows: [], raw: {}, seconds: Math.round((performance.now() - ts) / 100) / 10, error: message };
    }
  }
} finally {
  const batching = stack.workers[0]?.output().match(/embeddings minilm: .*/g) ?? [];
  await stack.stop();
  await chat.dispose();
  await tiny.dispose();
  (ctx as { batching?: string[] }).batching = batching;
}

const rows = Object.values(sections).flatMap((s) => s.rows);
const md = table(rows);
const failures = Object.entries(sections).filter(([, s]) => s.error);
const pgVersion = execFileSync('psql', ['-XtAc', 'show server_version', process.env.SWITCHYARD_TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'], { encoding: 'utf8' }).trim();
const result = {
  mode,
  started: started.toISOString(),
  seconds: Math.round((performance.now() - t0) / 1000),
  command: `npm run bench${quick ? ' -- --quick' : ''}${values.only ? ` ${quick ? '' : '-- '}--only ${values.only}` : ''}`,
  machine: { ...machine(), loadavg_1m_at_start: loadAtStart, postgres: pgVersion, ...versions() },
  models: { chat: models.chat, embed: models.embed, tiny: 'fixtures tiny-chat' },
  rows,
  sections,
  worker_batching_log: (ctx as { batching?: string[] }).batching ?? [],
};
const dir = join(ROOT, 'bench/results');
await mkdir(dir, { recursive: true });
const stamp = started.toISOString().replace(/[:.]/g, '-').slice(0, 19);
const json = `${JSON.stringify(result, null, 1)}\n`;
await writeFile(join(dir, `${stamp}-${mode}.json`), json);
await writeFile(join(dir, 'latest.json'), json);
const m = result.machine;
const header = `${mode} run, ${started.toISOString().slice(0, 16).replace('T', ' ')} UTC, ${result.seconds} s: ${m.cores} × ${m.cpu}, ${m.memory_gib} GiB, load average ${m.loadavg_1m_at_start} at start and ${m.loadavg_1m} at the end, ` +
  `node ${m.node}, transformers.js ${m.transformers}, onnxruntime-node ${m.onnxruntime_node}, PostgreSQL ${m.postgres}, commit ${m.commit}` +
  `${m.uncommitted_files ? ` (+${m.uncommitted_files} uncommitted files)` : ''}`;
const report = `${header}\n\n${md}\n${failures.length ? `\nFailed sections: ${failures.map(([n, s]) => `${n} (${s.error!.split('\n')[0]})`).join('; ')}\n` : ''}`;
await writeFile(join(dir, 'latest.md'), report);
console.log(`\n${report}`);
progress(`wrote bench/results/${stamp}-${mode}.json`);

// A full run of every section is "the latest": it replaces the table in BENCHMARKS.md.
if (!quick && !values.only) {
  const path = join(ROOT, 'BENCHMARKS.md');
  const doc = await readFile(path, 'utf8').catch(() => '');
  const start = '<!-- bench:latest:start -->';
  const end = '<!-- bench:latest:end -->';
  const i = doc.indexOf(start);
  const j = doc.indexOf(end);
  if (i !== -1 && j > i) {
    await writeFile(path, `${doc.slice(0, i + start.length)}\n${report}\n${doc.slice(j)}`);
    progress('updated the table in BENCHMARKS.md');
  }
}
process.exit(failures.length ? 1 : 0);

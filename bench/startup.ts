/**
 * Start-up time of `serve` and `worker`: the compiled package (dist/, as bin/switchyard.mjs runs
 * it now) against the TypeScript sources through tsx's loader (as bin/switchyard.mjs ran them
 * before issue 18), interleaved round by round in random order on one throwaway database.
 * Time from spawn to the ready line (`listening on`, `worker ... serving`); the worker's includes
 * loading the fixture chat model in its model thread.
 *
 *   npx tsx bench/startup.ts [--rounds 8] [--tsx-root DIR]
 *
 * --tsx-root: the checkout whose src/ the tsx side runs (default: this one). Give a checkout of
 * the commit before the build (with node_modules) to time the old path whole: there the model
 * thread registers tsx too, while this checkout's thread always loads dist/.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ensureFixtureModels } from '../fixtures/models/index.mjs';
import { ensureBuilt } from '../scripts/build.mjs';
import { benchDatabase, machine, progress, stat } from './lib.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const { values } = parseArgs({ options: { rounds: { type: 'string', default: '8' }, 'tsx-root': { type: 'string', default: ROOT } } });
const rounds = Math.max(1, Number(values.rounds) || 8);
const tsxRoot = resolve(values['tsx-root']!);

ensureBuilt();
// The old bin/switchyard.mjs, pointed at --tsx-root's sources (tsx resolved from this checkout).
mkdirSync(join(ROOT, '.cache'), { recursive: true });
const TSX_BIN = join(ROOT, '.cache/startup-tsx-bin.mjs');
writeFileSync(
  TSX_BIN,
  `import { register } from 'tsx/esm/api';\nregister();\nconst { main } = await import(${JSON.stringify(join(tsxRoot, 'src/cli/main.ts'))});\nprocess.exitCode = await main(process.argv.slice(2));\n`,
);
const SIDES = { dist: join(ROOT, 'bin/switchyard.mjs'), tsx: TSX_BIN } as const;
type Side = keyof typeof SIDES;

/** Milliseconds from spawn to `ready`, then SIGTERM and wait for the exit (not timed). */
function timeStart(side: Side, args: string[], env: Record<string, string>, ready: RegExp): Promise<number> {
  return new Promise((resolvePromise, reject) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, [SIDES[side], ...args], { env: { ...process.env, ...env } });
    let out = '';
    let took: number | null = null;
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    const on = (d: Buffer) => {
      out += d;
      if (took === null && ready.test(out)) {
        took = performance.now() - t0;
        child.kill('SIGTERM');
      }
    };
    child.stdout.on('data', on);
    child.stderr.on('data', on);
    child.on('exit', () => {
      clearTimeout(timer);
      if (took === null) reject(new Error(`${side} ${args.join(' ')} never became ready:\n${out.slice(-3000)}`));
      else resolvePromise(took);
    });
  });
}

const { dir: modelsDir } = await ensureFixtureModels();
const db = await benchDatabase();
try {
  const add = spawn(process.execPath, [SIDES.dist, 'models', 'add', 'tiny', '--task', 'chat', '--source', 'tiny-chat'], { env: { ...process.env, DATABASE_URL: db.url }, stdio: ['ignore', 'ignore', 'inherit'] });
  await new Promise((r) => add.on('exit', r));
  const commands = {
    serve: { args: ['serve', '--no-auth'], env: { DATABASE_URL: db.url, PORT: '0', HOST: '127.0.0.1' }, ready: /listening on/ },
    worker: { args: ['worker'], env: { DATABASE_URL: db.url, SWITCHYARD_MODELS_DIR: modelsDir }, ready: /worker \S+ serving/ },
  };
  const times: Record<string, Record<Side, number[]>> = { serve: { dist: [], tsx: [] }, worker: { dist: [], tsx: [] } };
  // One unrecorded start of each, so neither side pays for a cold file cache alone.
  for (const [, c] of Object.entries(commands)) for (const side of Object.keys(SIDES) as Side[]) await timeStart(side, c.args, c.env, c.ready);
  for (let round = 1; round <= rounds; round++) {
    for (const [name, c] of Object.entries(commands)) {
      const order: Side[] = Math.random() < 0.5 ? ['dist', 'tsx'] : ['tsx', 'dist'];
      for (const side of order) times[name]![side].push(await timeStart(side, c.args, c.env, c.ready));
    }
    progress(`round ${round}/${rounds}`);
  }
  const result = {
    machine: machine(),
    tsxRoot,
    rounds,
    figures: Object.fromEntries(
      Object.entries(times).map(([name, t]) => {
        const ratios = t.dist.map((d, i) => d / t.tsx[i]!);
        return [name, { dist_ms: stat(t.dist), tsx_ms: stat(t.tsx), dist_over_tsx: stat(ratios) }];
      }),
    ),
  };
  console.log(JSON.stringify(result, null, 2));
} finally {
  await db.drop();
}

// Compiles src/ to dist/ (JavaScript, .d.ts, source maps with their sources inlined) with
// tsconfig.build.json. `npm run build`, `prepare`, the test setup and the CLI in a checkout all
// come here, so what runs is always what ships.
//   node scripts/build.mjs            build now
//   ensureBuilt() (imported)          build only when dist/ is missing or older than src/
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const at = (p) => fileURLToPath(new URL(`../${p}`, import.meta.url));
// Every build writes it into an empty folder that becomes dist/, so its time is the last build's.
const MARK = at('dist/cli/main.js');

/** The newest modification time under `dir`, folders included (a deleted file changes its folder's). */
function newest(dir) {
  let t = statSync(dir).mtimeMs;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = `${dir}/${e.name}`;
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return t;
}

export function isStale() {
  if (!existsSync(MARK)) return true;
  const sources = Math.max(newest(at('src')), statSync(at('tsconfig.json')).mtimeMs, statSync(at('tsconfig.build.json')).mtimeMs);
  return sources > statSync(MARK).mtimeMs;
}

export function build() {
  // Into an empty folder of its own (a source that was deleted or renamed must not live on in
  // dist/), swapped in whole: processes running from dist/ (a test's serve, a worker starting a
  // thread) never see it half-written, and a failed build leaves the last good one.
  const out = `dist.build-${process.pid}`;
  rmSync(at(out), { recursive: true, force: true });
  // The package's `bin` (its exports do not list it), found beside its package.json.
  const tsc = new URL('bin/tsc', pathToFileURL(createRequire(import.meta.url).resolve('typescript/package.json')));
  const r = spawnSync(process.execPath, [fileURLToPath(tsc), '-p', 'tsconfig.build.json', '--outDir', out], { cwd: ROOT, stdio: 'inherit' });
  if (r.status !== 0) {
    // tsc emits despite type errors; a half-right build must not pass for one.
    rmSync(at(out), { recursive: true, force: true });
    throw new Error(`build failed: tsc -p tsconfig.build.json exited with ${r.status ?? r.signal}`);
  }
  // The web console, bundled (the package ships it built, not its sources).
  const c = spawnSync(process.execPath, [at('scripts/build-console.mjs'), '--into', `${out}/console`], { cwd: ROOT, stdio: 'inherit' });
  if (c.status !== 0) {
    rmSync(at(out), { recursive: true, force: true });
    throw new Error(`build failed: the console's bundle (scripts/build-console.mjs) exited with ${c.status ?? c.signal}`);
  }
  const old = `dist.old-${process.pid}`;
  if (existsSync(at('dist'))) renameSync(at('dist'), at(old));
  renameSync(at(out), at('dist'));
  rmSync(at(old), { recursive: true, force: true });
}

export function ensureBuilt() {
  if (isStale()) build();
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  try {
    build();
  } catch (err) {
    process.stderr.write(`${err.message}\n`);
    process.exitCode = 1;
  }
}

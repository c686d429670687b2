#!/usr/bin/env node
// build-console.mjs — bundles the web console (console/) with esbuild into
// .cache/console/<source hash>/ (git-ignored): index.html plus content-hashed assets.
//
//   node scripts/build-console.mjs             build unless an up-to-date build exists
//   node scripts/build-console.mjs --force     build anyway
//   node scripts/build-console.mjs --into DIR  build into DIR (scripts/build.mjs: dist/console)
//
// The package ships no console sources: `npm run build` (and so `prepare`, the Docker image's
// build stage) puts a built console into dist/console, which an installed package serves.
// `serve`, `up` and the test setup call ensureConsole() below, so a checkout never serves a
// missing or stale console. The folder is named by a digest of everything the bundle is made
// from (console/, this script, the bundled packages' versions): a fresh build is a folder that
// exists, and a build goes to a temporary folder renamed into place, so concurrent builders (two
// serves starting at once) never see or leave half a build.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SRC = join(ROOT, 'console');
const CHECKOUT_OUT = join(ROOT, '.cache', 'console');

/**
 * Where builds go: .cache/console in the package's folder, or, where that folder is not writable
 * (an installed package owned by root, as in the Docker image, run as another user), the system's
 * temporary folder.
 */
export function outRoot() {
  for (const dir of [CHECKOUT_OUT, join(tmpdir(), 'switchyard-console')]) {
    try {
      mkdirSync(dir, { recursive: true });
      const probe = join(dir, `.probe-${process.pid}`);
      writeFileSync(probe, '');
      rmSync(probe);
      return dir;
    } catch {
      // not writable: try the next
    }
  }
  throw new Error('no writable folder for the web console build');
}
const BUNDLED = ['preact', 'chart.js', 'esbuild'];

function files(dir) {
  return readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? files(join(dir, e.name)) : [join(dir, e.name)]))
    .sort();
}

const require = createRequire(import.meta.url);

/**
 * A bundled package's version, found as Node resolves it: in a checkout under ROOT/node_modules,
 * in an installed package wherever npm hoisted it (the application's node_modules).
 */
function versionOf(name) {
  let dir = join(require.resolve(name), '..');
  for (;;) {
    const file = join(dir, 'package.json');
    if (existsSync(file)) {
      const pkg = JSON.parse(readFileSync(file, 'utf8'));
      if (pkg.name === name) return pkg.version;
    }
    const up = join(dir, '..');
    if (up === dir) return 'unknown';
    dir = up;
  }
}

/** A digest of the console's inputs: its sources, this script, and the versions bundled. */
export function sourceHash() {
  const h = createHash('sha256');
  for (const f of files(SRC)) h.update(relative(SRC, f)).update(readFileSync(f));
  h.update(readFileSync(fileURLToPath(import.meta.url)));
  for (const p of BUNDLED) {
    h.update(`${p}@${versionOf(p)}`);
  }
  return h.digest('hex').slice(0, 16);
}

async function build(outDir) {
  const esbuild = await import('esbuild');
  const result = await esbuild.build({
    entryPoints: { app: join(SRC, 'src', 'main.tsx') },
    bundle: true,
    minify: true,
    sourcemap: false,
    format: 'esm',
    target: ['es2022'],
    jsx: 'automatic',
    jsxImportSource: 'preact',
    outdir: join(outDir, 'assets'),
    entryNames: '[name]-[hash]',
    assetNames: '[name]-[hash]',
    metafile: true,
    logLevel: 'silent',
    // No inline data: URLs: the CSP allows only same-origin files.
    loader: { '.svg': 'file', '.woff2': 'file' },
  });
  const outputs = Object.keys(result.metafile.outputs).map((p) => relative(outDir, join(ROOT, p)));
  const js = outputs.find((p) => p.endsWith('.js'));
  const css = outputs.find((p) => p.endsWith('.css'));
  if (!js || !css) throw new Error(`console build produced no ${js ? 'CSS' : 'JavaScript'}`);
  // The icon too gets a content-hashed name (a browser asks for one; a missing icon is a console error).
  const svg = readFileSync(join(SRC, 'favicon.svg'));
  const icon = `assets/favicon-${createHash('sha256').update(svg).digest('hex').slice(0, 8)}.svg`;
  writeFileSync(join(outDir, icon), svg);
  // Paths relative to /console/ (the page is served at /console/, with a trailing slash).
  const html = readFileSync(join(SRC, 'index.html'), 'utf8').replace('%CSS%', css).replace('%JS%', js).replace('%ICON%', icon);
  writeFileSync(join(outDir, 'index.html'), html);
  return { js, css };
}

/**
 * The folder holding an up-to-date console build, building it when missing or stale.
 * `log` gets one line when a build runs.
 */
export async function ensureConsole({ force = false, log = () => {} } = {}) {
  // An installed package: no sources, the console that `npm run build` put into dist/.
  if (!existsSync(SRC)) {
    const shipped = join(ROOT, 'dist', 'console');
    if (existsSync(join(shipped, 'index.html'))) return shipped;
    throw new Error('neither the console sources nor a built dist/console are here');
  }
  const hash = sourceHash();
  const OUT_ROOT = outRoot();
  const dir = join(OUT_ROOT, hash);
  if (!force && existsSync(join(dir, 'index.html'))) return dir;
  const tmp = join(OUT_ROOT, `.tmp-${hash}-${process.pid}-${Date.now()}`);
  const started = Date.now();
  try {
    await build(tmp);
    if (force) rmSync(dir, { recursive: true, force: true });
    try {
      renameSync(tmp, dir);
    } catch (err) {
      // A concurrent builder put the same build in place first: use theirs.
      if (!existsSync(join(dir, 'index.html'))) throw err;
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  // Older builds are no longer served by a fresh process; keep the newest few for running ones.
  const old = readdirSync(OUT_ROOT)
    .filter((d) => d !== hash && !d.startsWith('.'))
    .map((d) => ({ d, t: statSync(join(OUT_ROOT, d)).mtimeMs }))
    .sort((a, b) => b.t - a.t)
    .slice(2);
  for (const { d } of old) rmSync(join(OUT_ROOT, d), { recursive: true, force: true });
  log(`built the web console in ${Date.now() - started} ms (${relative(ROOT, dir)})`);
  return dir;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1] && process.argv.includes('--into')) {
  const into = process.argv[process.argv.indexOf('--into') + 1];
  if (!into) throw new Error('--into needs a folder');
  await build(into);
} else if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const dir = await ensureConsole({ force: process.argv.includes('--force'), log: (m) => console.log(m) });
  console.log(dir);
}

/**
 * The Docker image, checked without a Docker engine (none on these machines): the Dockerfile is
 * read, its build stage's inputs are copied into an empty folder and built there as `npm ci`'s
 * prepare would, and the final stage's file set (without node_modules) must equal `npm pack`'s.
 * Its node_modules must come from a stage that dropped the dev dependencies, and it must not run as root.
 */
import { execFile } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, posix, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

interface Copy { from: string | null; sources: string[]; dest: string }
interface Stage { name: string | null; workdir: string; copies: Copy[]; runs: string[]; user: string | null; entrypoint: string | null }

/** The instructions this Dockerfile uses, with line continuations joined and comments dropped. */
function parseDockerfile(text: string): Stage[] {
  const lines = text.replace(/\\\n/g, ' ').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  const stages: Stage[] = [];
  for (const line of lines) {
    const [op, ...rest] = line.split(/\s+/);
    const stage = stages.at(-1);
    switch (op!.toUpperCase()) {
      case 'FROM':
        stages.push({ name: /\bAS\s+(\S+)/i.exec(line)?.[1] ?? null, workdir: '/', copies: [], runs: [], user: null, entrypoint: null });
        break;
      case 'WORKDIR':
        stage!.workdir = posix.resolve(stage!.workdir, rest[0]!);
        break;
      case 'COPY': {
        const flags = rest.filter((a) => a.startsWith('--'));
        const args = rest.filter((a) => !a.startsWith('--'));
        const from = flags.find((f) => f.startsWith('--from='))?.slice('--from='.length) ?? null;
        stage!.copies.push({ from, sources: args.slice(0, -1), dest: posix.resolve(stage!.workdir, args.at(-1)!) + (args.at(-1)!.endsWith('/') ? '/' : '') });
        break;
      }
      case 'RUN':
        stage!.runs.push(rest.join(' '));
        break;
      case 'USER':
        stage!.user = rest[0]!;
        break;
      case 'ENTRYPOINT':
        stage!.entrypoint = rest.join(' ');
        break;
    }
  }
  return stages;
}

function filesUnder(at: string): string[] {
  if (statSync(at).isFile()) return [''];
  return readdirSync(at, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => relative(at, join(e.parentPath, e.name)));
}

const ignored = readFileSync(join(ROOT, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));

/** Where each file of a COPY lands: source path (in `base`) → absolute path in the image. */
function expand(copy: Copy, base: string): Map<string, string> {
  const out = new Map<string, string>();
  const intoDir = copy.sources.length > 1 || copy.dest.endsWith('/');
  for (const src of copy.sources) {
    const abs = join(base, src);
    for (const f of filesUnder(abs)) {
      const rel = posix.join(src, f);
      if (ignored.some((i) => rel === i || rel.startsWith(`${i}/`))) continue;
      const target = statSync(abs).isFile() ? (intoDir ? posix.join(copy.dest, posix.basename(src)) : copy.dest) : posix.join(copy.dest, f);
      out.set(join(base, rel), target);
    }
  }
  return out;
}

const stages = parseDockerfile(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'));
const final = stages.at(-1)!;
const work = mkdtempSync(join(tmpdir(), 'switchyard-image-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe('the Dockerfile', () => {
  it('is multi-stage and runs as a non-root user', () => {
    expect(stages.length).toBeGreaterThan(1);
    expect(final.user).toBeTruthy();
    expect(['root', '0']).not.toContain(final.user!.split(':')[0]);
    expect(final.entrypoint).toContain('bin/switchyard.mjs');
  });

  it('copies node_modules only from a stage that left out the dev dependencies', () => {
    const copies = final.copies.filter((c) => c.dest.endsWith('/node_modules'));
    expect(copies.length).toBe(1);
    const from = stages.find((s) => s.name === copies[0]!.from)!;
    expect(from.runs.some((r) => /npm (prune|ci|install)\b.*--omit=dev/.test(r))).toBe(true);
    expect(final.copies.every((c) => c.from !== null || !c.sources.some((s) => s.startsWith('node_modules')))).toBe(true);
  });

  it("builds dist/ from its build stage's inputs alone, and its final image holds exactly npm pack's files", async () => {
    // The build stage, replayed: its context copies into an empty /app, then the build `npm ci` runs.
    const build = stages.find((s) => s.name === final.copies.find((c) => c.sources.some((s) => s.endsWith('/dist')))?.from)!;
    expect(build.runs.some((r) => /npm ci\b/.test(r))).toBe(true);
    const buildRoot = join(work, 'build');
    for (const c of build.copies) {
      for (const [src, dest] of expand(c, ROOT)) {
        const to = join(buildRoot, posix.relative(build.workdir, dest));
        mkdirSync(join(to, '..'), { recursive: true });
        cpSync(src, to);
      }
    }
    symlinkSync(join(ROOT, 'node_modules'), join(buildRoot, 'node_modules'));
    await run(process.execPath, ['scripts/build.mjs'], { cwd: buildRoot });
    expect(existsSync(join(buildRoot, 'dist/cli/main.js'))).toBe(true);

    const image = new Set<string>();
    for (const c of final.copies) {
      if (c.dest.endsWith('/node_modules')) continue;
      // From the build stage: its absolute paths, read in the replayed build folder.
      const copy = c.from ? { ...c, sources: c.sources.map((s) => posix.relative(build.workdir, s)) } : c;
      for (const dest of expand(copy, c.from ? buildRoot : ROOT).values()) image.add(posix.relative(final.workdir, dest));
    }
    const { stdout } = await run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT });
    const packed = (JSON.parse(stdout)[0].files as { path: string }[]).map((f) => f.path);
    // The console's bundle names carry a content hash, and esbuild's differs between the two
    // build folders: the same files, compared without it.
    const unhashed = (files: string[]) => files.map((f) => f.replace(/^(dist\/console\/assets\/[a-z]+)-[A-Za-z0-9]+(\.\w+)$/, '$1-HASH$2')).sort();
    expect(unhashed([...image])).toEqual(unhashed(packed));
  }, 120_000);
});

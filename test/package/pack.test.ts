/**
 * The package as a user gets it: `npm pack`, the tarball installed into an empty project, then
 * the CLI, a plain-JavaScript import and a strict TypeScript project against the shipped types.
 * Offline: npm's cache holds the dependencies' tarballs (the checkout's `npm ci` put them there)
 * but not their registry metadata, so the project gets a lockfile made of this repository's
 * production entries, as `npm install` would resolve them, and installs with `npm ci --offline`.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.js';
import { modelsDir } from '../helpers/stack.js';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const TSC = fileURLToPath(new URL('../../node_modules/typescript/bin/tsc', import.meta.url));
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
const env = { ...process.env, ONNXRUNTIME_NODE_INSTALL: 'skip', npm_config_audit: 'false', npm_config_fund: 'false' };

let dir: string;
let app: string;
let installed: string;

function files(at: string): string[] {
  return readdirSync(at, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(at, join(e.parentPath, e.name)));
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'switchyard-pack-'));
  // dist/ is built by the test setup; --ignore-scripts keeps pack from rebuilding it under the other tests.
  const { stdout } = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], { cwd: ROOT, env });
  const tarball = `file:../${JSON.parse(stdout)[0].filename}`;
  app = join(dir, 'app');
  const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8'));
  const packages: Record<string, unknown> = {
    '': { name: 'consumer', dependencies: { switchyard: tarball } },
    'node_modules/switchyard': { version: pkg.version, resolved: tarball, dependencies: pkg.dependencies, bin: pkg.bin, engines: pkg.engines },
  };
  for (const [k, v] of Object.entries(lock.packages as Record<string, { dev?: boolean }>)) if (k && !v.dev) packages[k] = v;
  await run('mkdir', [app]);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module', dependencies: { switchyard: tarball } }));
  writeFileSync(join(app, 'package-lock.json'), JSON.stringify({ name: 'consumer', lockfileVersion: 3, requires: true, packages }));
  await run('npm', ['ci', '--offline'], { cwd: app, env });
  installed = join(app, 'node_modules/switchyard');
}, 180_000);

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('the installed tarball', () => {
  it('holds compiled JavaScript and types, no TypeScript sources, and does not depend on tsx', () => {
    const shipped = files(installed);
    expect(shipped).toContain('dist/sdk/index.js');
    expect(shipped).toContain('dist/sdk/index.d.ts');
    expect(shipped).toContain('dist/cli/main.js');
    expect(shipped.filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts') && !f.endsWith('.d.mts'))).toEqual([]);
    expect(shipped.filter((f) => f.startsWith('src/') || f.startsWith('test/') || f.startsWith('bench/'))).toEqual([]);
    const manifest = JSON.parse(readFileSync(join(installed, 'package.json'), 'utf8'));
    expect(Object.keys(manifest.dependencies)).not.toContain('tsx');
    expect(existsSync(join(app, 'node_modules/tsx'))).toBe(false);
  });

  it('runs the CLI: switchyard --help', async () => {
    const { stdout } = await run(join(app, 'node_modules/.bin/switchyard'), ['--help'], { cwd: app, env });
    expect(stdout).toMatch(/^switchyard: an OpenAI-compatible gateway/);
    expect(stdout).toMatch(/\bup\b/);
  });

  it('imports the SDK from plain JavaScript', async () => {
    writeFileSync(
      join(app, 'plain.mjs'),
      `import { OpenSourceAI, NotFoundError, SwitchyardError } from 'switchyard';
       const e = new NotFoundError('gone');
       console.log(typeof OpenSourceAI.prototype.chat_completions_create_async, e instanceof SwitchyardError);`,
    );
    const { stdout } = await run(process.execPath, ['plain.mjs'], { cwd: app, env });
    expect(stdout.trim()).toBe('function true');
  });

  it('type-checks a strict TypeScript project against the shipped .d.ts, and its types are real (a misuse fails)', async () => {
    const compilerOptions = {
      strict: true, module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022', noEmit: true,
      types: ['node'], skipLibCheck: false, exactOptionalPropertyTypes: true, noUncheckedIndexedAccess: true,
    };
    writeFileSync(
      join(app, 'good.ts'),
      `import { OpenSourceAI, NotFoundError } from 'switchyard';
       export async function ask(url: string): Promise<string> {
         const client = new OpenSourceAI(url);
         try {
           const r = await client.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 });
           return r.choices[0]?.message.content ?? '';
         } catch (err) {
           if (err instanceof NotFoundError) return String(err.status);
           throw err;
         } finally {
           await client.close();
         }
       }`,
    );
    writeFileSync(join(app, 'bad.ts'), `import { OpenSourceAI } from 'switchyard';\nexport const n: number = new OpenSourceAI('postgres://x');\n`);
    writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({ compilerOptions, files: ['good.ts'] }));
    writeFileSync(join(app, 'tsconfig.bad.json'), JSON.stringify({ compilerOptions, files: ['bad.ts'] }));
    await run(process.execPath, [TSC, '-p', 'tsconfig.json'], { cwd: app, env });
    // Types that resolved to `any` would let this through.
    const bad = await run(process.execPath, [TSC, '-p', 'tsconfig.bad.json'], { cwd: app, env }).then(() => null, (e) => e);
    expect(bad?.stdout).toMatch(/bad\.ts.*TS2322.*OpenSourceAI/s);
  });
});

describe('switchyard up from the installed package, offline with a models folder', () => {
  let db: TestDatabase;
  beforeAll(async () => void (db = await createTestDatabase()));
  afterAll(async () => db?.drop());

  it('starts the gateway and a worker, and serves the folder\'s models', async () => {
    const child = spawn(join(app, 'node_modules/.bin/switchyard'), ['up'], {
      cwd: app,
      env: { ...env, DATABASE_URL: db.url, SWITCHYARD_MODELS_DIR: modelsDir(), PORT: '0', HOST: '127.0.0.1', HF_HUB_OFFLINE: '1' },
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
    try {
      // The fresh database has no key: up creates one and prints it after the address.
      const [url, key] = await new Promise<[string, string]>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`not up after 90 s:\n${out}`)), 90_000);
        child.stdout.on('data', () => {
          const m = /Switchyard is up: (\S+) .*\nAPI key \(shown once, keep it\): (\S+)/.exec(out);
          if (m) clearTimeout(timer), resolve([m[1]!, m[2]!]);
        });
        child.on('exit', (code) => clearTimeout(timer) ?? reject(new Error(`up exited with ${code}:\n${out}`)));
      });
      const res = await fetch(`${url}/models`, { headers: { authorization: `Bearer ${key}` } });
      expect(res.status).toBe(200);
      const ids = ((await res.json()) as { data: { id: string }[] }).data.map((m) => m.id);
      expect(ids.length).toBeGreaterThan(0);
    } finally {
      child.kill('SIGTERM');
      const killer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(killer);
    }
  }, 120_000);
});

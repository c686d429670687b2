/**
 * Importing the SDK must leave the host application's module resolution as it was: no
 * TypeScript loader, no module hooks, no require extensions. The probe imports a .ts file before
 * and after `import 'switchyard'` (resolved through the package's own exports, as an application
 * resolves it) and compares; a control run with tsx's loader shows the probe sees a loader.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, expect, it } from 'vitest';

const run = promisify(execFile);
// Inside the package's folder, so that `import('switchyard')` resolves to this package's exports.
const SCRATCH = fileURLToPath(new URL('../../.cache/no-loader/', import.meta.url));
const tsDir = mkdtempSync(join(tmpdir(), 'switchyard-no-loader-'));
// ES modules, as an application's would be: an ESM loader then has them to itself.
writeFileSync(join(tsDir, 'package.json'), '{"type": "module"}');

afterAll(() => rmSync(tsDir, { recursive: true, force: true }));

async function probe(importBetween: string): Promise<{ before: string; after: string; tsExtension: boolean }> {
  mkdirSync(SCRATCH, { recursive: true });
  const script = join(SCRATCH, `probe-${process.pid}-${Date.now()}.mjs`);
  writeFileSync(
    script,
    `import { writeFileSync } from 'node:fs';
     import { createRequire } from 'node:module';
     const dir = ${JSON.stringify(tsDir)};
     // An enum: TypeScript that no JavaScript runtime reads without a loader (Node's own type stripping included).
     const tryTs = async (name) => {
       const file = dir + '/' + name + '-' + process.pid + '.ts';
       writeFileSync(file, 'enum E { A = 7 }\\nexport const x: number = E.A;\\n');
       try { return 'loaded ' + (await import(file)).x; } catch (e) { return e.code ?? e.name; }
     };
     const before = await tryTs('before');
     ${importBetween}
     const after = await tryTs('after');
     const tsExtension = '.ts' in createRequire(import.meta.url)('node:module')._extensions;
     console.log(JSON.stringify({ before, after, tsExtension }));`,
  );
  try {
    const { stdout } = await run(process.execPath, [script], { env: { ...process.env, NODE_OPTIONS: '' } });
    return JSON.parse(stdout.trim().split('\n').at(-1)!);
  } finally {
    rmSync(script, { force: true });
  }
}

it('importing the SDK registers no loader: a .ts file fails to import after it exactly as before', async () => {
  const r = await probe(`const { OpenSourceAI } = await import('switchyard'); if (typeof OpenSourceAI !== 'function') throw new Error('no SDK');`);
  expect(r.before).not.toMatch(/^loaded/);
  expect(r.after).toBe(r.before);
  expect(r.tsExtension).toBe(false);
});

it('control: the same probe sees a loader when one is registered (tsx, as the SDK entry used to)', async () => {
  const r = await probe(`const { register } = await import('tsx/esm/api'); register();`);
  expect(r.before).not.toMatch(/^loaded/);
  expect(r.after).toBe('loaded 7');
});

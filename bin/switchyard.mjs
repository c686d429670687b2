#!/usr/bin/env node
// Runs the compiled JavaScript in dist/. In a checkout (src/ is there, the package has none) it
// first builds dist/ when it is missing or older than the sources, so `npx switchyard up` after a
// pull runs the code that was pulled.
import { existsSync } from 'node:fs';

if (existsSync(new URL('../src/', import.meta.url))) {
  const { ensureBuilt } = await import('../scripts/build.mjs');
  ensureBuilt();
}
const { main } = await import('../dist/cli/main.js');
process.exitCode = await main(process.argv.slice(2));

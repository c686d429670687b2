// The classifier thread's entry point, as model-thread-boot.mjs: a worker thread gets no loader
// from its parent and the package registers none, so it runs compiled JavaScript, beside this
// file in dist/, or dist/'s copy when the host itself runs from the TypeScript sources (vitest).
import { existsSync } from 'node:fs';

const beside = new URL('./thread.js', import.meta.url);
await import(existsSync(beside) ? beside.href : new URL('../../../dist/worker/moderation/thread.js', import.meta.url).href);

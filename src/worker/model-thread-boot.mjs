// The model thread's entry point. A worker thread gets no loader from its parent and the package
// registers none, so the thread always runs compiled JavaScript: beside this file in dist/, or
// dist/'s copy when the host itself runs from the TypeScript sources (vitest).
import { existsSync } from 'node:fs';

const beside = new URL('./model-thread.js', import.meta.url);
await import(existsSync(beside) ? beside.href : new URL('../../dist/worker/model-thread.js', import.meta.url).href);

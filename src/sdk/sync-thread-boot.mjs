// The SDK's helper thread's entry point. A worker thread gets no loader from its parent and the
// SDK registers none (it must leave its host's module resolution alone), so the thread runs
// compiled JavaScript: beside this file in dist/, or dist/'s copy when the SDK itself runs from
// the TypeScript sources (vitest).
import { existsSync } from 'node:fs';

const beside = new URL('./sync-thread.js', import.meta.url);
await import(existsSync(beside) ? beside.href : new URL('../../dist/sdk/sync-thread.js', import.meta.url).href);

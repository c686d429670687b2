// worker_threads do not inherit the TypeScript loader the CLI registered, so the thread
// registers it itself before loading its real entry point.
import { register } from 'tsx/esm/api';

register();
await import('./model-thread.ts');

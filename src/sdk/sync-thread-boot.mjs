// worker_threads do not inherit the TypeScript loader; the thread registers it itself.
import { register } from 'tsx/esm/api';

register();
await import('./sync-thread.ts');

// worker_threads do not inherit the CLI's TypeScript loader: register it, as model-thread-boot.mjs does.
import { register } from 'tsx/esm/api';

register();
await import('./thread.ts');

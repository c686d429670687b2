import { setFlagsFromString } from 'node:v8';

/**
 * How far V8 lets the worker's heaps grow past what the last full collection kept before it
 * starts the next one, in percent (SWITCHYARD_HEAP_GROWTH, default 100: twice the live heap;
 * 0 leaves V8's own choice).
 *
 * Why: the model thread holds a large, long-lived heap (tokenizers, chat templates, the decode
 * batch's bookkeeping: about 73 MiB with the benchmark's four models) and allocates steadily per
 * request. V8's own growing factor for a heap of that size came out at about 1.3, leaving less
 * headroom (~23 MiB) than the young generation it promotes from, so a new incremental marking
 * started as soon as the last one finished: a full mark of the whole heap every 130–250 ms, on
 * the model thread and four background threads. Measured on 1-token requests to the tiny model
 * (`.scratch`-style probe, 200 requests per round, `--trace-gc`): 97 full collections and
 * 13.3–14.5 ms of worker CPU per request with V8's default; 28–37 and 5.9–8.2 ms at 50–200 %;
 * the p99 fell from 130–230 ms to 25–40 ms (its major pauses had biggest steps of 30–70 ms).
 */
export function heapGrowthPercent(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.SWITCHYARD_HEAP_GROWTH;
  if (raw === undefined || raw.trim() === '') return 100;
  const v = Number(raw);
  return Number.isInteger(v) && v >= 0 && v <= 1000 ? v : 100;
}

/**
 * Applies heapGrowthPercent to this process. V8 reads the setting at every full collection, so
 * it holds for the main heap and for every thread started afterwards (the model threads): call
 * it before starting them.
 */
export function tuneWorkerHeap(env: NodeJS.ProcessEnv = process.env): number {
  const percent = heapGrowthPercent(env);
  if (percent > 0) setFlagsFromString(`--heap-growing-percent=${percent}`);
  return percent;
}

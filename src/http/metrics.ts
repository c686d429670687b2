/**
 * Prometheus metrics of one gateway process, in the text exposition format. Counters and
 * histograms live in memory (each `serve` process is scraped on its own); queue depth and
 * live workers are read from Postgres at scrape time, since they are shared by all processes.
 */
import type { WorkerBatchStats } from '../db/workers-repo.js';

type Labels = Record<string, string>;

const key = (labels: Labels) =>
  Object.entries(labels)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`)
    .join(',');

class Counter {
  private readonly values = new Map<string, number>();
  constructor(readonly name: string, readonly help: string) {}
  inc(labels: Labels, by = 1): void {
    const k = key(labels);
    this.values.set(k, (this.values.get(k) ?? 0) + by);
  }
  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`];
    for (const [k, v] of this.values) lines.push(`${this.name}{${k}} ${v}`);
    return lines.join('\n');
  }
}

class Histogram {
  private readonly series = new Map<string, { counts: number[]; sum: number; count: number }>();
  constructor(readonly name: string, readonly help: string, readonly buckets: number[]) {}
  observe(labels: Labels, value: number): void {
    const k = key(labels);
    let s = this.series.get(k);
    if (!s) this.series.set(k, (s = { counts: this.buckets.map(() => 0), sum: 0, count: 0 }));
    this.buckets.forEach((b, i) => {
      if (value <= b) s!.counts[i]!++;
    });
    s.sum += value;
    s.count++;
  }
  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    for (const [k, s] of this.series) {
      const sep = k ? ',' : '';
      this.buckets.forEach((b, i) => lines.push(`${this.name}_bucket{${k}${sep}le="${b}"} ${s.counts[i]}`));
      lines.push(`${this.name}_bucket{${k}${sep}le="+Inf"} ${s.count}`, `${this.name}_sum{${k}} ${s.sum}`, `${this.name}_count{${k}} ${s.count}`);
    }
    return lines.join('\n');
  }
}

const SECONDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

export class Metrics {
  readonly requests = new Counter('switchyard_requests_total', 'HTTP requests by endpoint, model and status.');
  readonly latency = new Histogram('switchyard_request_duration_seconds', 'Time from request to complete response.', SECONDS);
  readonly queueWait = new Histogram('switchyard_queue_wait_seconds', 'Time a request waited in the queue before a worker started it.', SECONDS);
  readonly ttft = new Histogram('switchyard_time_to_first_token_seconds', 'Time from request to the first generated text.', SECONDS);
  readonly tokens = new Counter('switchyard_tokens_total', 'Tokens processed, by model and kind (prompt, completion).');

  /** Renders these plus the shared gauges (`gauges` is read from Postgres by the caller). */
  render(gauges: { queue: { model: string; queued: number; running: number }[]; workers: number; batches?: (WorkerBatchStats & { worker: string; model: string })[] }): string {
    const batches = gauges.batches ?? [];
    const perBatch = (name: string, type: 'counter' | 'gauge', help: string, value: (b: WorkerBatchStats) => number) => [
      `# HELP ${name} ${help}`,
      `# TYPE ${name} ${type}`,
      ...batches.map((b) => `${name}{${key({ model: b.model, worker: b.worker })}} ${value(b)}`),
    ];
    const lines = [
      this.requests.render(),
      this.latency.render(),
      this.queueWait.render(),
      this.ttft.render(),
      this.tokens.render(),
      '# HELP switchyard_queue_depth Requests waiting or running, by model and state (all gateways).',
      '# TYPE switchyard_queue_depth gauge',
      ...gauges.queue.flatMap((q) => [
        `switchyard_queue_depth{${key({ model: q.model, state: 'queued' })}} ${q.queued}`,
        `switchyard_queue_depth{${key({ model: q.model, state: 'running' })}} ${q.running}`,
      ]),
      '# HELP switchyard_workers Live workers (heartbeating).',
      '# TYPE switchyard_workers gauge',
      `switchyard_workers ${gauges.workers}`,
      // Continuous batching, per worker and chat model (from the workers' heartbeats, up to 10 s old).
      ...perBatch('switchyard_batch_steps_total', 'counter', 'Batched decode steps.', (b) => b.steps),
      ...perBatch('switchyard_batch_step_sequences_total', 'counter', 'Sequences summed over decode steps (mean batch size = this / steps).', (b) => b.stepSequences),
      ...perBatch('switchyard_batch_size_max', 'gauge', 'Largest decode batch seen.', (b) => b.maxBatch),
      ...perBatch('switchyard_batch_decode_seconds_total', 'counter', 'Time spent in decode steps (decode tokens / this = tokens/s while decoding).', (b) => b.decodeMs / 1000),
      ...perBatch('switchyard_batch_decode_tokens_total', 'counter', 'Tokens decoded in batched steps.', (b) => b.decodeTokens),
      ...perBatch('switchyard_batch_prefill_tokens_total', 'counter', 'Prompt tokens prefilled.', (b) => b.prefillTokens),
      ...perBatch('switchyard_batch_prefill_seconds_total', 'counter', 'Time spent prefilling.', (b) => b.prefillMs / 1000),
      ...perBatch('switchyard_batch_admit_wait_seconds_total', 'counter', 'Time requests waited in a worker for a batch slot.', (b) => b.admitWaitMs / 1000),
      ...perBatch('switchyard_batch_admitted_total', 'counter', 'Requests admitted to a decode batch.', (b) => b.admitted),
      ...perBatch('switchyard_prefix_cache_lookups_total', 'counter', 'Prompts looked up in the prefix cache (hit rate = hits / this).', (b) => b.prefixLookups ?? 0),
      ...perBatch('switchyard_prefix_cache_hits_total', 'counter', 'Prompts that reused cached KV blocks.', (b) => b.prefixHits ?? 0),
      ...perBatch('switchyard_prefix_cache_tokens_saved_total', 'counter', 'Prompt tokens not prefilled: their KV came from the prefix cache.', (b) => b.prefixTokensSaved ?? 0),
      ...perBatch('switchyard_prefix_cache_evictions_total', 'counter', 'Prefix cache blocks evicted to stay within SWITCHYARD_PREFIX_CACHE_MB.', (b) => b.prefixEvictions ?? 0),
      ...perBatch('switchyard_prefix_cache_bytes', 'gauge', 'Bytes of KV the prefix cache holds.', (b) => b.prefixBytes ?? 0),
      ...perBatch('switchyard_batch_sequences', 'gauge', 'Sequences decoding now.', (b) => b.decoding),
      ...perBatch('switchyard_batch_waiting', 'gauge', 'Requests a worker holds that wait for a batch slot.', (b) => b.waiting),
    ];
    return `${lines.join('\n')}\n`;
  }
}

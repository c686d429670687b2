import { fork, type ChildProcess } from 'node:child_process';
import { ThreadError } from './thread-error.js';

/** Longest a per-request chat template may take to render (SWITCHYARD_TEMPLATE_TIMEOUT_MS). */
const TIMEOUT_MS = Number(process.env.SWITCHYARD_TEMPLATE_TIMEOUT_MS) || 1000;
/** Longest prompt text a template may produce; tokenizing more would only fail the context check. */
const MAX_CHARS = 4_000_000;
/**
 * The sandbox's heap, in MB. `{{ 'x' * 10**9 }}` or a loop doubling a list must not grow until
 * the machine swaps: past this the sandbox process dies, the render is a 400, and the next one
 * starts a fresh sandbox. The largest legitimate output (MAX_CHARS, two bytes a character, and
 * the messages it was made from) fits with room.
 */
const HEAP_MB = 128;

const invalid = (message: string) => ThreadError.user(400, message, 'invalid_chat_template', 'chat_template');

/**
 * Renders request-supplied Jinja templates in a process of their own (template-sandbox.mjs),
 * with a time and a memory limit: a template is a program, and `{% for i in range(10**9) %}`
 * must not hold the model hostage, nor `{{ 'x' * 10**9 }}` take the worker down.
 * Models' own templates (registered by an operator) render in place, without this hop.
 */
interface Job {
  id: number;
  template: string;
  context: Record<string, unknown>;
  resolve(text: string): void;
  reject(err: ThreadError): void;
  timer?: NodeJS.Timeout;
}

export class TemplateSandbox {
  private worker: ChildProcess | null = null;
  /** Sent to `worker`, in order: it renders one at a time, so the first is the one running. */
  private jobs: Job[] = [];
  private seq = 0;

  private thread(): ChildProcess {
    if (this.worker) return this.worker;
    const worker = fork(new URL('./template-sandbox.mjs', import.meta.url), [String(MAX_CHARS)], {
      execArgv: [`--max-old-space-size=${HEAP_MB}`],
      serialization: 'advanced',
      stdio: ['ignore', 'ignore', 'ignore', 'ipc'],
    });
    // Never what keeps a worker process alive.
    worker.unref();
    worker.channel?.unref();
    worker.on('message', (msg: { id: number; text?: string; error?: string; tooLong?: number }) => {
      const job = this.take(msg.id);
      if (!job) return;
      if (msg.error !== undefined) job.reject(invalid(`The chat template could not be applied: ${msg.error}`));
      else if (msg.tooLong !== undefined || msg.text!.length > MAX_CHARS) {
        job.reject(invalid(`The chat_template rendered ${msg.tooLong ?? msg.text!.length} characters; the limit is ${MAX_CHARS}.`));
      } else job.resolve(msg.text!);
    });
    // Out of memory (or a crash): the template running is to blame.
    worker.on('error', () => {});
    worker.on('exit', () => {
      if (this.worker !== worker) return; // terminated by us (a timeout): already handled
      this.worker = null;
      const running = this.jobs[0];
      if (running) {
        this.take(running.id);
        running.reject(invalid(`The chat_template used more memory than a template may (${HEAP_MB} MB) and was stopped.`));
      }
      this.resend();
    });
    this.worker = worker;
    return worker;
  }

  private take(id: number): Job | undefined {
    const i = this.jobs.findIndex((j) => j.id === id);
    if (i === -1) return undefined;
    const [job] = this.jobs.splice(i, 1);
    clearTimeout(job!.timer);
    return job;
  }

  /** The renders that were waiting behind one that was stopped go to a fresh sandbox. */
  private resend(): void {
    const waiting = this.jobs;
    this.jobs = [];
    for (const job of waiting) this.send(job);
  }

  private send(job: Job): void {
    const worker = this.thread();
    this.jobs.push(job);
    clearTimeout(job.timer);
    job.timer = setTimeout(() => {
      this.take(job.id);
      job.reject(invalid(`The chat_template took longer than ${TIMEOUT_MS} ms to render.`));
      // A render past its time is stopped with its process. The one running may be another
      // request's (this one waited behind it): whoever is still waiting starts again.
      if (this.worker === worker) {
        this.worker = null;
        worker.kill('SIGKILL');
        this.resend();
      }
    }, TIMEOUT_MS);
    worker.send({ id: job.id, template: job.template, context: job.context });
  }

  render(template: string, context: Record<string, unknown>): Promise<string> {
    return new Promise((resolve, reject) => this.send({ id: ++this.seq, template, context, resolve, reject }));
  }

  close(): void {
    this.worker?.kill('SIGKILL');
    this.worker = null;
  }
}

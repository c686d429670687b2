import { Worker } from 'node:worker_threads';
import { ThreadError } from './thread-error.js';

/** Longest a per-request chat template may take to render (SWITCHYARD_TEMPLATE_TIMEOUT_MS). */
const TIMEOUT_MS = Number(process.env.SWITCHYARD_TEMPLATE_TIMEOUT_MS) || 1000;
/** Longest prompt text a template may produce; tokenizing more would only fail the context check. */
const MAX_CHARS = 4_000_000;

const invalid = (message: string) => ThreadError.user(400, message, 'invalid_chat_template', 'chat_template');

/**
 * Renders request-supplied Jinja templates on a thread of their own, with a time limit: a
 * template is a program, and `{% for i in range(10**9) %}` must not hold the model hostage.
 * Models' own templates (registered by an operator) render in place, without this hop.
 */
export class TemplateSandbox {
  private worker: Worker | null = null;
  private seq = 0;

  private thread(): Worker {
    if (!this.worker) {
      this.worker = new Worker(new URL('./template-sandbox.mjs', import.meta.url));
      this.worker.unref();
      this.worker.on('error', () => (this.worker = null));
    }
    return this.worker;
  }

  render(template: string, context: Record<string, unknown>): Promise<string> {
    const worker = this.thread();
    const id = ++this.seq;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        worker.off('message', onMessage);
        void worker.terminate();
        if (this.worker === worker) this.worker = null;
        reject(invalid(`The chat_template took longer than ${TIMEOUT_MS} ms to render.`));
      }, TIMEOUT_MS);
      const onMessage = (msg: { id: number; text?: string; error?: string }) => {
        if (msg.id !== id) return;
        clearTimeout(timer);
        worker.off('message', onMessage);
        if (msg.error !== undefined) reject(invalid(`The chat template could not be applied: ${msg.error}`));
        else if (msg.text!.length > MAX_CHARS) reject(invalid(`The chat_template rendered ${msg.text!.length} characters; the limit is ${MAX_CHARS}.`));
        else resolve(msg.text!);
      };
      worker.on('message', onMessage);
      worker.postMessage({ id, template, context });
    });
  }

  close(): void {
    void this.worker?.terminate();
  }
}

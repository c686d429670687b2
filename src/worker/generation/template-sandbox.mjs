// A thread that renders untrusted (per-request) chat templates, so that a template that loops
// for minutes can be stopped by terminating this thread instead of stalling the model thread.
import { parentPort } from 'node:worker_threads';
import { Template } from '@huggingface/jinja';

parentPort.on('message', ({ id, template, context }) => {
  try {
    parentPort.postMessage({ id, text: new Template(template).render(context) });
  } catch (err) {
    parentPort.postMessage({ id, error: err instanceof Error ? err.message : String(err) });
  }
});

/**
 * The moderation thread: classifier calls block their loop for their whole duration, so they run
 * here, away from the worker's claimers, heartbeats and LISTEN. A thread of its own rather than
 * the model thread's: the chat scheduler and embedding batcher there have no use for it, and a
 * moderation model served beside them only shares the cores.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ThreadError } from '../generation/thread-error.js';
import type { ModelSpec } from '../models-source.js';
import { classify, loadClassifier, type LoadedClassifier } from './classifier.js';
import type { FromModerationThread, ToModerationThread } from './host.js';

const port = parentPort!;
const modelsDir = (workerData as { modelsDir?: string } | undefined)?.modelsDir;
const post = (msg: FromModerationThread) => port.postMessage(msg);

const models = new Map<string, Promise<LoadedClassifier>>();
/** transformers.js' env (local path, remote switch) is global: one load at a time. */
let loading: Promise<unknown> = Promise.resolve();

function getModel(spec: ModelSpec): Promise<LoadedClassifier> {
  const key = JSON.stringify(spec);
  let entry = models.get(key);
  if (!entry) {
    entry = loading.then(() => loadClassifier(spec, modelsDir));
    loading = entry.catch(() => {});
    models.set(key, entry);
    // Not cached when it fails: the next request tries again (the files may have appeared).
    entry.catch(() => models.delete(key));
  }
  return entry;
}

port.on('message', (msg: ToModerationThread) => {
  const started = performance.now();
  if (msg.type === 'load') {
    getModel(msg.spec).then(
      (m) => post({ type: 'loaded', model: msg.spec.name, labels: m.labels, maxTokens: m.maxTokens, ms: Math.round(performance.now() - started) }),
      (err) => post({ type: 'load-failed', model: msg.spec.name, error: ThreadError.from(err).toJSON() }),
    );
  } else {
    getModel(msg.spec)
      .then((m) => classify(m, msg.texts))
      .then(
        (out) => post({ type: 'classified', id: msg.id, ...out }),
        (err) => post({ type: 'error', id: msg.id, error: ThreadError.from(err).toJSON() }),
      );
  }
});

/** The helper thread behind SyncBridge: an async client answering one request at a time. */
import { workerData, parentPort, type MessagePort } from 'node:worker_threads';
import { OpenSourceAI, type ClientOptions } from './client.js';
import { toSdkError } from './errors.js';
import type { BridgeReply, BridgeRequest } from './sync-bridge.js';

const data = workerData as { databaseUrl: string; options: ClientOptions; port: MessagePort; signal: SharedArrayBuffer };
const signal = new Int32Array(data.signal);
const client = new OpenSourceAI(data.databaseUrl, data.options);
const streams = new Map<number, AsyncIterator<unknown>>();
let nextStream = 1;

function reply(r: BridgeReply): void {
  data.port.postMessage(r);
  Atomics.store(signal, 0, 1);
  Atomics.notify(signal, 0);
}

async function handle(msg: BridgeRequest): Promise<unknown> {
  switch (msg.kind) {
    case 'call':
      return (client as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[msg.method]!(...msg.args);
    case 'open': {
      const stream = await client.chat_completions_create_stream_async(...(msg.args as Parameters<OpenSourceAI['chat_completions_create_stream_async']>));
      const id = nextStream++;
      streams.set(id, stream[Symbol.asyncIterator]());
      return id;
    }
    case 'next': {
      const it = streams.get(msg.stream)!;
      const r = await it.next();
      if (r.done) streams.delete(msg.stream);
      return { value: r.value, done: r.done === true };
    }
    case 'return':
      await streams.get(msg.stream)?.return?.();
      streams.delete(msg.stream);
      return null;
  }
}

parentPort!.on('message', (msg: BridgeRequest) => {
  handle(msg).then(
    (value) => reply({ ok: true, value }),
    (err) => {
      const e = toSdkError(err);
      reply({ ok: false, error: { message: e.message, status: e.status, type: e.type, code: e.code, param: e.param, requestId: e.requestId } });
    },
  );
});

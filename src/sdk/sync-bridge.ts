import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from 'node:worker_threads';
import { ApiError, type ErrorType } from '../protocol/errors.js';
import type { ChatCompletionChunk } from '../protocol/chat.js';
import { toSdkError } from './errors.js';

/** What crosses from the helper thread: a value, or an error with everything its class needs. */
export type BridgeReply =
  | { ok: true; value: unknown }
  | { ok: false; error: { message: string; status: number; type: ErrorType; code: string | null; param: string | null; requestId: string | null } };

export type BridgeRequest =
  | { kind: 'call'; method: string; args: unknown[] }
  | { kind: 'open'; args: unknown[] }
  | { kind: 'next'; stream: number }
  | { kind: 'return'; stream: number };

/**
 * PostgresML's synchronous methods without a native addon: the request runs on a helper
 * thread with its own async client, and this thread blocks in Atomics.wait until the reply is
 * on a MessagePort, which it reads with receiveMessageOnPort. The helper thread is unref'd,
 * so it never keeps the process alive by itself.
 */
export class SyncBridge {
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private readonly signal = new Int32Array(new SharedArrayBuffer(4));

  constructor(databaseUrl: string, options: unknown) {
    const { port1, port2 } = new MessageChannel();
    this.worker = new Worker(new URL('./sync-thread-boot.mjs', import.meta.url), {
      workerData: { databaseUrl, options, port: port2, signal: this.signal.buffer },
      transferList: [port2],
    });
    this.worker.unref();
    this.port = port1;
    this.port.unref();
  }

  private request(msg: BridgeRequest): unknown {
    Atomics.store(this.signal, 0, 0);
    this.worker.postMessage(msg);
    for (;;) {
      // Wakes on the helper's notify; the timeout only re-checks that the helper is alive.
      Atomics.wait(this.signal, 0, 0, 1000);
      const got = receiveMessageOnPort(this.port);
      if (got) {
        const reply = got.message as BridgeReply;
        if (reply.ok) return reply.value;
        const e = reply.error;
        throw toSdkError(new ApiError(e.status, e.message, e.type, e.code, e.param), e.requestId);
      }
      if (this.worker.threadId === -1) throw toSdkError(new Error('the SDK helper thread exited'));
    }
  }

  call(method: string, args: unknown[]): unknown {
    return this.request({ kind: 'call', method, args });
  }

  stream(args: unknown[]): IterableIterator<ChatCompletionChunk> {
    const id = this.request({ kind: 'open', args }) as number;
    let done = false;
    const iterator: IterableIterator<ChatCompletionChunk> = {
      next: () => {
        if (done) return { value: undefined, done: true };
        const r = this.request({ kind: 'next', stream: id }) as IteratorResult<ChatCompletionChunk>;
        if (r.done) done = true;
        return r;
      },
      return: (value?: unknown) => {
        if (!done) {
          done = true;
          this.request({ kind: 'return', stream: id });
        }
        return { value: value as ChatCompletionChunk, done: true };
      },
      [Symbol.iterator]() {
        return iterator;
      },
    };
    return iterator;
  }

  close(): void {
    void this.worker.terminate();
  }
}

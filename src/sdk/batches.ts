import { PgBatchStore } from '../db/batches-repo.js';
import type { Database } from '../db/pool.js';
import type { PgEngine } from '../engine/pg-engine.js';
import { errors } from '../protocol/errors.js';
import { BatchServing, listLimit, type BatchObject, type FileObject } from '../serving/batches.js';
import type { RequestContext } from '../serving/context.js';

/**
 * openai-node's `client.files` and `client.batches` over the gateway's own BatchServing and
 * PgBatchStore: the same files, batches and queue as `/v1/files` and `/v1/batches`, without HTTP.
 * Files and batches made here have no API key (the SDK sees those; the HTTP API shows them only
 * to requests without a key, i.e. with auth off).
 */

/** What `files.create` takes as `file`: openai-node's `toFile(...)` result or any Blob, a Buffer or bytes, or the JSONL text itself. */
export type Uploadable = Blob | Buffer | Uint8Array | ArrayBuffer | string;

export interface FileCreateParams {
  file: Uploadable;
  purpose: 'batch' | (string & {});
}

export interface BatchCreateParams {
  input_file_id: string;
  endpoint: '/v1/chat/completions' | '/v1/completions' | '/v1/embeddings' | (string & {});
  completion_window: '24h' | (string & {});
  metadata?: Record<string, string> | null;
}

/** A list page as openai-node returns one: `data`, `has_more`, and async iteration over every item (following pages). */
export class Page<T> implements AsyncIterable<T> {
  readonly object = 'list' as const;
  constructor(
    readonly data: T[],
    readonly has_more: boolean,
    private readonly next: (() => Promise<Page<T>>) | null,
  ) {}

  hasNextPage(): boolean {
    return this.has_more && this.next !== null;
  }

  async getNextPage(): Promise<Page<T>> {
    if (!this.hasNextPage()) throw new Error('No next page.');
    return this.next!();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    let page: Page<T> = this;
    for (;;) {
      yield* page.data;
      if (!page.hasNextPage()) return;
      page = await page.getNextPage();
    }
  }
}

async function bytesOf(file: Uploadable): Promise<{ content: Buffer; filename: string }> {
  if (typeof file === 'string') return { content: Buffer.from(file, 'utf8'), filename: 'upload.jsonl' };
  if (Buffer.isBuffer(file)) return { content: file, filename: 'upload.jsonl' };
  if (file instanceof Uint8Array) return { content: Buffer.from(file.buffer, file.byteOffset, file.byteLength), filename: 'upload.jsonl' };
  if (file instanceof ArrayBuffer) return { content: Buffer.from(file), filename: 'upload.jsonl' };
  if (file instanceof Blob) {
    const name = (file as Blob & { name?: unknown }).name;
    return { content: Buffer.from(await file.arrayBuffer()), filename: typeof name === 'string' && name ? name : 'upload.jsonl' };
  }
  throw errors.invalid("Invalid type for 'file': expected a Blob, File, Buffer, bytes or a string.", 'file', 'invalid_type');
}

type Run = <T>(fn: (serving: BatchServing) => Promise<T>) => Promise<T>;

/** The two resources, each call through `run` (which turns errors into the SDK's classes). */
export function batchResources(connection: () => Promise<{ database: Database; engine: PgEngine }>, wrap: <T>(fn: () => Promise<T>) => Promise<T>, ctx: RequestContext) {
  const run: Run = (fn) =>
    wrap(async () => {
      const { database, engine } = await connection();
      return fn(new BatchServing(engine, new PgBatchStore(database.pool)));
    });

  const listBatches = (query: { after?: string; limit?: number }): Promise<Page<BatchObject>> =>
    run(async (s) => {
      const limit = listLimit(query.limit);
      const page = await s.listBatches(ctx, query.after, limit);
      const next = page.has_more && page.last_id ? () => listBatches({ ...query, after: page.last_id! }) : null;
      return new Page(page.data, page.has_more, next);
    });

  const files = {
    create: (body: FileCreateParams): Promise<FileObject> =>
      run(async (s) => {
        if (typeof body !== 'object' || body === null || body.file === undefined || body.file === null) {
          throw errors.invalid("Missing required parameter: 'file'.", 'file', 'missing_required_parameter');
        }
        const { content, filename } = await bytesOf(body.file);
        return s.createFile({ purpose: body.purpose, filename, content }, ctx);
      }),
    retrieve: (id: string): Promise<FileObject> => run((s) => s.getFile(id, ctx)),
    /** As openai-node: a fetch `Response` (`.text()`, `.json()`, `.arrayBuffer()`). */
    content: (id: string): Promise<Response> =>
      run(async (s) => new Response(await s.fileContent(id, ctx), { headers: { 'content-type': 'application/octet-stream' } })),
    delete: (id: string): Promise<{ id: string; object: 'file'; deleted: true }> => run((s) => s.deleteFile(id, ctx)),
    /** openai-node v4's name for `delete`. */
    del: (id: string): Promise<{ id: string; object: 'file'; deleted: true }> => run((s) => s.deleteFile(id, ctx)),
    list: (query: { purpose?: string } = {}): Promise<Page<FileObject>> =>
      run(async (s) => {
        const page = await s.listFiles(ctx, query.purpose);
        return new Page(page.data, false, null);
      }),
  };

  const batches = {
    create: (body: BatchCreateParams): Promise<BatchObject> => run((s) => s.createBatch(body, ctx)),
    retrieve: (id: string): Promise<BatchObject> => run((s) => s.getBatch(id, ctx)),
    list: (query: { after?: string; limit?: number } = {}): Promise<Page<BatchObject>> => listBatches(query),
    cancel: (id: string): Promise<BatchObject> => run((s) => s.cancelBatch(id, ctx)),
  };
  return { files, batches };
}

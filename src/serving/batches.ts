import { randomBytes, randomUUID } from 'node:crypto';
import type { Engine, ModelInfo } from '../engine/types.js';
import { errors, type ErrorBody } from '../protocol/errors.js';
import type { BatchLine, BatchStore, LineOutcome, StoredBatch, StoredFile } from './batch-store.js';
import { mayUse, type RequestContext } from './context.js';
import { ApiError } from '../protocol/errors.js';
import { parseEmbeddingRequest, toInputs } from '../protocol/embeddings.js';
import { checkEmbeddingInputs } from '../protocol/limits.js';
import { embeddingList } from './embeddings.js';

/**
 * OpenAI's Files and Batch APIs. A batch's lines become ordinary requests (batch work, priority 1).
 * Chat lines: the workers validate and answer them exactly as they answer ai.submit_chat
 * (worker/openai-request.ts). Embeddings lines: checked here as POST /v1/embeddings checks a
 * request (the embedding queue holds inputs, not bodies), claimed with the rest of the embedding
 * queue, and rendered from their vectors as /v1/embeddings renders them (embeddingList). Either
 * way a line's result is what the same request gives interactively. The output and error files
 * are written once every line has ended, by whoever reads the batch first (finalizeBatch locks it).
 */

/** Upload limit (bytes): files are held in Postgres. */
export const MAX_FILE_BYTES = Math.max(1, Number(process.env.SWITCHYARD_MAX_FILE_BYTES) || 16 * 1024 * 1024);
const MAX_LINES = 50_000;
const ENDPOINTS = ['/v1/chat/completions', '/v1/completions', '/v1/embeddings'];
/** What the workers answer from a stored body today. */
const SERVED = new Set(['/v1/chat/completions', '/v1/embeddings']);

const newId = (prefix: string) => `${prefix}${randomBytes(12).toString('hex')}`;

export interface FileObject { id: string; object: 'file'; bytes: number; created_at: number; filename: string; purpose: string; status: 'processed'; expires_at: null; status_details: null }
export interface BatchObject {
  id: string; object: 'batch'; endpoint: string; errors: { object: 'list'; data: NonNullable<StoredBatch['errors']> } | null;
  input_file_id: string; completion_window: string; status: StoredBatch['status']; output_file_id: string | null; error_file_id: string | null;
  created_at: number; in_progress_at: number | null; expires_at: number; finalizing_at: number | null; completed_at: number | null;
  failed_at: number | null; expired_at: number | null; cancelling_at: number | null; cancelled_at: number | null;
  request_counts: { total: number; completed: number; failed: number }; metadata: Record<string, string> | null;
}

const fileObject = (f: StoredFile): FileObject => ({
  id: f.id, object: 'file', bytes: f.bytes, created_at: f.createdAt, filename: f.filename, purpose: f.purpose, status: 'processed', expires_at: null, status_details: null,
});

function batchObject(b: StoredBatch): BatchObject {
  return {
    id: b.id, object: 'batch', endpoint: b.endpoint, errors: b.errors ? { object: 'list', data: b.errors } : null,
    input_file_id: b.inputFileId, completion_window: b.completionWindow, status: b.status,
    output_file_id: b.outputFileId, error_file_id: b.errorFileId,
    ...b.times, expires_at: b.times.expires_at ?? 0, created_at: b.times.created_at ?? 0,
    request_counts: { total: b.total, completed: b.counts.completed, failed: b.counts.failed },
    metadata: b.metadata,
  };
}

function str(body: Record<string, unknown>, name: string, required = true): string | undefined {
  const v = body[name];
  if (v === undefined || v === null) {
    if (required) throw errors.invalid(`Missing required parameter: '${name}'.`, name, 'missing_required_parameter');
    return undefined;
  }
  if (typeof v !== 'string' || !v) throw errors.invalid(`Invalid type for '${name}': expected a non-empty string.`, name, 'invalid_type');
  return v;
}

/** A list's `limit`: 1 to 100, default 20 (a number, or the query string's digits). */
export function listLimit(v: unknown): number {
  if (v === undefined || v === null) return 20;
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^\d{1,4}$/.test(v) ? Number(v) : NaN;
  if (!(Number.isInteger(n) && n >= 1 && n <= 100)) throw errors.invalid("Invalid value for 'limit': expected an integer from 1 to 100.", 'limit');
  return n;
}

export class BatchServing {
  constructor(
    private readonly engine: Engine,
    private readonly store: BatchStore,
  ) {}

  async createFile(upload: { purpose: unknown; filename: string; content: Buffer }, ctx: RequestContext): Promise<FileObject> {
    if (upload.purpose !== 'batch') throw errors.invalid("Invalid value for 'purpose': only 'batch' files can be uploaded here.", 'purpose');
    if (upload.content.length > MAX_FILE_BYTES) throw errors.invalid(`The file is larger than ${MAX_FILE_BYTES} bytes.`, 'file', 'file_too_large');
    if (!upload.content.length) throw errors.invalid('The file is empty.', 'file', 'empty_file');
    return fileObject(await this.store.insertFile({ id: newId('file-'), keyId: ctx.keyId, purpose: 'batch', filename: upload.filename, content: upload.content }));
  }

  async getFile(id: string, ctx: RequestContext): Promise<FileObject> {
    const f = await this.store.findFile(id, ctx.keyId);
    if (!f) throw errors.notFound(`No such File object: ${id}`);
    return fileObject(f);
  }

  async fileContent(id: string, ctx: RequestContext): Promise<Buffer> {
    const c = await this.store.fileContent(id, ctx.keyId);
    if (!c) throw errors.notFound(`No such File object: ${id}`);
    return c;
  }

  async deleteFile(id: string, ctx: RequestContext): Promise<{ id: string; object: 'file'; deleted: true }> {
    if (!(await this.store.deleteFile(id, ctx.keyId))) throw errors.notFound(`No such File object: ${id}`);
    return { id, object: 'file', deleted: true };
  }

  async listFiles(ctx: RequestContext, purpose: string | undefined): Promise<{ object: 'list'; data: FileObject[]; has_more: false }> {
    return { object: 'list', data: (await this.store.listFiles(ctx.keyId, purpose ?? null, 10_000)).map(fileObject), has_more: false };
  }

  async createBatch(raw: unknown, ctx: RequestContext): Promise<BatchObject> {
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw errors.invalid('The body must be a JSON object.', null);
    const body = raw as Record<string, unknown>;
    for (const k of Object.keys(body)) {
      if (!['input_file_id', 'endpoint', 'completion_window', 'metadata'].includes(k)) throw errors.unknownParam(k);
    }
    const inputFileId = str(body, 'input_file_id')!;
    const endpoint = str(body, 'endpoint')!;
    const window = str(body, 'completion_window')!;
    if (!ENDPOINTS.includes(endpoint)) throw errors.invalid(`Invalid value for 'endpoint': expected one of ${ENDPOINTS.join(', ')}.`, 'endpoint');
    if (!SERVED.has(endpoint)) throw errors.invalid(`Batches for '${endpoint}' are not supported by this server yet.`, 'endpoint', 'unsupported_parameter');
    if (window !== '24h') throw errors.invalid("Invalid value for 'completion_window': only '24h' is supported.", 'completion_window');
    const metadata = body.metadata ?? null;
    if (metadata !== null && (typeof metadata !== 'object' || Array.isArray(metadata) || Object.values(metadata).some((v) => typeof v !== 'string'))) {
      throw errors.invalid("Invalid type for 'metadata': expected an object of strings.", 'metadata');
    }
    const file = await this.store.findFile(inputFileId, ctx.keyId);
    if (!file) throw errors.notFound(`No such File object: ${inputFileId}`);
    if (file.purpose !== 'batch') throw errors.invalid(`The file ${inputFileId} was not uploaded with purpose 'batch'.`, 'input_file_id');
    const content = (await this.store.fileContent(inputFileId, ctx.keyId))!;
    const meta = { id: newId('batch_'), keyId: ctx.keyId, endpoint, inputFileId, completionWindow: window, metadata: metadata as Record<string, string> | null, expiresInSeconds: 24 * 3600 };
    const parsed = await this.readLines(content.toString('utf8'), endpoint, ctx);
    if ('errors' in parsed) await this.store.insertFailedBatch(meta, parsed.errors);
    else await this.store.insertBatch(meta, parsed.lines);
    return this.getBatch(meta.id, ctx);
  }

  /** The file's lines, or why the batch fails validation (OpenAI's `errors`, by line from 1). */
  private async readLines(text: string, endpoint: string, ctx: RequestContext): Promise<{ lines: BatchLine[] } | { errors: NonNullable<StoredBatch['errors']> }> {
    const problems: NonNullable<StoredBatch['errors']> = [];
    const lines: BatchLine[] = [];
    const seen = new Set<string>();
    const models = new Map<string, ModelInfo | null>();
    const rows = text.split('\n');
    for (let i = 0; i < rows.length && problems.length < 100; i++) {
      const row = rows[i]!.trim();
      if (!row) continue;
      const bad = (message: string, param: string | null = null) => void problems.push({ code: 'invalid_request', message, param, line: i + 1 });
      let line: Record<string, unknown>;
      try {
        line = JSON.parse(row);
      } catch {
        bad('The line is not JSON.');
        continue;
      }
      if (typeof line !== 'object' || line === null || Array.isArray(line)) { bad('The line is not a JSON object.'); continue; }
      if (typeof line.custom_id !== 'string' || !line.custom_id) { bad("Each line needs a string 'custom_id'.", 'custom_id'); continue; }
      if (seen.has(line.custom_id)) { bad(`The custom_id '${line.custom_id}' appears twice.`, 'custom_id'); continue; }
      seen.add(line.custom_id);
      if (line.method !== 'POST') { bad("'method' must be 'POST'.", 'method'); continue; }
      if (line.url !== endpoint) { bad(`'url' must be the batch's endpoint, '${endpoint}'.`, 'url'); continue; }
      if (typeof line.body !== 'object' || line.body === null || Array.isArray(line.body)) { bad("'body' must be a JSON object.", 'body'); continue; }
      const body = line.body as Record<string, unknown>;
      const checked = endpoint === '/v1/embeddings' ? await this.embeddingLine(body, models, ctx) : await this.chatLine(body, models, ctx);
      lines.push({ requestId: randomUUID(), customId: line.custom_id, body, ...checked });
      if (lines.length > MAX_LINES) { bad(`A batch holds at most ${MAX_LINES} requests.`); break; }
    }
    if (!problems.length && !lines.length) problems.push({ code: 'empty_file', message: 'The file has no requests.', param: null, line: null });
    return problems.length ? { errors: problems } : { lines };
  }

  /** The model decides which workers claim the line: resolved now (the rest is the worker's to check). */
  private async chatLine(body: Record<string, unknown>, models: Map<string, ModelInfo | null>, ctx: RequestContext): Promise<Pick<BatchLine, 'model' | 'error'>> {
    if (typeof body.model !== 'string' || !body.model) return { model: null, error: errors.invalid("Missing required parameter: 'model'.", 'model', 'missing_required_parameter').toBody().error };
    const info = await this.lineModel(body.model, 'chat', models, ctx);
    return info ? { model: info.name, error: null } : { model: null, error: errors.modelNotFound(body.model).toBody().error };
  }

  /** An embeddings line, checked as POST /v1/embeddings checks its body (serving/embeddings.ts). */
  private async embeddingLine(body: Record<string, unknown>, models: Map<string, ModelInfo | null>, ctx: RequestContext): Promise<Pick<BatchLine, 'model' | 'error' | 'inputs'>> {
    try {
      const req = parseEmbeddingRequest(body);
      const info = await this.lineModel(req.model, 'embedding', models, ctx);
      if (!info) throw errors.modelNotFound(req.model);
      if (req.dimensions && info.dimensions && req.dimensions > info.dimensions) {
        throw errors.invalid(`'dimensions' is ${req.dimensions}, larger than the model's ${info.dimensions}.`, 'dimensions');
      }
      const inputs = toInputs(req);
      checkEmbeddingInputs(inputs, info.inputBound, info.truncate ?? false);
      return { model: info.name, error: null, inputs };
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      return { model: null, error: err.toBody().error };
    }
  }

  private async lineModel(name: string, task: ModelInfo['task'], models: Map<string, ModelInfo | null>, ctx: RequestContext): Promise<ModelInfo | null> {
    if (!models.has(name)) models.set(name, await this.engine.getModel(name));
    const info = models.get(name) ?? null;
    return info && info.task === task && mayUse(ctx, info) ? info : null;
  }

  async getBatch(id: string, ctx: RequestContext): Promise<BatchObject> {
    const b = await this.store.findBatch(id, ctx.keyId);
    if (!b) throw errors.notFound(`No such Batch object: ${id}`);
    return batchObject((await settle(this.store, b, ctx.keyId)) ?? b);
  }

  async listBatches(ctx: RequestContext, after: string | undefined, limit: number): Promise<{ object: 'list'; data: BatchObject[]; first_id: string | null; last_id: string | null; has_more: boolean }> {
    const rows = await this.store.listBatches(ctx.keyId, after ?? null, limit + 1);
    const data = rows.slice(0, limit).map(batchObject);
    return { object: 'list', data, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null, has_more: rows.length > limit };
  }

  async cancelBatch(id: string, ctx: RequestContext): Promise<BatchObject> {
    const b = await this.store.findBatch(id, ctx.keyId);
    if (!b) throw errors.notFound(`No such Batch object: ${id}`);
    if (!(await this.store.cancelBatch(id, ctx.keyId)) && b.status !== 'cancelling' && b.status !== 'cancelled') {
      throw errors.invalid(`Cannot cancel a batch with status '${b.status}'.`, null, 'batch_not_cancellable');
    }
    return this.getBatch(id, ctx);
  }
}

/**
 * Finalizes a batch whose lines have all ended, or expires one past its completion window (what
 * has not ended is cancelled, then it is finalized as expired). Returns the batch as it is then,
 * or null when there was nothing to do. The first reader does this, or the sweep (sweepBatches).
 */
async function settle(store: BatchStore, b: StoredBatch, keyId: string | null): Promise<StoredBatch | null> {
  if ((b.status === 'in_progress' || b.status === 'cancelling') && b.counts.queued + b.counts.running === 0) {
    await store.finalizeBatch(b.id, (lines) => render(b.id, lines));
    return store.findBatch(b.id, keyId);
  }
  if (b.status === 'in_progress' && b.times.expires_at !== null && b.times.expires_at * 1000 <= Date.now()) {
    await store.expireBatch(b.id);
    const now = await store.findBatch(b.id, keyId);
    return now ? ((await settle(store, now, keyId)) ?? now) : null;
  }
  return null;
}

/**
 * The background sweep (run by the reaper of every serve and worker, src/engine/reaper.ts): batches
 * nobody reads still end. Every open batch whose lines have all ended is finalized (its output and
 * error files written) and every one past its completion window expired, up to `limit` per run.
 * Safe in many processes at once: finalizing locks the batch and does it once. Returns how many
 * batches it settled.
 */
export async function sweepBatches(store: BatchStore, limit = 100): Promise<number> {
  let n = 0;
  for (const { id, keyId } of await store.batchesToSettle(limit)) {
    const b = await store.findBatch(id, keyId);
    if (b && (await settle(store, b, keyId))) n++;
  }
  return n;
}

/** The output file (completed lines) and error file (the rest), in OpenAI's line shape. */
function render(batchId: string, lines: LineOutcome[]): { output: Buffer | null; errors: Buffer | null; outputId: string; errorId: string } {
  const out: string[] = [];
  const err: string[] = [];
  for (const l of lines) {
    const id = `batch_req_${l.requestId.replaceAll('-', '')}`;
    if (l.status === 'completed') {
      const e = l.embedding;
      const body = e ? embeddingList(e.request as { model: string }, e.vectors ?? [], e.promptTokens) : l.body;
      out.push(JSON.stringify({ id, custom_id: l.customId, response: { status_code: 200, request_id: l.requestId, body }, error: null }));
    } else if (l.status === 'failed' && l.error) {
      const status = l.error.code === 'model_not_found' ? 404 : l.error.type === 'invalid_request_error' ? 400 : 500;
      err.push(JSON.stringify({ id, custom_id: l.customId, response: { status_code: status, request_id: l.requestId, body: { error: l.error } }, error: null }));
    } else {
      err.push(JSON.stringify({ id, custom_id: l.customId, response: null, error: { code: 'batch_cancelled', message: `The request was not run: batch ${batchId} was cancelled or expired.` } }));
    }
  }
  const file = (xs: string[]) => (xs.length ? Buffer.from(xs.join('\n') + '\n') : null);
  return { output: file(out), errors: file(err), outputId: newId('file-'), errorId: newId('file-') };
}

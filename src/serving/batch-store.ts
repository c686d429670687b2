import type { ErrorBody } from '../protocol/errors.js';

/** What the Files and Batch APIs keep (serving never sees SQL: db/batches-repo.ts implements it). */

export interface StoredFile {
  id: string;
  keyId: string | null;
  purpose: string;
  filename: string;
  bytes: number;
  /** Seconds since the epoch. */
  createdAt: number;
}

export interface StoredBatch {
  id: string;
  keyId: string | null;
  endpoint: string;
  inputFileId: string;
  completionWindow: string;
  status: 'validating' | 'failed' | 'in_progress' | 'finalizing' | 'completed' | 'expired' | 'cancelling' | 'cancelled';
  outputFileId: string | null;
  errorFileId: string | null;
  errors: { code: string; message: string; param: string | null; line: number | null }[] | null;
  metadata: Record<string, string> | null;
  total: number;
  /** Seconds since the epoch, or null. */
  times: Record<'created_at' | 'in_progress_at' | 'expires_at' | 'finalizing_at' | 'completed_at' | 'failed_at' | 'expired_at' | 'cancelling_at' | 'cancelled_at', number | null>;
  /** Its lines' requests by status. */
  counts: { queued: number; running: number; completed: number; failed: number; cancelled: number };
}

/** A batch's line as a queued request: the OpenAI body, to be validated and answered by the worker. */
export interface BatchLine {
  requestId: string;
  customId: string;
  /** The registered model; null when the line names none this key may use (it fails at once with `error`). */
  model: string | null;
  body: Record<string, unknown>;
  error: ErrorBody | null;
  /** `/v1/embeddings` lines: the inputs the worker embeds (texts or token-id lists), checked when the batch was made. */
  inputs?: (string | number[])[];
}

/** A finished line, for the output or error file. */
export interface LineOutcome {
  requestId: string;
  customId: string;
  status: 'completed' | 'failed' | 'cancelled';
  /** The answer (chat.completion) of a completed chat line. */
  body: unknown;
  error: ErrorBody | null;
  /** A completed embeddings line: its vectors, prompt tokens and the line's body (model, dimensions, encoding_format). */
  embedding?: { vectors: Float32Array[] | null; promptTokens: number; request: Record<string, unknown> };
}

export interface BatchStore {
  insertFile(f: { id: string; keyId: string | null; purpose: string; filename: string; content: Buffer }): Promise<StoredFile>;
  /** Only the key's own (null: files made without a key). */
  findFile(id: string, keyId: string | null): Promise<StoredFile | null>;
  fileContent(id: string, keyId: string | null): Promise<Buffer | null>;
  deleteFile(id: string, keyId: string | null): Promise<boolean>;
  listFiles(keyId: string | null, purpose: string | null, limit: number): Promise<StoredFile[]>;
  /**
   * The batch and its lines' requests, in one transaction; the requests are batch work (priority 1):
   * chat lines on the chat queue (validated by the worker), embeddings lines on the embedding queue.
   */
  insertBatch(b: { id: string; keyId: string | null; endpoint: string; inputFileId: string; completionWindow: string; metadata: Record<string, string> | null; expiresInSeconds: number }, lines: BatchLine[]): Promise<void>;
  insertFailedBatch(b: { id: string; keyId: string | null; endpoint: string; inputFileId: string; completionWindow: string; metadata: Record<string, string> | null; expiresInSeconds: number }, errors: NonNullable<StoredBatch['errors']>): Promise<void>;
  findBatch(id: string, keyId: string | null): Promise<StoredBatch | null>;
  /** Open batches (in progress or cancelling) that need finalizing or expiring: every line ended, or past expires_at. Any key's. */
  batchesToSettle(limit: number): Promise<{ id: string; keyId: string | null }[]>;
  listBatches(keyId: string | null, after: string | null, limit: number): Promise<StoredBatch[]>;
  /** Cancels the batch's unfinished requests and marks it cancelling (false: it was not in progress). */
  cancelBatch(id: string, keyId: string | null): Promise<boolean>;
  /** Cancels an expired batch's unfinished requests and marks it expiring (then finalized as expired). */
  expireBatch(id: string): Promise<void>;
  /**
   * Once every line has ended: writes the output and error files (made by `render`) and the final
   * status, once (the batch row is locked; a concurrent finalizer finds it done).
   */
  finalizeBatch(id: string, render: (lines: LineOutcome[]) => { output: Buffer | null; errors: Buffer | null; outputId: string; errorId: string }): Promise<void>;
}

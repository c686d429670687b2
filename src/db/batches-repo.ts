import type pg from 'pg';
import { inTransaction } from './transaction.js';
import { splitVectors } from './vectors.js';
import type { BatchLine, BatchStore, LineOutcome, StoredBatch, StoredFile } from '../serving/batch-store.js';

/** The Files and Batch APIs on ai.files, ai.batches and ai.requests (migrations/0017_batches.sql). */

const epoch = (col: string) => `extract(epoch from ${col})::bigint`;
const FILE_COLS = `id, key_id, purpose, filename, bytes, ${epoch('created_at')} as created_at`;
/** `key_id is not distinct from`: a key sees its own; without a key (auth off, the SDK), those made without one. */
const OWNED = 'key_id is not distinct from';

interface FileRow { id: string; key_id: string | null; purpose: string; filename: string; bytes: number; created_at: string }
const toFile = (r: FileRow): StoredFile => ({ id: r.id, keyId: r.key_id, purpose: r.purpose, filename: r.filename, bytes: r.bytes, createdAt: Number(r.created_at) });

const TIMES = ['created_at', 'in_progress_at', 'expires_at', 'finalizing_at', 'completed_at', 'failed_at', 'expired_at', 'cancelling_at', 'cancelled_at'] as const;
const BATCH_COLS = `b.id, b.key_id, b.endpoint, b.input_file_id, b.completion_window, b.status, b.output_file_id, b.error_file_id, b.errors, b.metadata, b.total,
  ${TIMES.map((t) => `${epoch(`b.${t}`)} as ${t}`).join(', ')},
  (select coalesce(jsonb_object_agg(s.status, s.n), '{}') from (select r.status, count(*) as n from ai.requests r where r.batch_id = b.id group by r.status) s) as counts`;

type BatchRow = Record<string, unknown> & { counts: Record<string, string | number> };
function toBatch(r: BatchRow): StoredBatch {
  const n = (s: string) => Number(r.counts[s] ?? 0);
  return {
    id: r.id as string,
    keyId: r.key_id as string | null,
    endpoint: r.endpoint as string,
    inputFileId: r.input_file_id as string,
    completionWindow: r.completion_window as string,
    status: r.status as StoredBatch['status'],
    outputFileId: r.output_file_id as string | null,
    errorFileId: r.error_file_id as string | null,
    errors: r.errors as StoredBatch['errors'],
    metadata: r.metadata as StoredBatch['metadata'],
    total: r.total as number,
    times: Object.fromEntries(TIMES.map((t) => [t, r[t] === null ? null : Number(r[t])])) as StoredBatch['times'],
    counts: { queued: n('queued'), running: n('running'), completed: n('completed'), failed: n('failed'), cancelled: n('cancelled') },
  };
}

export class PgBatchStore implements BatchStore {
  constructor(private readonly pool: pg.Pool) {}

  async insertFile(f: { id: string; keyId: string | null; purpose: string; filename: string; content: Buffer }): Promise<StoredFile> {
    const r = await this.pool.query<FileRow>(
      `insert into ai.files (id, key_id, purpose, filename, bytes, content) values ($1, $2, $3, $4, $5, $6) returning ${FILE_COLS}`,
      [f.id, f.keyId, f.purpose, f.filename, f.content.length, f.content],
    );
    return toFile(r.rows[0]!);
  }

  async findFile(id: string, keyId: string | null): Promise<StoredFile | null> {
    const r = await this.pool.query<FileRow>(`select ${FILE_COLS} from ai.files where id = $1 and ${OWNED} $2::uuid`, [id, keyId]);
    return r.rows[0] ? toFile(r.rows[0]) : null;
  }

  async fileContent(id: string, keyId: string | null): Promise<Buffer | null> {
    const r = await this.pool.query<{ content: Buffer }>(`select content from ai.files where id = $1 and ${OWNED} $2::uuid`, [id, keyId]);
    return r.rows[0]?.content ?? null;
  }

  async deleteFile(id: string, keyId: string | null): Promise<boolean> {
    const r = await this.pool.query(`delete from ai.files where id = $1 and ${OWNED} $2::uuid`, [id, keyId]);
    return (r.rowCount ?? 0) > 0;
  }

  async listFiles(keyId: string | null, purpose: string | null, limit: number): Promise<StoredFile[]> {
    const r = await this.pool.query<FileRow>(
      `select ${FILE_COLS} from ai.files where ${OWNED} $1::uuid and ($2::text is null or purpose = $2) order by created_at desc, id limit $3`,
      [keyId, purpose, limit],
    );
    return r.rows.map(toFile);
  }

  async insertBatch(
    b: { id: string; keyId: string | null; endpoint: string; inputFileId: string; completionWindow: string; metadata: Record<string, string> | null; expiresInSeconds: number },
    lines: BatchLine[],
  ): Promise<void> {
    await inTransaction(this.pool, async (client) => {
      await client.query(
        `insert into ai.batches (id, key_id, endpoint, input_file_id, completion_window, status, metadata, total, in_progress_at, expires_at)
         values ($1, $2, $3, $4, $5, 'in_progress', $6, $7, now(), now() + make_interval(secs => $8))`,
        [b.id, b.keyId, b.endpoint, b.inputFileId, b.completionWindow, b.metadata, lines.length, b.expiresInSeconds],
      );
      // One statement for every line; a line whose model is unusable is failed at once.
      if (b.endpoint === '/v1/embeddings') {
        // The embedding queue's rows (ai.enqueue_embedding's shape: input.input is the list the
        // claimer embeds); the line's body minus its input stays in params.request for rendering.
        await client.query(
          `insert into ai.requests (id, endpoint, model, requested_model, input, params, key_id, priority, batch_id, custom_id, status, error, finished_at)
           select l.id, 'embeddings', coalesce(l.model, l.body->>'model', ''), coalesce(l.body->>'model', ''), jsonb_build_object('input', coalesce(l.inputs, '[]')),
                  jsonb_build_object('source', 'batch', 'line', l.n - 1, 'max_attempts', 5, 'request', l.body - 'input'), $2, 1, $1, l.custom_id,
                  case when l.error is null then 'queued' else 'failed' end, l.error, case when l.error is null then null else now() end
             from jsonb_to_recordset($3::jsonb) as l(id uuid, custom_id text, model text, body jsonb, inputs jsonb, error jsonb, n integer)`,
          [b.id, b.keyId, JSON.stringify(lines.map((l, i) => ({ id: l.requestId, custom_id: l.customId, model: l.model, body: l.body, inputs: l.inputs ?? null, error: l.error, n: i + 1 })))],
        );
        await client.query(`select pg_notify('ai_embed', m) from (select distinct model as m from ai.requests where batch_id = $1 and status = 'queued') x`, [b.id]);
        return;
      }
      await client.query(
        `insert into ai.requests (id, endpoint, model, requested_model, input, params, stream, max_attempts, key_id, priority, batch_id, custom_id,
                                  status, error, finished_at)
         select l.id, 'chat.completions', coalesce(l.model, l.body->>'model', ''), coalesce(l.body->>'model', ''), l.body,
                jsonb_build_object('format', 'openai', 'source', 'batch', 'line', l.n - 1), false, 3, $2, 1, $1, l.custom_id,
                case when l.error is null then 'queued' else 'failed' end, l.error, case when l.error is null then null else now() end
           from jsonb_to_recordset($3::jsonb) as l(id uuid, custom_id text, model text, body jsonb, error jsonb, n integer)`,
        [b.id, b.keyId, JSON.stringify(lines.map((l, i) => ({ id: l.requestId, custom_id: l.customId, model: l.model, body: l.body, error: l.error, n: i + 1 })))],
      );
      await client.query(`select pg_notify('ai_chat', m) from (select distinct model as m from ai.requests where batch_id = $1 and status = 'queued') x`, [b.id]);
    });
  }

  async insertFailedBatch(
    b: { id: string; keyId: string | null; endpoint: string; inputFileId: string; completionWindow: string; metadata: Record<string, string> | null; expiresInSeconds: number },
    errors: NonNullable<StoredBatch['errors']>,
  ): Promise<void> {
    await this.pool.query(
      `insert into ai.batches (id, key_id, endpoint, input_file_id, completion_window, status, metadata, total, errors, failed_at, expires_at)
       values ($1, $2, $3, $4, $5, 'failed', $6, 0, $7, now(), now() + make_interval(secs => $8))`,
      [b.id, b.keyId, b.endpoint, b.inputFileId, b.completionWindow, b.metadata, JSON.stringify(errors), b.expiresInSeconds],
    );
  }

  async findBatch(id: string, keyId: string | null): Promise<StoredBatch | null> {
    const r = await this.pool.query<BatchRow>(`select ${BATCH_COLS} from ai.batches b where b.id = $1 and b.${OWNED} $2::uuid`, [id, keyId]);
    return r.rows[0] ? toBatch(r.rows[0]) : null;
  }

  async batchesToSettle(limit: number): Promise<{ id: string; keyId: string | null }[]> {
    // batches_open_idx holds only the open batches; requests_batch_idx finds their lines.
    const r = await this.pool.query<{ id: string; key_id: string | null }>(
      `select b.id, b.key_id from ai.batches b
        where b.status in ('in_progress', 'cancelling')
          and (b.expires_at <= now() or not exists (select 1 from ai.requests r where r.batch_id = b.id and r.status in ('queued', 'running')))
        order by b.expires_at limit $1`,
      [limit],
    );
    return r.rows.map((x) => ({ id: x.id, keyId: x.key_id }));
  }

  async listBatches(keyId: string | null, after: string | null, limit: number): Promise<StoredBatch[]> {
    const r = await this.pool.query<BatchRow>(
      `select ${BATCH_COLS} from ai.batches b
        where b.${OWNED} $1::uuid
          and ($2::text is null or (b.created_at, b.id) < (select a.created_at, a.id from ai.batches a where a.id = $2))
        order by b.created_at desc, b.id desc limit $3`,
      [keyId, after, limit],
    );
    return r.rows.map(toBatch);
  }

  private stop(id: string, set: string, where: string, values: unknown[]): Promise<boolean> {
    return inTransaction(this.pool, async (client) => {
      const r = await client.query(`update ai.batches set ${set} where id = $1 and status = 'in_progress' ${where}`, values);
      if (r.rowCount) {
        await client.query(`select ai.cancel_request(id) from ai.requests where batch_id = $1 and status in ('queued', 'running')`, [id]);
      }
      return (r.rowCount ?? 0) > 0;
    });
  }

  cancelBatch(id: string, keyId: string | null): Promise<boolean> {
    return this.stop(id, `status = 'cancelling', cancelling_at = now()`, `and ${OWNED} $2::uuid`, [id, keyId]);
  }

  async expireBatch(id: string): Promise<void> {
    await this.stop(id, `expired_at = now()`, `and expires_at <= now()`, [id]);
  }

  async finalizeBatch(id: string, render: (lines: LineOutcome[]) => { output: Buffer | null; errors: Buffer | null; outputId: string; errorId: string }): Promise<void> {
    await inTransaction(this.pool, async (client) => {
      const b = await client.query<{ key_id: string | null; cancelling: boolean; expired: boolean }>(
        `select key_id, cancelling_at is not null as cancelling, expired_at is not null as expired from ai.batches
          where id = $1 and status in ('in_progress', 'cancelling') for update`,
        [id],
      );
      const batch = b.rows[0];
      const open = await client.query(`select 1 from ai.requests where batch_id = $1 and status in ('queued', 'running') limit 1`, [id]);
      // Nothing to do (yet): the transaction only read and locked.
      if (!batch || open.rowCount) return;
      const lines = await client.query<{ id: string; custom_id: string; status: LineOutcome['status']; body: unknown; error: LineOutcome['error']; request: Record<string, unknown> | null; vectors: Buffer | null; n: number | null; prompt_tokens: number | null }>(
        `select id, custom_id, status, output->'completion' as body, error,
                case when endpoint = 'embeddings' then params->'request' end as request,
                case when endpoint = 'embeddings' and status = 'completed' then vectors end as vectors,
                jsonb_array_length(case when endpoint = 'embeddings' then input->'input' end) as n,
                (usage->>'prompt_tokens')::int as prompt_tokens
           from ai.requests where batch_id = $1 order by (params->>'line')::int`,
        [id],
      );
      const files = render(
        lines.rows.map((l) => ({
          requestId: l.id,
          customId: l.custom_id,
          status: l.status,
          body: l.body,
          error: l.error,
          ...(l.request ? { embedding: { vectors: splitVectors(l.vectors, l.n ?? 0), promptTokens: l.prompt_tokens ?? 0, request: l.request } } : {}),
        })),
      );
      for (const [fileId, content, name] of [[files.outputId, files.output, 'output'], [files.errorId, files.errors, 'error']] as const) {
        if (!content) continue;
        await client.query(`insert into ai.files (id, key_id, purpose, filename, bytes, content) values ($1, $2, 'batch_output', $3, $4, $5)`, [
          fileId, batch.key_id, `${id}_${name}.jsonl`, content.length, content,
        ]);
      }
      const status = batch.expired ? 'expired' : batch.cancelling ? 'cancelled' : 'completed';
      await client.query(
        `update ai.batches set status = $2, output_file_id = $3, error_file_id = $4, finalizing_at = now(),
                completed_at = case when $2 = 'completed' then now() end, cancelled_at = case when $2 = 'cancelled' then now() end
          where id = $1`,
        [id, status, files.output ? files.outputId : null, files.errors ? files.errorId : null],
      );
    });
  }
}

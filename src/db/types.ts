import type { ModelTask } from '../protocol/models.js';
import type { ColumnType, Generated, Insertable, Selectable } from 'kysely';

/** Kysely's view of schema `ai` (see migrations/). Nullable columns are `T | null`. */
export interface DB {
  'ai.models': ModelsTable;
  'ai.api_keys': ApiKeysTable;
  'ai.teams': TeamsTable;
  'ai.requests': RequestsTable;
  'ai.request_events': RequestEventsTable;
  'ai.embedding_cache': EmbeddingCacheTable;
}

type Timestamp = ColumnType<Date, Date | string | undefined, Date | string>;
type Json<T = unknown> = ColumnType<T, string | T, string | T>;

export interface ModelsTable {
  name: string;
  task: ModelTask;
  source: string;
  revision: Generated<string>;
  dtype: Generated<string>;
  device: Generated<'cpu' | 'cuda'>;
  aliases: Generated<string[]>;
  chat_template: string | null;
  context_length: number | null;
  defaults: ColumnType<Record<string, unknown>, Record<string, unknown> | undefined, Record<string, unknown>>;
  created_at: Timestamp;
  pooling: Generated<'mean' | 'cls' | 'none'>;
  normalize: Generated<boolean>;
  dimensions: number | null;
  truncate: Generated<boolean>;
  max_queue: number | null;
  /** How the model writes tool calls (protocol/tools.ts ToolCallFormat); null: Hermes/Qwen style. */
  tool_call_format: ColumnType<unknown, string | null | undefined, string | null>;
  reasoning_format: ColumnType<unknown, string | null | undefined, string | null>;
  /** Written by the worker that loads the model (protocol/limits.ts InputBound); read at run time. */
  input_bound: ColumnType<unknown, string | null | undefined, string | null>;
  /** Moderation models: label → category mapping and thresholds (migrations/0050_moderation.sql). */
  moderation: ColumnType<unknown, string | null | undefined, string | null>;
}
export type ModelRow = Selectable<ModelsTable>;
export type NewModel = Insertable<ModelsTable>;

export interface ApiKeysTable {
  id: Generated<string>;
  name: string;
  prefix: string;
  key_hash: Buffer;
  models: string[] | null;
  /** May use the /admin API and the console (migration 0040). */
  admin: Generated<boolean>;
  created_at: Timestamp;
  last_used_at: Timestamp | null;
  revoked_at: Timestamp | null;
  /** Budgets and limits (migration 0041; null: none). */
  team_id: string | null;
  budget_tokens: ColumnType<number | null, number | null | undefined, number | null>;
  budget_period: Generated<BudgetPeriod>;
  rpm_limit: number | null;
  tpm_limit: ColumnType<number | null, number | null | undefined, number | null>;
}
export type ApiKeyRow = Selectable<ApiKeysTable>;

export type BudgetPeriod = 'day' | 'month' | 'total';

export interface TeamsTable {
  id: Generated<string>;
  name: string;
  created_at: Generated<Date>;
  budget_tokens: ColumnType<number | null, number | null | undefined, number | null>;
  budget_period: Generated<BudgetPeriod>;
  rpm_limit: number | null;
  tpm_limit: ColumnType<number | null, number | null | undefined, number | null>;
}
export type TeamRow = Selectable<TeamsTable>;

export type RequestStatus = 'queued' | 'running' | 'completed' | 'failed' | 'cancelled';

export interface RequestsTable {
  id: string;
  endpoint: string;
  model: string;
  requested_model: string;
  input: Json;
  params: ColumnType<Record<string, unknown>, Record<string, unknown> | undefined, Record<string, unknown>>;
  stream: Generated<boolean>;
  status: Generated<RequestStatus>;
  output: Json | null;
  usage: Json | null;
  error: Json | null;
  key_id: string | null;
  worker: string | null;
  job_id: number | null;
  attempts: Generated<number>;
  queued_at: Timestamp;
  started_at: Timestamp | null;
  first_token_at: Timestamp | null;
  finished_at: Timestamp | null;
  /** A completed embedding request's vectors: little-endian float32, input after input (migration 0015). */
  vectors: Buffer | null;
  /** The W3C trace context the request was queued under (migration 0065); null: untraced. */
  traceparent: Generated<string | null>;
}
export type RequestRow = Selectable<RequestsTable>;

export interface RequestEventsTable {
  request_id: string;
  seq: number;
  data: Json;
  created_at: Timestamp;
}

export interface EmbeddingCacheTable {
  model: string;
  input_hash: Buffer;
  /** pgvector text form, e.g. '[0.1,0.2]'. */
  embedding: string;
  tokens: number;
  created_at: Timestamp;
}

/** The shapes of the admin API's answers (docs/admin-api.md). */
export interface Usage {
  prompt_tokens?: number;
  completion_tokens?: number;
  total_tokens?: number;
}

export interface RequestSummary {
  id: string;
  endpoint: string;
  model: string;
  requested_model: string;
  status: string;
  stream: boolean;
  key_id: string | null;
  key_name: string | null;
  worker: string | null;
  attempts: number;
  queued_at: string;
  started_at: string | null;
  first_token_at: string | null;
  finished_at: string | null;
  usage: Usage | null;
  error: { message?: string; code?: string } | null;
}

export interface RequestDetail extends RequestSummary {
  input: unknown;
  params: unknown;
  output: unknown;
  timings: { queue_ms: number | null; time_to_first_token_ms: number | null; run_ms: number | null; total_ms: number | null };
  events: { seq: number; created_at: string; data: unknown }[];
}

export interface Page<T> {
  data: T[];
  has_more: boolean;
  next_cursor: string | null;
}

export interface UsageRow {
  day?: string;
  model?: string;
  key_id?: string | null;
  key_name?: string | null;
  requests: number;
  completed: number;
  failed: number;
  cancelled: number;
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface ModelWorkers {
  model: string;
  task: string;
  workers: { id: string; hostname: string; pid: number; started_at: string; heartbeat_at: string }[];
  queued: number;
  running: number;
  oldest_queued_at: string | null;
}

-- Each worker's decode-batch counters per chat model (steps, sequences per step, tokens, waits),
-- refreshed with its heartbeat; GET /metrics exports them. Shape: {"<model>": {"steps": ..., ...}}.
alter table ai.workers add column stats jsonb not null default '{}'::jsonb;

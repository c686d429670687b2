-- Embedding requests are claimed in batches by workers directly (not one graphile-worker job
-- each); a claim counts as an attempt, so a request whose worker died is retried a bounded
-- number of times.
alter table ai.requests add column attempts integer not null default 0;

-- The claim query's access path: queued embedding requests of one model, oldest first.
create index requests_embed_queue_idx on ai.requests (model, queued_at)
  where endpoint = 'embeddings' and status in ('queued', 'running');

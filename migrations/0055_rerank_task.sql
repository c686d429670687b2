-- Rerank models (issue 19): cross-encoders that score (query, document) pairs. Their requests
-- are rows of ai.requests with endpoint 'rerank', claimed in batches like embeddings.
-- 'moderation' is listed too: DESIGN.md names both second-wave tasks, and this constraint is
-- replaced whole, so a list without it would undo the moderation task's registration.
alter table ai.models drop constraint if exists models_task_check;
alter table ai.models add constraint models_task_check check (task in ('chat', 'embedding', 'rerank', 'moderation'));

-- The claim's access path (ai.claim_rerank): a model's unfinished rerank requests, oldest first.
create index requests_rerank_queue_idx on ai.requests (model, queued_at)
  where endpoint = 'rerank' and status in ('queued', 'running');

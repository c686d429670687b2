-- The moderation task (issue 22): text classifiers registered as `--task moderation`, answering
-- POST /v1/moderations and ai.moderate().

-- 'rerank' is listed too: it is the other new task of this wave (DESIGN.md), and whichever of the
-- two migrations runs last must not drop the other's value.
alter table ai.models drop constraint if exists models_task_check;
alter table ai.models add constraint models_task_check
  check (task in ('chat', 'embedding', 'rerank', 'moderation'));

-- How a moderation model's labels become OpenAI's categories, and the score at which each is
-- flagged: {"labels": {"<label>": ["<category>", ...]}, "thresholds": {"<category>": 0.5},
-- "threshold": 0.5}; every key optional (src/protocol/moderations.ts reads it, and says what
-- applies when it is null).
alter table ai.models add column moderation jsonb
  check (moderation is null or jsonb_typeof(moderation) = 'object');

-- The claim's access path, as for embeddings: a model's unfinished moderation requests, oldest first.
create index requests_moderation_queue_idx on ai.requests (model, queued_at)
  where endpoint = 'moderations' and status in ('queued', 'running');

-- Work that is not interactive: requests submitted in SQL (ai.submit_chat, ai.submit_embed) and
-- the lines of OpenAI Batch API batches. They are ordinary ai.requests rows, claimed by the same
-- workers (ai.claim_chat), so they survive restarts and crashes as every request does.

-- 0: interactive (HTTP, SDK, ai.chat_complete); 1: batch. The claim serves lower numbers first,
-- with a share reserved for batch work so that it progresses under interactive load.
alter table ai.requests add column priority smallint not null default 0;
-- The batch a request is a line of, and the line's custom_id.
alter table ai.requests add column batch_id text;
alter table ai.requests add column custom_id text;

-- The claim's access path, now by priority first.
create index requests_chat_claim_idx on ai.requests (model, priority, queued_at)
  where endpoint <> 'embeddings' and status = 'queued';
drop index if exists ai.requests_chat_queue_idx;
create index requests_batch_idx on ai.requests (batch_id) where batch_id is not null;

-- Files of the Files API (purpose 'batch' uploads, and batches' output and error files),
-- owned by the API key that made them. Content is held here: uploads are size-limited.
create table ai.files (
  id          text primary key,               -- 'file-…'
  key_id      uuid references ai.api_keys (id) on delete cascade,
  purpose     text not null,                  -- 'batch', 'batch_output'
  filename    text not null,
  bytes       integer not null,
  content     bytea not null,
  created_at  timestamptz not null default now()
);
create index files_key_idx on ai.files (key_id, created_at);

create table ai.batches (
  id                text primary key,         -- 'batch_…'
  key_id            uuid references ai.api_keys (id) on delete cascade,
  endpoint          text not null,            -- '/v1/chat/completions', ...
  input_file_id     text not null,
  completion_window text not null,
  status            text not null default 'in_progress'
                    check (status in ('validating', 'failed', 'in_progress', 'finalizing', 'completed', 'expired', 'cancelling', 'cancelled')),
  output_file_id    text,
  error_file_id     text,
  errors            jsonb,
  metadata          jsonb,
  total             integer not null,
  created_at        timestamptz not null default now(),
  in_progress_at    timestamptz,
  expires_at        timestamptz not null,
  finalizing_at     timestamptz,
  completed_at      timestamptz,
  failed_at         timestamptz,
  expired_at        timestamptz,
  cancelling_at     timestamptz,
  cancelled_at      timestamptz
);
create index batches_key_idx on ai.batches (key_id, created_at);
create index batches_open_idx on ai.batches (expires_at) where status in ('in_progress', 'cancelling');

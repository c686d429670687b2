-- Live workers and their heartbeats. A worker silent for longer than the threshold is taken
-- for dead by a reaper (in every serve and worker), which releases its jobs so others run them.
create table ai.workers (
  id              text primary key,
  hostname        text not null,
  pid             integer not null,
  models          text[] not null default '{}',
  -- graphile-worker's own ids for this process's job runners (what its locks name).
  job_worker_ids  text[] not null default '{}',
  started_at      timestamptz not null default now(),
  heartbeat_at    timestamptz not null default now()
);

-- The graphile-worker job that runs a chat request, so a reaper can see its attempts.
alter table ai.requests add column job_id bigint;

-- Chat requests are claimed by workers straight from ai.requests (ai.claim_chat, one statement
-- per pickup, many requests at once), as embedding requests already are, instead of through a
-- graphile-worker job each: a job cost a row, its notification, a get_job call, a claim and a
-- complete_job call per request, and sixteen job runners polling per idle worker.

-- Attempts a chat request may use (a claim counts as one); the reaper fails it once they are
-- used up. Null for embedding requests (their limit is in params).
alter table ai.requests add column max_attempts integer check (max_attempts > 0);

-- The claim's access path: queued chat requests of a model, oldest first.
create index requests_chat_queue_idx on ai.requests (model, queued_at)
  where endpoint <> 'embeddings' and status = 'queued';

-- Requests queued by an earlier version wait in graphile-worker jobs: hand them to the claimers
-- (their rows are already 'queued'), and drop the jobs so no old worker runs them as well.
-- (graphile-worker's schema is made after migrations on a new database: nothing to move then.)
do $$
begin
  if to_regclass('graphile_worker.jobs') is null then
    return;
  end if;
  execute $q$
    with moved as (
      update ai.requests r set max_attempts = j.max_attempts, job_id = null
        from graphile_worker.jobs j
       where j.id = r.job_id and r.endpoint <> 'embeddings' and r.status = 'queued' and j.locked_at is null
      returning j.id)
    select graphile_worker.complete_jobs(array(select id from moved))$q$;
end $$;

-- Idempotent: re-applied by every `switchyard migrate`.
--
-- Retention: nothing grows forever. Three settings in ai.settings (an interval, or 'never'):
--   retention_events    stream events of finished requests (default 1 day: they serve replay
--                       and catch-up while a client reads; the request row keeps the output)
--   retention_requests  finished requests (default 30 days; ai.usage_daily counts what is kept)
--   retention_cache     embedding cache entries (default 30 days after they were computed)
--   insert into ai.settings values ('retention_requests', '90 days')
--     on conflict (name) do update set value = excluded.value;
-- Nothing unfinished is ever deleted (queued or running requests and their events). ai.prune
-- deletes in batches of p_batch rows per table per call, so a backlog never holds long locks:
-- serve and worker processes call it every few minutes (one at a time: an advisory lock), and
-- `switchyard prune` runs it until nothing is left.

create or replace function ai._retention(p_name text, p_default interval)
returns interval language plpgsql stable as $$
declare
  v text := (select s.value from ai.settings s where s.name = p_name);
begin
  if v is null then
    return p_default;
  elsif lower(trim(v)) = 'never' then
    return null;
  end if;
  return v::interval;
exception when invalid_datetime_format or datetime_field_overflow or interval_field_overflow or invalid_text_representation then
  raise exception 'ai.settings %: "%" is not an interval or ''never''', p_name, v using errcode = 'invalid_parameter_value';
end $$;

-- Deletes up to p_batch expired rows of each kind; returns what it deleted. Returns at once
-- (all zero, skipped true) when another session is pruning.
create or replace function ai.prune(p_batch integer default 10000)
returns table (events bigint, requests bigint, cache bigint, skipped boolean)
language plpgsql as $$
declare
  ev interval := ai._retention('retention_events', interval '1 day');
  rq interval := ai._retention('retention_requests', interval '30 days');
  ca interval := ai._retention('retention_cache', interval '30 days');
begin
  events := 0; requests := 0; cache := 0; skipped := false;
  if not pg_try_advisory_xact_lock(7306122) then
    skipped := true;
    return next;
    return;
  end if;
  -- Events of requests finished long enough ago (or gone); never of one still in flight.
  if ev is not null then
    with doomed as (
      select e.request_id, e.seq from ai.request_events e
        left join ai.requests r on r.id = e.request_id
       where (r.id is null or (r.status in ('completed', 'failed', 'cancelled') and r.finished_at < now() - ev))
         and e.created_at < now() - ev
       limit p_batch)
    delete from ai.request_events e using doomed d where e.request_id = d.request_id and e.seq = d.seq;
    get diagnostics events = row_count;
  end if;
  if rq is not null then
    -- With their events, if any are left (no foreign key cascades: see 0014_dataplane.sql).
    with doomed as (
      select r.id from ai.requests r
       where r.status in ('completed', 'failed', 'cancelled') and r.finished_at < now() - rq
       limit p_batch),
    gone as (delete from ai.requests r using doomed d where r.id = d.id returning r.id),
    their_events as (delete from ai.request_events e using gone g where e.request_id = g.id)
    select count(*) into requests from gone;
  end if;
  if ca is not null then
    with doomed as (
      select c.model, c.input_hash from ai.embedding_cache c where c.created_at < now() - ca limit p_batch)
    delete from ai.embedding_cache c using doomed d where c.model = d.model and c.input_hash = d.input_hash;
    get diagnostics cache = row_count;
  end if;
  return next;
end $$;

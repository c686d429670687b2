-- Idempotent: re-applied by every `switchyard migrate`. Functions and views only, no data.

-- Stream events: a row per event (for replay and for reading) and a notification saying that
-- one exists. Any role that can connect may LISTEN to and NOTIFY any channel, whatever it was
-- granted, so a notification carries only `<request id>:<seq>`, never content, and listeners
-- treat it as a hint to read the rows (which only granted roles can).
--
-- Ownership: a worker writes a request's events and outcome only while the row names it and
-- the attempt it runs (worker, attempts) and is 'running'. A worker taken for dead (paused,
-- partitioned) finds the row re-queued or claimed by another attempt, and its writes are
-- refused, so a request never holds two attempts' output.

-- The unchecked form shipped before ownership checks: nothing may publish into a request it
-- does not own.
drop function if exists ai.publish_event(uuid, integer, jsonb);

-- Stores one event and announces it. Internal: callers establish ownership first.
create or replace function ai._emit_event(p_request uuid, p_seq integer, p_data jsonb)
returns void language sql as $$
  insert into ai.request_events (request_id, seq, data) values (p_request, p_seq, p_data);
  select pg_notify('ai_events', p_request::text || ':' || p_seq);
$$;

-- Publishes one stream event of a running attempt; false (nothing written) when the request is
-- no longer this attempt's: cancelled, re-queued by a reaper, or claimed by another attempt.
create or replace function ai.publish_event(p_request uuid, p_worker text, p_attempt integer, p_seq integer, p_data jsonb)
returns boolean language plpgsql as $$
begin
  -- FOR SHARE: whoever takes the request over (a reaper, a new attempt's claim) waits for this
  -- event to commit, so the new attempt numbers its events after it; one that committed first
  -- leaves no matching row here.
  perform 1 from ai.requests
   where id = p_request and worker = p_worker and attempts = p_attempt and status = 'running'
     for share;
  if not found then
    return false;
  end if;
  perform ai._emit_event(p_request, p_seq, p_data);
  return true;
end $$;

-- Writes a running attempt's outcome and its final event in one transaction. Returns false when
-- the request is no longer this attempt's (nothing written); true when it is ended, by this
-- call, an earlier try of it, or a cancellation that stands.
create or replace function ai.finish_request(
  p_request uuid, p_worker text, p_attempt integer, p_status text,
  p_output jsonb, p_usage jsonb, p_error jsonb, p_first_token_at timestamptz, p_seq integer, p_event jsonb
) returns boolean language plpgsql as $$
begin
  update ai.requests
     set status = p_status, output = p_output, usage = p_usage, error = p_error,
         first_token_at = p_first_token_at, finished_at = clock_timestamp()
   where id = p_request and worker = p_worker and attempts = p_attempt and status = 'running';
  if found then
    perform ai._emit_event(p_request, p_seq, p_event);
    return true;
  end if;
  return exists (select 1 from ai.requests
                  where id = p_request and worker = p_worker and attempts = p_attempt
                    and status in ('completed', 'failed', 'cancelled'));
end $$;

-- Marks a request cancelled (if it has not finished) and tells the workers, which stop its
-- generation (after reading this row: the notification alone proves nothing), and its waiter,
-- which reads the row and ends the stream; a queued job of a cancelled request is skipped when
-- a worker picks it up.
create or replace function ai.cancel_request(p_request uuid)
returns boolean language plpgsql as $$
begin
  update ai.requests set status = 'cancelled', finished_at = clock_timestamp()
   where id = p_request and status in ('queued', 'running');
  if not found then
    return false;
  end if;
  perform pg_notify('ai_cancel', p_request::text);
  perform pg_notify('ai_events', p_request::text);
  return true;
end $$;

-- What is waiting and running, per model (served by the partial index on unfinished rows).
create or replace view ai.queue_status as
select model,
       count(*) filter (where status = 'queued')  as queued,
       count(*) filter (where status = 'running') as running,
       min(queued_at) filter (where status = 'queued') as oldest_queued_at
  from ai.requests
 where status in ('queued', 'running')
 group by model;

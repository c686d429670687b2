-- Idempotent: re-applied by every `switchyard migrate`. Functions and views only, no data.

-- Stream events: a row per event (for replay and for reading) and a notification saying that
-- some exist. Any role that can connect may LISTEN to and NOTIFY any channel, whatever it was
-- granted, so a notification item `<request id>:<seq>` is a hint to read the rows (which only
-- granted roles can). An item may also carry the events themselves, sealed (AES-GCM) with the
-- request's notify_key, a secret only its waiter and its worker know (migrations/0095,
-- src/engine/notice.ts): `<request id>:<seq>:<seal>:<events>`.
-- The waiter takes sealed events as they come, without reading them back; an item that does
-- not open is only a hint. The rows are written all the same (replay, catch-up).
--
-- Postgres pays per flush, not per token: a worker writes the events of all its requests that
-- advanced since its last flush in one call of ai.publish_events (one transaction), and each
-- request's notification goes only to the channel of the process that waits on it
-- (ai.requests.listener, written at enqueue): one notification per listening process per flush,
-- and no process parses another's traffic. Requests without a listener (ai.embed,
-- ai.chat_complete poll their row) notify nobody.
--
-- Ownership: a worker writes a request's events and outcome only while the row names it and
-- the attempt it runs (worker, attempts) and is 'running'. A worker taken for dead (paused,
-- partitioned) finds the row re-queued or claimed by another attempt, and its writes are
-- refused, so a request never holds two attempts' output.

-- Events go through ai.publish_events (below): the unchecked one-event form shipped before
-- ownership checks, and nothing may publish into a request it does not own. (The checked
-- one-event form that briefly followed it had no caller.)
drop function if exists ai.publish_event(uuid, integer, jsonb);
drop function if exists ai.publish_event(uuid, text, integer, integer, jsonb);

-- Announces events to the listener of each request: `p_items` are the requests' items (see
-- above). One notification per channel, items separated by spaces; a payload must stay under
-- 8000 bytes, so a channel's items are cut into runs of about 4000 bytes (an item is at most
-- 2,100: a run stays under 6,200), each its own notification.
create or replace function ai._notify_items(p_requests uuid[], p_items text[])
returns void language sql as $$
  select count(pg_notify(t.listener, t.payload)) from (
    select i.listener, string_agg(i.item, ' ' order by i.id) as payload
      from (select r.listener, x.id, x.item,
                   (sum(length(x.item) + 1) over (partition by r.listener order by x.id) - 1) / 4000 as chunk
              from (select y.id, case when length(y.item) <= 2100 then y.item  -- else only its `<id>:<seq>`
                                      else split_part(y.item, ':', 1) || ':' || split_part(y.item, ':', 2) end as item
                      from unnest(p_requests, p_items) as y(id, item)) x
              join ai.requests r on r.id = x.id
             where r.listener is not null) i
     group by i.listener, i.chunk) t;
$$;

-- The plain form: (request, highest seq) pairs, announced as `<request id>:<seq>` hints.
create or replace function ai._notify_events(p_requests uuid[], p_seqs integer[])
returns void language sql as $$
  select ai._notify_items(p_requests, array(select x.id::text || ':' || x.seq from unnest(p_requests, p_seqs) with ordinality as x(id, seq, n) order by x.n));
$$;

-- The channel that wakes the claimers of a request's endpoint when it is queued again (by a
-- reaper, or a worker leaving): embeddings, moderations and rerank requests are claimed in
-- batches by the claimers woken on 'ai_embed', chat-like requests by the one on 'ai_chat'.
create or replace function ai._queue_channel(p_endpoint text)
returns text language sql immutable as $$
  select case when p_endpoint in ('embeddings', 'moderations', 'rerank') then 'ai_embed' else 'ai_chat' end
$$;

-- Who may write a request's events is settled under an advisory lock per request, which costs
-- no WAL (a FOR SHARE row lock wrote a record per request per flush): a writer holds it shared
-- while it checks ownership and inserts; whoever takes a request from its attempt (a reaper
-- re-queueing it, a cancellation) holds it exclusively until it commits, so it waits for the
-- writes in flight, and a writer that comes later finds the new owner and is refused.
create or replace function ai._request_lock(p_request uuid)
returns bigint language sql immutable as $$ select hashtextextended(p_request::text, 7001) $$;

-- Fences requests off from their current attempt's writes until the caller's transaction ends.
-- Locks are taken in id order, as ai.publish_events takes them (no deadlock between the two).
create or replace function ai._fence_requests(p_requests uuid[])
returns void language sql as $$
  select count(pg_advisory_xact_lock(ai._request_lock(s.id)))
    from (select distinct x.id from unnest(p_requests) as x(id) order by x.id) s;
$$;

-- Stores one event and announces it. Internal: callers establish ownership first.
create or replace function ai._emit_event(p_request uuid, p_seq integer, p_data jsonb)
returns void language sql as $$
  insert into ai.request_events (request_id, seq, data) values (p_request, p_seq, p_data);
  select ai._notify_events(array[p_request], array[p_seq]);
$$;

-- Publishes stream events of running attempts, for any number of requests at once:
-- p_events is an array of {request, attempt, seq, data, notice?}; a request's last event may
-- carry `notice`, the item that announces it (sealed events, see above; else `<id>:<seq>`). Only the events of requests this
-- worker's attempt still owns are written; returns the requests refused (cancelled, re-queued by
-- a reaper, or claimed by another attempt), whose generation should stop. A retry of a call that
-- committed fails with unique_violation, and writes nothing twice (callers take it for done: no
-- ON CONFLICT clause, whose speculative insertion costs a second WAL record per row).
create or replace function ai.publish_events(p_worker text, p_events jsonb)
returns uuid[] language plpgsql as $$
declare
  owned uuid[];
  refused uuid[];
  ids uuid[];
  items text[];
begin
  -- Shared, in id order (see ai._request_lock): whoever takes a request over waits for these
  -- events to commit, so a new attempt numbers its events after them; one that committed first
  -- is seen by the check below (a statement of its own: its snapshot is taken after the locks).
  perform pg_advisory_xact_lock_shared(ai._request_lock(x.id))
     from (select distinct (e->>'request')::uuid as id from jsonb_array_elements(p_events) e order by 1) x;
  select coalesce(array_agg(r.id), '{}') into owned
    from ai.requests r
   where r.id in (select (e->>'request')::uuid from jsonb_array_elements(p_events) e)
     and r.worker = p_worker and r.status = 'running'
     and r.attempts = (select max((e->>'attempt')::int) from jsonb_array_elements(p_events) e where (e->>'request')::uuid = r.id);
  with w as (
    insert into ai.request_events (request_id, seq, data)
    select (e->>'request')::uuid, (e->>'seq')::int, e->'data'
      from jsonb_array_elements(p_events) e
     where (e->>'request')::uuid = any(owned)
    returning request_id, seq)
  select array_agg(g.request_id), array_agg(coalesce(n.notice, g.request_id::text || ':' || g.seq)) into ids, items
    from (select request_id, max(seq) as seq from w group by request_id) g
    left join lateral (select e->>'notice' as notice from jsonb_array_elements(p_events) e
                        where (e->>'request')::uuid = g.request_id and (e->>'seq')::int = g.seq) n on true;
  if ids is not null then
    perform ai._notify_items(ids, items);
  end if;
  select coalesce(array_agg(distinct (e->>'request')::uuid), '{}') into refused
    from jsonb_array_elements(p_events) e
   where not ((e->>'request')::uuid = any(owned));
  return refused;
end $$;

-- Writes a running attempt's outcome and its last events in one transaction: p_event is the
-- final event, or an array of events written at p_seq, p_seq + 1, ... (what the attempt had not
-- flushed yet, e.g. the whole text of a request that does not stream, then the final event).
-- Returns false when the request is no longer this attempt's (nothing written); true when it is
-- ended, by this call, an earlier try of it, or a cancellation that stands. p_notice: the item
-- that announces these events (sealed, carrying them: see above); null, `<id>:<last seq>`.
drop function if exists ai.finish_request(uuid, text, integer, text, jsonb, jsonb, jsonb, timestamptz, integer, jsonb);
create or replace function ai.finish_request(
  p_request uuid, p_worker text, p_attempt integer, p_status text,
  p_output jsonb, p_usage jsonb, p_error jsonb, p_first_token_at timestamptz, p_seq integer, p_event jsonb,
  p_notice text default null
) returns boolean language plpgsql as $$
declare
  events jsonb := case when jsonb_typeof(p_event) = 'array' then p_event else jsonb_build_array(p_event) end;
  target jsonb;
  role name;
  failure jsonb;
begin
  update ai.requests
     set status = p_status, output = p_output, usage = p_usage, error = p_error,
         first_token_at = p_first_token_at, finished_at = clock_timestamp()
   where id = p_request and worker = p_worker and attempts = p_attempt and status = 'running'
  returning params->'target', db_role into target, role;
  if found then
    -- ai.submit_chat / ai.submit_embed: the result goes into the caller's row in this transaction
    -- (exactly once: only the attempt that ends the request gets here), or the request fails.
    if p_status = 'completed' and target is not null then
      failure := ai._write_target(target, role, p_output);
      if failure is not null then
        update ai.requests set status = 'failed', error = failure where id = p_request;
        events := (events - (jsonb_array_length(events) - 1)) || jsonb_build_array(jsonb_build_object('type', 'error', 'status', 400, 'error', failure));
        p_notice := null; -- the notice carries the events as the worker sent them
      end if;
    end if;
    insert into ai.request_events (request_id, seq, data)
    select p_request, p_seq + e.n - 1, e.data from jsonb_array_elements(events) with ordinality as e(data, n);
    perform ai._notify_items(array[p_request], array[coalesce(p_notice, p_request::text || ':' || (p_seq + jsonb_array_length(events) - 1))]);
    return true;
  end if;
  return exists (select 1 from ai.requests
                  where id = p_request and worker = p_worker and attempts = p_attempt
                    and status in ('completed', 'failed', 'cancelled'));
end $$;

-- Marks a request cancelled (if it has not finished) and tells the workers, which stop its
-- generation (after reading this row: the notification alone proves nothing), and its waiter
-- (on its own channel), which reads the row and ends the stream; a queued job of a cancelled
-- request is skipped when a worker picks it up.
create or replace function ai.cancel_request(p_request uuid)
returns boolean language plpgsql as $$
declare
  channel text;
begin
  update ai.requests set status = 'cancelled', finished_at = clock_timestamp()
   where id = p_request and status in ('queued', 'running')
  returning listener into channel;
  if not found then
    return false;
  end if;
  perform ai._fence_requests(array[p_request]);
  perform pg_notify('ai_cancel', p_request::text);
  if channel is not null then
    perform pg_notify(channel, p_request::text);
  end if;
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

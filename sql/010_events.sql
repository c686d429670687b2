-- Idempotent: re-applied by every `switchyard migrate`. Functions and views only, no data.

-- Publishes one stream event: the row is for replay, the notification for live delivery.
-- Postgres caps a notification at 8000 bytes, so a large event travels as a pointer and
-- listeners read the row.
create or replace function ai.publish_event(p_request uuid, p_seq integer, p_data jsonb)
returns void language plpgsql as $$
declare
  payload text;
begin
  insert into ai.request_events (request_id, seq, data) values (p_request, p_seq, p_data);
  payload := json_build_object('r', p_request, 's', p_seq, 'd', p_data)::text;
  if octet_length(payload) > 7900 then
    payload := json_build_object('r', p_request, 's', p_seq)::text;
  end if;
  perform pg_notify('ai_events', payload);
end $$;

-- Marks a request cancelled (if it has not finished) and tells the workers, which stop its
-- generation; a queued job of a cancelled request is skipped when a worker picks it up.
create or replace function ai.cancel_request(p_request uuid)
returns boolean language plpgsql as $$
begin
  update ai.requests set status = 'cancelled', finished_at = clock_timestamp()
   where id = p_request and status in ('queued', 'running');
  if not found then
    return false;
  end if;
  perform pg_notify('ai_cancel', p_request::text);
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

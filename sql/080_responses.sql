-- Idempotent: re-applied by every `switchyard migrate`.
--
-- The Responses API's stored responses (migrations/0016_responses.sql). The response objects
-- themselves are rendered by the gateway (src/serving/responses.ts); SQL only stores, finds and
-- forgets them.

-- Who may see a stored response, or resume a chat-completions stream (issue 16): every key of
-- its owner. p_owner is the key that made it and p_team the team that key belonged to when it
-- was made (ai.requests.team_id, recorded at admission: the team whose database role reads it
-- under row-level security, migrations/0042_tenant_rls.sql); p_key is the caller's key, null
-- with auth off. A key sees what it made itself (a rotated key keeps its id, so its successor
-- secret does too) and what any key of its current team made for that team; a team-less key
-- sees only its own; with auth off, only what was made with auth off. A deleted team (team_id
-- set null) leaves its responses to the keys that made them.
create or replace function ai.visible_to_key(p_owner uuid, p_team uuid, p_key uuid)
returns boolean language sql stable as $$
  select p_owner is not distinct from p_key
      or (p_team is not null and p_key is not null
          and exists (select from ai.api_keys k where k.id = p_key and k.team_id = p_team))
$$;

-- Deletes a response the key may see (ai.visible_to_key); false when there is none. Its generation is cancelled if
-- it still runs, and the request log keeps no text of it: the request is marked `store: false`,
-- redacted at once when it has ended, else by the sweep once it has (sql/075_store.sql).
create or replace function ai.delete_response(p_id uuid, p_key uuid)
returns boolean language plpgsql as $$
declare
  st text;
begin
  delete from ai.responses s using ai.requests r
   where s.id = p_id and r.id = s.id and ai.visible_to_key(s.key_id, r.team_id, p_key);
  if not found then
    return false;
  end if;
  update ai.requests set params = params || '{"store": false}' where id = p_id
  returning status into st;
  if st in ('completed', 'failed') then
    perform ai._redact_requests(array[p_id]);
  else
    -- Still queued or running: its worker may publish a little more after the cancel, so the
    -- sweep (ai.redact_unstored) takes it once it has ended.
    perform ai.cancel_request(p_id);
  end if;
  return true;
end $$;

-- The stored responses a role made through the SDK, and only those (as ai.my_requests).
-- Admin roles read ai.responses itself.
create or replace view ai.my_responses with (security_barrier) as
select 'resp_' || replace(s.id::text, '-', '') as id,
       case when s.previous_id is null then null else 'resp_' || replace(s.previous_id::text, '-', '') end as previous_response_id,
       s.model,
       coalesce(s.status, case r.status when 'queued' then 'queued' when 'running' then 'in_progress' else r.status end) as status,
       s.background, s.request, s.input_items, s.output, s.usage, s.error, s.created_at, s.completed_at
  from ai.responses s
  join ai.requests r on r.id = s.id
 where s.db_role = current_user;

-- Idempotent: re-applied by every `switchyard migrate`.
--
-- Transactional submission: AI work that commits with the caller's transaction.
--
--   begin;
--   insert into tickets (id, body) values (42, 'My order never came');
--   select ai.submit_chat('smollm2', jsonb_build_array(jsonb_build_object('role', 'user', 'content', body)),
--                         '{"max_tokens": 60}', 'tickets', 'reply', 'id', id::text) from tickets where id = 42;
--   commit;   -- rolled back instead: no request exists, nothing runs, nothing is written
--
-- ai.submit_chat(model, messages, options, into_table, into_column, key_column, key_value) and
-- ai.submit_embed(model, input, into_table, into_column, key_column, key_value) return the
-- request's id at once; its status, output and error are in ai.requests (ai.my_requests). The
-- row is written in the caller's transaction (no side connection, no backend held while it
-- runs), and the notification that wakes the workers is sent at commit. Chat work is batch work
-- (priority 1): interactive requests go first, with a share of every worker reserved for it.
-- Embedding work is batch work too: workers claim interactive embedding requests first, and at
-- most a quarter of a claim's rows from batch work (ai.claim_embeddings).
--
-- With a target, the worker writes the result into into_table.into_column of the rows whose
-- key_column = key_value, in the transaction that completes the request (ai.finish_request), so
-- it is written exactly once: the reply's text into a text column (null when the reply is only
-- tool calls), the whole chat.completion into a jsonb or json column, the vector into a vector
-- column. The caller must be allowed to write it: checked at submit (UPDATE on into_column,
-- SELECT on key_column, for the calling role), and the write runs as that role (SET LOCAL ROLE,
-- ai.grant_usage makes worker roles members of usage roles), so its row-level security and
-- triggers apply. A write that fails (no such row any more, rights revoked) fails the request
-- with code target_write_failed or target_row_not_found.
--
-- The request body is not validated here: as for ai.chat_complete, the worker validates it with
-- the gateway's validator and a malformed one fails the request with the gateway's error.

-- What the worker needs to write a target, checked for the calling role; null without one.
create or replace function ai._submit_target(
  p_fn text, p_role name, p_table regclass, p_column name, p_key_column name, p_key_value text, p_kinds text[]
) returns jsonb language plpgsql stable as $$
declare
  col record;
  key_type text;
  kind text;
begin
  if p_table is null and p_column is null and p_key_column is null and p_key_value is null then
    return null;
  end if;
  if p_table is null or p_column is null or p_key_column is null or p_key_value is null then
    raise exception '%: a target needs into_table, into_column, key_column and key_value', p_fn
      using errcode = 'invalid_parameter_value';
  end if;
  select t.typname, format_type(a.atttypid, a.atttypmod) as type into col
    from pg_attribute a join pg_type t on t.oid = a.atttypid
   where a.attrelid = p_table and a.attname = p_column and a.attnum > 0 and not a.attisdropped;
  if not found then
    raise exception '%: % has no column "%"', p_fn, p_table, p_column using errcode = 'undefined_column';
  end if;
  select format_type(a.atttypid, a.atttypmod) into key_type
    from pg_attribute a where a.attrelid = p_table and a.attname = p_key_column and a.attnum > 0 and not a.attisdropped;
  if not found then
    raise exception '%: % has no column "%"', p_fn, p_table, p_key_column using errcode = 'undefined_column';
  end if;
  kind := case when col.typname in ('text', 'varchar', 'bpchar') then 'text'
               when col.typname in ('jsonb', 'json') then 'json'
               when col.typname = 'vector' then 'vector' end;
  if kind is null or not kind = any(p_kinds) then
    raise exception '%: cannot write the result into %.% of type %', p_fn, p_table, p_column, col.type
      using errcode = 'datatype_mismatch',
            hint = case when 'vector' = any(p_kinds) then 'The target of ai.submit_embed is a vector column.'
                        else 'The target of ai.submit_chat is a text column (the reply) or a jsonb column (the chat.completion).' end;
  end if;
  if not has_column_privilege(p_role, p_table, p_column, 'UPDATE')
     or not has_column_privilege(p_role, p_table, p_key_column, 'SELECT') then
    raise exception '%: role % may not write %.% (it needs UPDATE on it and SELECT on %)', p_fn, p_role, p_table, p_column, p_key_column
      using errcode = 'insufficient_privilege';
  end if;
  return jsonb_build_object('table', p_table::oid, 'name', p_table::text, 'column', p_column, 'type', col.type, 'kind', kind,
                            'key_column', p_key_column, 'key_type', key_type, 'key_value', p_key_value);
end $$;

-- Writes a completed request's result into its target as the role that submitted it. Called by
-- ai.finish_request (chat) and ai.finish_embeddings (p_output is then {"vector": its text}) in
-- the transaction that completes the request. Returns null when written,
-- else the error to fail the request with (nothing written then).
create or replace function ai._write_target(p_target jsonb, p_role name, p_output jsonb)
returns jsonb language plpgsql as $$
declare
  prior text := current_setting('role');
  value text := case p_target->>'kind'
                  when 'text' then p_output #>> '{completion,choices,0,message,content}'
                  when 'json' then (p_output->'completion')::text
                  when 'vector' then p_output->>'vector' end;
  n bigint;
begin
  begin
    perform set_config('role', p_role, true);
    execute format('update %s set %I = $1::%s where %I = $2::%s',
                   (p_target->>'table')::oid::regclass, p_target->>'column', p_target->>'type',
                   p_target->>'key_column', p_target->>'key_type')
      using value, p_target->>'key_value';
    get diagnostics n = row_count;
    perform set_config('role', prior, true);
  exception when others then
    -- The block's subtransaction is rolled back, the role setting with it.
    return jsonb_build_object('message', format('Writing the result into %s.%s failed: %s', p_target->>'name', p_target->>'column', sqlerrm),
                              'type', 'invalid_request_error', 'param', null, 'code', 'target_write_failed');
  end;
  if n = 0 then
    return jsonb_build_object('message', format('No row of %s has %s = %s to write the result into.', p_target->>'name', p_target->>'key_column', p_target->>'key_value'),
                              'type', 'invalid_request_error', 'param', null, 'code', 'target_row_not_found');
  end if;
  return null;
end $$;

create or replace function ai.submit_chat(
  model text, messages jsonb, options jsonb default '{}',
  into_table regclass default null, into_column name default null, key_column name default null, key_value text default null
) returns uuid language plpgsql volatile parallel unsafe
security definer set search_path = pg_catalog, public, pg_temp as $$
declare
  caller name := ai._caller();
  body jsonb := ai._chat_body(model, messages, options, 'ai.submit_chat');
  registered text := ai._chat_model(model, 'ai.submit_chat');
  target jsonb := ai._submit_target('ai.submit_chat', caller, into_table, into_column, key_column, key_value, array['text', 'json']);
  id uuid := gen_random_uuid();
begin
  perform ai._queue_openai(id, 'chat.completions', registered, body,
                           jsonb_strip_nulls(jsonb_build_object('source', 'sql', 'db_role', caller, 'target', target)), 1::smallint, caller);
  return id;
end $$;

-- The embedding counterpart: one input, its vector written into a vector column. Queued on the
-- embedding queue (ai.enqueue_embedding, the row the HTTP gateway writes; workers claim it in
-- batches with the rest) in the caller's transaction; ai.finish_embeddings writes the target.
create or replace function ai.submit_embed(
  model text, input text,
  into_table regclass default null, into_column name default null, key_column name default null, key_value text default null
) returns uuid language plpgsql volatile parallel unsafe
security definer set search_path = pg_catalog, public, pg_temp as $$
declare
  caller name := ai._caller();
  registered text := ai._embedding_model(model, 'ai.submit_embed');
  target jsonb := ai._submit_target('ai.submit_embed', caller, into_table, into_column, key_column, key_value, array['vector']);
  id uuid := gen_random_uuid();
begin
  if input is null then
    raise exception 'ai.submit_embed: input is null' using errcode = 'null_value_not_allowed';
  end if;
  perform ai.enqueue_embedding(id, registered, model, jsonb_build_array(input),
                               jsonb_strip_nulls(jsonb_build_object('source', 'sql', 'db_role', caller, 'target', target)), null, 5, null, 1::smallint);
  return id;
end $$;

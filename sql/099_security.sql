-- Idempotent: re-applied by every `switchyard migrate`, after every other file here (keep it last).
--
-- Least privilege, as pgai does it (SECURITY.md has the threat model):
-- * Nothing in schema ai is executable by PUBLIC. Application roles get what they need from
--   ai.grant_usage; the serve and worker roles from ai.grant_service (`switchyard roles setup`
--   calls both). SECURITY DEFINER functions pin their search_path.
-- * dblink is not executable by PUBLIC: only the owner's ai.embed and ai.chat_complete use it.
-- * Grants are re-applied here to the roles recorded in ai.usage_roles and ai.service_roles, so a
--   function replaced by a new signature keeps its grants.

-- The requests a role made in SQL (ai.embed, ai.chat_complete), and only those.
create or replace view ai.my_requests with (security_barrier) as
select id, endpoint, model, requested_model, input, params, status, output, usage, error,
       queued_at, started_at, first_token_at, finished_at
  from ai.requests
 where db_role = current_user;

-- Lets `role` read every row of the vectorizer tables (past their row-level security), once.
create or replace function ai._vectorizer_read_policies(p_policy name, p_role name)
returns void language plpgsql as $$
declare
  t text;
begin
  foreach t in array array['vectorizers', 'vectorizer_queue', 'vectorizer_failed'] loop
    if not exists (select from pg_policies p where p.schemaname = 'ai' and p.tablename = t and p.policyname = p_policy) then
      execute format('create policy %I on ai.%I for select to %I using (true)', p_policy, t, p_role);
    end if;
  end loop;
end $$;

-- Lets `role` read (or, with p_write, also write) every row of the tables that show a team
-- role only its own (migrations/0042_tenant_rls.sql), once.
create or replace function ai._tenant_policies(p_policy name, p_role name, p_write boolean)
returns void language plpgsql as $$
declare
  t text;
begin
  foreach t in array array['requests', 'responses', 'api_keys'] loop
    if not exists (select from pg_policies p where p.schemaname = 'ai' and p.tablename = t and p.policyname = p_policy) then
      execute format('create policy %I on ai.%I for %s to %I using (true)%s', p_policy, t,
                     case when p_write then 'all' else 'select' end, p_role, case when p_write then ' with check (true)' else '' end);
    end if;
  end loop;
end $$;

-- A team's database role: it may read the request log (ai.requests), usage (ai.usage_daily) and
-- stored responses (ai.responses) of its team's keys, and the names of those keys, and nothing
-- else in schema ai (row-level security, migrations/0042_tenant_rls.sql). Roles that are members
-- of it see the same. One team per role. Run it as the owner of schema ai or a superuser.
create or replace function ai.grant_team(role name, team text)
returns void language plpgsql as $$
#variable_conflict use_column
declare
  r name := grant_team.role;
  t uuid;
begin
  if not pg_has_role(current_user, (select n.nspowner from pg_namespace n where n.nspname = 'ai'), 'USAGE') then
    raise exception 'ai.grant_team: only the owner of schema ai (or a superuser) may grant' using errcode = 'insufficient_privilege';
  end if;
  if not exists (select from pg_roles x where x.rolname = r) then
    raise exception 'ai.grant_team: role "%" does not exist', r using errcode = 'undefined_object';
  end if;
  select x.id into t from ai.teams x where x.id::text = grant_team.team or x.name = grant_team.team;
  if t is null then
    raise exception 'ai.grant_team: no team "%"', grant_team.team using errcode = 'undefined_object';
  end if;
  execute format('grant usage on schema ai to %I', r);
  execute format('grant select on ai.responses, ai.usage_daily to %I', r);
  perform ai._grant_request_columns(r);
  -- Never key_hash: a team sees which of its keys did what, not anything that could be one.
  execute format('grant select (id, name, prefix, team_id, created_at, revoked_at) on ai.api_keys to %I', r);
  -- Policies for this role alone, comparing with a constant: no lookup per row, and no right to
  -- read or run anything else needed for them.
  perform ai._drop_team_policies(r);
  execute format('create policy %I on ai.requests for select to %I using (team_id = %L::uuid)', 'team_' || r, r, t);
  execute format('create policy %I on ai.responses for select to %I using (exists (select from ai.requests q where q.id = responses.id and q.team_id = %L::uuid))', 'team_' || r, r, t);
  execute format('create policy %I on ai.api_keys for select to %I using (team_id = %L::uuid)', 'team_' || r, r, t);
  insert into ai.team_roles as x (role, team_id) values (r, t) on conflict (role) do update set team_id = excluded.team_id;
end $$;

-- A team role reads every column of the request log but notify_key, the secret a request's
-- worker seals the events in its notifications with (sql/010_events.sql): whoever holds it could
-- put words in a teammate's answer. Column privileges, as for ai.api_keys' hashes; every
-- migrate grants again to the recorded roles (the loop below), so a column added later is theirs too.
create or replace function ai._grant_request_columns(p_role name)
returns void language plpgsql as $$
begin
  -- The table's owner (and a superuser) reads every column whatever is granted: nothing to do,
  -- and nothing to revoke from it.
  if exists (select from pg_roles x where x.rolname = p_role and (x.rolsuper or x.oid = (select c.relowner from pg_class c where c.oid = 'ai.requests'::regclass))) then
    return;
  end if;
  execute format('revoke select on ai.requests from %I', p_role);
  execute format('grant select (%s) on ai.requests to %I',
                 (select string_agg(quote_ident(a.attname), ', ' order by a.attnum) from pg_attribute a
                   where a.attrelid = 'ai.requests'::regclass and a.attnum > 0 and not a.attisdropped and a.attname <> 'notify_key'),
                 p_role);
end $$;

create or replace function ai._drop_team_policies(p_role name)
returns void language plpgsql as $$
declare
  t text;
begin
  foreach t in array array['requests', 'responses', 'api_keys'] loop
    execute format('drop policy if exists %I on ai.%I', 'team_' || p_role, t);
  end loop;
end $$;

-- Ends what ai.grant_team gave.
create or replace function ai.revoke_team(role name)
returns void language plpgsql as $$
#variable_conflict use_column
declare
  r name := revoke_team.role;
begin
  delete from ai.team_roles x where x.role = r;
  perform ai._drop_team_policies(r);
  if exists (select from pg_roles x where x.rolname = r) then
    execute format('revoke select on ai.requests, ai.responses, ai.usage_daily from %I', r);
    execute format('revoke select (id, name, prefix, team_id, created_at, revoked_at) on ai.api_keys from %I', r);
  end if;
end $$;

-- What an application role needs: ai.embed, ai.chat_complete, ai.submit_chat, ai.submit_embed, vectorizers on tables it owns (and
-- their status, ai.search over them), the registered models, its own SQL requests and SDK responses. `admin` adds reading everything in
-- schema ai (requests of every role and key, usage, workers) and every vectorizer. Also makes
-- every worker role of ai.service_roles a member of `role`, so that workers run its vectorizers'
-- batches as `role` (see vectorize-task.ts). Run it as the owner of schema ai or a superuser.
create or replace function ai.grant_usage(role name, admin boolean default false)
returns void language plpgsql as $$
#variable_conflict use_column
declare
  r name := grant_usage.role;
  f text;
  w name;
begin
  if not pg_has_role(current_user, (select n.nspowner from pg_namespace n where n.nspname = 'ai'), 'USAGE') then
    raise exception 'ai.grant_usage: only the owner of schema ai (or a superuser) may grant usage' using errcode = 'insufficient_privilege';
  end if;
  if not exists (select from pg_roles x where x.rolname = r) then
    raise exception 'ai.grant_usage: role "%" does not exist', r using errcode = 'undefined_object';
  end if;
  execute format('grant usage on schema ai to %I', r);
  execute format('grant select on ai.models, ai.vectorizer_status, ai.my_requests, ai.my_responses, ai.queue_status to %I', r);
  -- Vectorizer tables: row-level security shows a role only its own (0010_roles.sql).
  execute format('grant select, insert, delete on ai.vectorizers to %I', r);
  execute format('grant select, insert, update, delete on ai.vectorizer_queue, ai.vectorizer_failed to %I', r);
  execute format('grant usage on all sequences in schema ai to %I', r);
  foreach f in array array[
    'ai.embed(text, text)', 'ai.embed(text, text[])', 'ai.chat_complete(text, jsonb, jsonb)',
    'ai.rerank(text, text, text[])',
    'ai.submit_chat(text, jsonb, jsonb, regclass, name, name, text)',
    'ai.submit_embed(text, text, regclass, name, name, text)',
    'ai.create_vectorizer(regclass, name, text, name, integer, integer, integer, interval, jsonb, text)',
    'ai.drop_vectorizer(integer, boolean)', 'ai.search(integer, text, integer, jsonb)',
    'ai.moderate(text, text)',
    'ai.chunking_none()', 'ai.chunking_recursive(integer, integer, text[])', 'ai.chunking_tokens(integer, integer)',
    -- What those run as the caller: helpers, and a batch's steps (workers run them as the owner).
    'ai._embedding_model(text, text)', 'ai._vectorizer_install(integer)', 'ai._vectorizer_wake(integer)',
    'ai._vectorizer_forget_jobs(integer)', 'ai._vectorizer_job_key(integer)', 'ai._qualified(regclass)',
    'ai._vectorizer_pk_json(name[], text)', 'ai._vectorizer_pk_match(name[], text, text)',
    'ai._vectorizer_pk_match_json(name[], regtype[], text, text)', 'ai._vectorizer_pk_values(name[], regtype[], text)',
    'ai._vectorizer_begin(integer)', 'ai._vectorizer_claim(integer)', 'ai._vectorizer_finish(integer, jsonb)',
    'ai._vectorizer_claim_rows(integer)', 'ai._vectorizer_chunking(jsonb)', 'ai._vectorizer_counts(integer)',
    'ai._vectorizer_build_index(integer)', 'ai._vectorizer_has_index(regclass)', 'ai._vectorizer_index_built(integer)',
    'ai._interval_setting(text, interval)'
  ] loop
    execute format('grant execute on function %s to %I', f, r);
  end loop;
  if admin then
    execute format('grant select on all tables in schema ai to %I', r);
    execute format('revoke all on ai.settings from %I', r);  -- may hold the owner's password
    perform ai._grant_request_columns(r);  -- never notify_key
    perform ai._vectorizer_read_policies('admin_' || r, r);
    perform ai._tenant_policies('admin_' || r, r, false);
  end if;
  for w in select s.role from ai.service_roles s join pg_roles x on x.rolname = s.role where s.kind = 'worker' and s.role <> r loop
    begin
      execute format('grant %I to %I', r, w);
    exception when insufficient_privilege then
      raise notice 'ai.grant_usage: cannot make worker role % a member of %: grant it as a superuser for vectorizers of % to run', w, r, r;
    end;
  end loop;
  insert into ai.usage_roles as u (role, admin) values (r, grant_usage.admin)
  on conflict (role) do update set admin = u.admin or excluded.admin;
end $$;

-- What a serve or worker process's role needs: to read and write the request log, the queue
-- (graphile_worker) and the workers' table, and to call every function of both schemas. No
-- DDL, no TRIGGER, TRUNCATE or REFERENCES (a trigger on ai.requests would run as whoever writes
-- it). Vectorizer rows it may read through a policy of its own.
create or replace function ai.grant_service(role name, kind text)
returns void language plpgsql as $$
#variable_conflict use_column
declare
  r name := grant_service.role;
  s text;
  owner name;
begin
  if kind not in ('serve', 'worker') then
    raise exception 'ai.grant_service: kind must be serve or worker' using errcode = 'invalid_parameter_value';
  end if;
  if not pg_has_role(current_user, (select n.nspowner from pg_namespace n where n.nspname = 'ai'), 'USAGE') then
    raise exception 'ai.grant_service: only the owner of schema ai (or a superuser) may grant' using errcode = 'insufficient_privilege';
  end if;
  foreach s in array array['ai', 'graphile_worker'] loop
    select n.nspowner::regrole::name into owner from pg_namespace n where n.nspname = s;
    execute format('grant usage on schema %I to %I', s, r);
    execute format('grant select, insert, update, delete on all tables in schema %I to %I', s, r);
    execute format('grant usage, select, update on all sequences in schema %I to %I', s, r);
    execute format('grant execute on all functions in schema %I to %I', s, r);
    execute format('alter default privileges for role %I in schema %I grant select, insert, update, delete on tables to %I', owner, s, r);
    execute format('alter default privileges for role %I in schema %I grant usage, select, update on sequences to %I', owner, s, r);
    execute format('alter default privileges for role %I in schema %I grant execute on functions to %I', owner, s, r);
  end loop;
  execute format('revoke all on ai.settings from %I', r);  -- may hold the owner's password
  -- Vectorizer rows (row-level security): read, to run their jobs; their batches run as their owner.
  perform ai._vectorizer_read_policies('service_' || r, r);
  -- The request log, responses and keys (row-level security for team roles): every row.
  perform ai._tenant_policies('service_' || r, r, true);
  -- graphile-worker turns row-level security on for its private tables, with no policy (only
  -- their owner may use them): every row, for this role.
  for s in select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
            where n.nspname = 'graphile_worker' and c.relkind in ('r', 'p') and c.relrowsecurity loop
    if not exists (select from pg_policies p where p.schemaname = 'graphile_worker' and p.tablename = s and p.policyname = 'service_' || r) then
      execute format('create policy %I on graphile_worker.%I to %I using (true) with check (true)', 'service_' || r, s, r);
    end if;
  end loop;
  insert into ai.service_roles (role, kind) values (r, kind)
  on conflict on constraint service_roles_pkey do update set kind = excluded.kind;
end $$;

do $$
declare
  owner name := (select n.nspowner::regrole::name from pg_namespace n where n.nspname = 'ai');
  f regprocedure;
  x record;
begin
  -- Nothing in ai for PUBLIC, now and for functions made later.
  execute 'revoke execute on all functions in schema ai from public';
  execute format('alter default privileges for role %I in schema ai revoke execute on functions from public', owner);
  -- dblink only for those granted it (its functions belong to whoever created the extension).
  if exists (select from pg_extension e join pg_roles r on r.oid = e.extowner
              where e.extname = 'dblink' and pg_has_role(current_user, r.oid, 'USAGE')) then
    for f in select p.oid::regprocedure from pg_proc p join pg_depend d on d.objid = p.oid and d.deptype = 'e'
              join pg_extension e on e.oid = d.refobjid where e.extname = 'dblink' loop
      execute format('revoke execute on function %s from public', f);
    end loop;
  end if;
  -- Grants again, for roles that still exist.
  delete from ai.usage_roles u where not exists (select from pg_roles r where r.rolname = u.role);
  delete from ai.service_roles s where not exists (select from pg_roles r where r.rolname = s.role);
  for x in select role, kind from ai.service_roles loop
    perform ai.grant_service(x.role, x.kind);
  end loop;
  for x in select role, admin from ai.usage_roles loop
    perform ai.grant_usage(x.role, x.admin);
  end loop;
  delete from ai.team_roles t where not exists (select from pg_roles r where r.rolname = t.role);
  for x in select role, team_id from ai.team_roles loop
    perform ai.grant_team(x.role, x.team_id::text);
  end loop;
end $$;

-- Usage is read with the reader's rights, so a team role's usage is its team's rows only.
alter view ai.usage_daily set (security_invoker = true);

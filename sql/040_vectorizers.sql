-- Idempotent: re-applied by every `switchyard migrate`.
--
-- Vectorizers (after timescale/pgai): "keep an up-to-date embedding of docs.body in
-- docs_embeddings".
--
--   select ai.create_vectorizer('docs'::regclass, 'body', 'minilm');   -- returns its id
--   select * from ai.vectorizer_status;
--   select d.id from docs_embeddings e join docs d using (id)
--    order by e.embedding <=> (select ai.embed('minilm', 'query')) limit 5;
--   select ai.drop_vectorizer(1);
--
-- Data flow
-- * Statement-level triggers with transition tables on the source: INSERT queues the new keys;
--   UPDATE queues keys whose text changed (or that are new keys) and deletes the destination
--   rows of keys that went away; DELETE deletes destination rows (and failed entries); TRUNCATE
--   truncates the destination and clears the vectorizer's queue. A row whose text is NULL has
--   no destination row.
-- * Queued items wake a worker: a graphile-worker job `vectorize:<model>` with payload
--   {"vectorizer_id": N} and job key `vectorize:N`. See ai._vectorizer_wake for how a burst of
--   writes yields one job without writers waiting for a worker (or, but for the first writes
--   to an idle vectorizer, for each other).
-- * The job (src/worker/vectorize-task.ts) repeats batches. A batch is one transaction:
--   ai._vectorizer_begin, ai._vectorizer_claim (up to batch_size due items, FOR UPDATE SKIP
--   LOCKED, and their rows' current text), the model, ai._vectorizer_finish (upsert/delete
--   destination rows, delete the items; failed items are retried with exponential backoff, then
--   parked in ai.vectorizer_failed). An exception rolls the batch back, so its items are simply
--   queued again. The worker pipelines batches: it claims and embeds the next while the
--   previous one is written. When nothing is due the job settles (ai._vectorizer_settle),
--   scheduling a retry job (`vectorize:N:retry`) for backed-off items.
--
-- Locks, in the order every party takes them: a batch takes the advisory lock (class 7306121,
-- id; shared), ROW SHARE on the source, its queue rows, FOR KEY SHARE on the source rows it
-- reads (so a concurrent DELETE of such a row waits for the batch, then its trigger deletes the
-- fresh destination row), then the destination rows. TRUNCATE of the source takes ACCESS
-- EXCLUSIVE first, so it waits for the batches in flight and new ones wait for it;
-- ai.drop_vectorizer takes the advisory lock exclusively first. Batches take disjoint keys, so
-- any number of them (jobs on several workers, lanes of one job) can run at once.
--
-- Limits: a transaction that deletes, in separate statements, two rows of one batch in flight
-- can deadlock with that batch (PostgreSQL then aborts one of the two; if it is the batch, it is
-- retried). If the source table is dropped, drop its vectorizer with ai.drop_vectorizer(id).

-- SQL snippets over a vectorizer's key columns.
create or replace function ai._vectorizer_pk_json(p_cols name[], p_alias text)
returns text language sql immutable strict as $$
  select 'pg_catalog.jsonb_build_object(' || string_agg(format('%L, %I.%I', c, p_alias, c), ', ' order by o) || ')'
    from unnest(p_cols) with ordinality u(c, o)
$$;

create or replace function ai._vectorizer_pk_match(p_cols name[], p_a text, p_b text)
returns text language sql immutable strict as $$
  select string_agg(format('%1$I.%3$I = %2$I.%3$I', p_a, p_b, c), ' and ' order by o)
    from unnest(p_cols) with ordinality u(c, o)
$$;

-- `alias.col = (json->>'col')::type and ...`: a stored key against typed columns.
create or replace function ai._vectorizer_pk_match_json(p_cols name[], p_types regtype[], p_alias text, p_json text)
returns text language sql stable strict as $$
  select string_agg(format('%I.%I = (%s->>%L)::%s', p_alias, c, p_json, c, p_types[o]), ' and ' order by o)
    from unnest(p_cols) with ordinality u(c, o)
$$;

-- The typed key columns out of a stored key: `(json->>'col')::type, ...`.
create or replace function ai._vectorizer_pk_values(p_cols name[], p_types regtype[], p_json text)
returns text language sql stable strict as $$
  select string_agg(format('(%s->>%L)::%s', p_json, c, p_types[o]), ', ' order by o)
    from unnest(p_cols) with ordinality u(c, o)
$$;

create or replace function ai._vectorizer_job_key(p_id integer)
returns text language sql immutable strict as $$ select 'vectorize:' || p_id $$;

-- Makes sure a job will process what the current transaction queued, without making writers
-- wait. graphile-worker's add_job with a job key upserts the job row, which row-locks it until
-- the writer commits: every concurrent writer of the source would queue up behind the first
-- (and two transactions writing two vectorized tables in opposite orders could deadlock). So:
-- * If a job with the key is pending, or running (locked within the last 5 minutes; a job hands
--   over to a new one after a minute, so an older lock is a crashed worker's), add nothing: a
--   read, no lock. A running job will see this transaction's items because of the handshake:
--   every writer holds this shared advisory lock until it commits, and a job only finishes
--   after taking the same lock exclusively (pg_try_advisory_xact_lock, never waiting) and then
--   finding nothing due; while a writer is still open it schedules a follow-up instead. The
--   job's settling transaction also clears its key, so a writer that comes after sees no job.
-- * Otherwise add the job (only then can two writers briefly contend for the key: the first
--   writes to an idle vectorizer).
-- Under REPEATABLE READ / SERIALIZABLE the read may be stale, so such writers always add.
create or replace function ai._vectorizer_wake(p_id integer)
returns void language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  jkey text := ai._vectorizer_job_key(p_id);
  model_name text;
begin
  perform pg_advisory_xact_lock_shared(7306120, p_id);
  if current_setting('transaction_isolation') = 'read committed' and exists (
    select 1 from graphile_worker.jobs j
     where j.key = jkey
       and ((j.locked_at is null and j.attempts < j.max_attempts) or j.locked_at > now() - interval '5 minutes')
  ) then
    return;
  end if;
  select v.model into model_name from ai.vectorizers v where v.id = p_id;
  perform graphile_worker.add_job('vectorize:' || model_name, json_build_object('vectorizer_id', p_id),
                                  job_key => jkey, job_key_mode => 'replace');
end $$;

-- The shared trigger function of vectorizers made before migration 0010 (TG_ARGV[0]: vectorizer
-- id), until the block at the end of this file moves them to their own functions. It runs as
-- the schema's owner, so it refuses to write a destination that another role owns (that role's
-- triggers on it would run as the owner) and to fire on any table but the vectorizer's source.
-- Nobody may attach it to a table (no EXECUTE for PUBLIC; see 099_security.sql).
create or replace function ai._vectorizer_trigger()
returns trigger language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  v ai.vectorizers;
  queued bigint := 0;
begin
  select * into v from ai.vectorizers where id = TG_ARGV[0]::integer;
  if not found then
    return null; -- dropped meanwhile
  end if;
  if TG_RELID <> v.source then
    raise exception 'ai._vectorizer_trigger: vectorizer % does not belong to table %', v.id, TG_RELID::regclass
      using errcode = 'insufficient_privilege';
  end if;
  if (select c.relowner from pg_class c where c.oid = v.destination) <> (select r.oid from pg_roles r where r.rolname = current_user) then
    raise exception 'ai._vectorizer_trigger: vectorizer % predates per-owner functions and its destination belongs to another role', v.id
      using errcode = 'insufficient_privilege', hint = 'Run switchyard migrate as a superuser once: it moves the vectorizer to functions that run as its owner.';
  end if;
  if TG_OP = 'INSERT' then
    execute format('insert into ai.vectorizer_queue (vectorizer_id, pk) select $1, %s from ai_vz_new n',
                   ai._vectorizer_pk_json(v.pk_columns, 'n')) using v.id;
    get diagnostics queued = row_count;
  elsif TG_OP = 'UPDATE' then
    -- Keys that went away (the key itself was updated): their destination and failed rows.
    execute format('delete from %s d using ai_vz_old o where %s and not exists (select from ai_vz_new n where %s)',
                   v.destination, ai._vectorizer_pk_match(v.pk_columns, 'd', 'o'), ai._vectorizer_pk_match(v.pk_columns, 'n', 'o'));
    execute format('delete from ai.vectorizer_failed f using ai_vz_old o where f.vectorizer_id = $1 and f.pk = %s and not exists (select from ai_vz_new n where %s)',
                   ai._vectorizer_pk_json(v.pk_columns, 'o'), ai._vectorizer_pk_match(v.pk_columns, 'n', 'o')) using v.id;
    -- Keys whose text changed, and new keys. Text forms are compared (any column type works).
    execute format('insert into ai.vectorizer_queue (vectorizer_id, pk) select $1, %s from ai_vz_new n
                     where not exists (select from ai_vz_old o where %s and o.%I::text is not distinct from n.%I::text)',
                   ai._vectorizer_pk_json(v.pk_columns, 'n'), ai._vectorizer_pk_match(v.pk_columns, 'o', 'n'),
                   v.source_column, v.source_column) using v.id;
    get diagnostics queued = row_count;
  elsif TG_OP = 'DELETE' then
    execute format('delete from %s d using ai_vz_old o where %s', v.destination, ai._vectorizer_pk_match(v.pk_columns, 'd', 'o'));
    execute format('delete from ai.vectorizer_failed f using ai_vz_old o where f.vectorizer_id = $1 and f.pk = %s',
                   ai._vectorizer_pk_json(v.pk_columns, 'o')) using v.id;
    -- Under REPEATABLE READ a batch that committed after this snapshot was taken may have
    -- written a row this statement could not see: queue the keys, a worker re-checks them.
    if current_setting('transaction_isolation') <> 'read committed' then
      execute format('insert into ai.vectorizer_queue (vectorizer_id, pk) select $1, %s from ai_vz_old o',
                     ai._vectorizer_pk_json(v.pk_columns, 'o')) using v.id;
      get diagnostics queued = row_count;
    end if;
  elsif TG_OP = 'TRUNCATE' then
    execute format('truncate %s', v.destination);
    delete from ai.vectorizer_queue q where q.vectorizer_id = v.id;
    delete from ai.vectorizer_failed f where f.vectorizer_id = v.id;
  end if;
  if queued > 0 then
    perform ai._vectorizer_wake(v.id);
  end if;
  return null;
end $$;

-- A table's schema-qualified name, whatever the search_path.
create or replace function ai._qualified(p_table regclass)
returns text language sql stable strict as $$
  select format('%I.%I', n.nspname, c.relname) from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace where c.oid = p_table
$$;

-- A vectorizer's trigger function, ai_vectorizer_<id>_sync() in its source's schema, owned by the
-- role running this (its creator: ai.create_vectorizer runs as the caller), and its four
-- triggers. SECURITY DEFINER as that role, so roles that write the source need no rights on the
-- ai schema, and what it does to the destination runs as the role that owns the destination:
-- a trigger the owner puts there runs as the owner too, never as this schema's owner. (Workers
-- run a vectorizer's batches as its owner too: see vectorize-task.ts.) No EXECUTE for PUBLIC,
-- so nobody can attach it elsewhere, and it checks the table it fires on.
create or replace function ai._vectorizer_install(p_id integer)
returns void language plpgsql as $$
declare
  v ai.vectorizers;
  sync text;
  pkj_n text;
  pkj_o text;
  op text;
begin
  select * into v from ai.vectorizers x where x.id = p_id;
  sync := format('%I.%I', v.fn_schema, format('ai_vectorizer_%s_sync', v.id));
  pkj_n := ai._vectorizer_pk_json(v.pk_columns, 'n');
  pkj_o := ai._vectorizer_pk_json(v.pk_columns, 'o');
  execute format($f$
    create or replace function %1$s() returns trigger language plpgsql security definer
    set search_path = pg_catalog, pg_temp as $body$
    declare
      queued bigint := 0;
    begin
      if TG_RELID <> %2$s::oid then
        raise exception 'vectorizer %3$s: its trigger function only runs on its source table' using errcode = 'insufficient_privilege';
      end if;
      if TG_OP = 'INSERT' then
        insert into ai.vectorizer_queue (vectorizer_id, pk) select %3$s, %4$s from ai_vz_new n;
        get diagnostics queued = row_count;
      elsif TG_OP = 'UPDATE' then
        -- Keys that went away (the key itself was updated): their destination and failed rows.
        delete from %6$s d using ai_vz_old o where %7$s and not exists (select from ai_vz_new n where %8$s);
        delete from ai.vectorizer_failed f using ai_vz_old o
         where f.vectorizer_id = %3$s and f.pk = %5$s and not exists (select from ai_vz_new n where %8$s);
        -- Keys whose text changed (with a formatting template, any column: it may name them),
        -- and new keys. Text forms are compared (any column type works).
        insert into ai.vectorizer_queue (vectorizer_id, pk) select %3$s, %4$s from ai_vz_new n
         where not exists (select from ai_vz_old o where %9$s and %10$s);
        get diagnostics queued = row_count;
      elsif TG_OP = 'DELETE' then
        delete from %6$s d using ai_vz_old o where %7$s;
        delete from ai.vectorizer_failed f using ai_vz_old o where f.vectorizer_id = %3$s and f.pk = %5$s;
        -- Under REPEATABLE READ a batch that committed after this snapshot was taken may have
        -- written a row this statement could not see: queue the keys, a worker re-checks them.
        if current_setting('transaction_isolation') <> 'read committed' then
          insert into ai.vectorizer_queue (vectorizer_id, pk) select %3$s, %5$s from ai_vz_old o;
          get diagnostics queued = row_count;
        end if;
      elsif TG_OP = 'TRUNCATE' then
        truncate %6$s;
        delete from ai.vectorizer_queue q where q.vectorizer_id = %3$s;
        delete from ai.vectorizer_failed f where f.vectorizer_id = %3$s;
      end if;
      if queued > 0 then
        perform ai._vectorizer_wake(%3$s);
      end if;
      return null;
    end $body$
    $f$,
    sync, v.source::oid, v.id, pkj_n, pkj_o, ai._qualified(v.destination),
    ai._vectorizer_pk_match(v.pk_columns, 'd', 'o'), ai._vectorizer_pk_match(v.pk_columns, 'n', 'o'),
    ai._vectorizer_pk_match(v.pk_columns, 'o', 'n'),
    case when v.formatting is null then format('o.%1$I::text is not distinct from n.%1$I::text', v.source_column)
         else 'o::text is not distinct from n::text' end);
  execute format('revoke all on function %s() from public', sync);

  -- Transition tables need one trigger per event.
  foreach op in array array['insert', 'update', 'delete', 'truncate'] loop
    execute format('drop trigger if exists %I on %s', format('ai_vectorizer_%s_%s', v.id, op), v.source);
  end loop;
  foreach op in array array['insert', 'update', 'delete'] loop
    execute format('create trigger %I after %s on %s referencing %s table as %I for each statement execute function %s()',
                   format('ai_vectorizer_%s_%s', v.id, op), op, v.source,
                   case op when 'insert' then 'new' when 'update' then 'old table as ai_vz_old new' else 'old' end,
                   case op when 'delete' then 'ai_vz_old' else 'ai_vz_new' end, sync);
  end loop;
  execute format('create trigger %I after truncate on %s for each statement execute function %s()',
                 format('ai_vectorizer_%s_truncate', v.id), v.source, sync);
end $$;

-- Chunking configurations for ai.create_vectorizer(chunking => ...), as pgai names them. The
-- worker splits (src/worker/vectorize/chunking.ts): sizes count characters for the recursive
-- splitter and the model's tokens for the token splitter; overlap is the most two neighbouring
-- chunks share.
--   ai.chunking_none()                       the whole text, one chunk
--   ai.chunking_recursive(size, overlap, separators)  split at the first separator the text has
--                                            (default: paragraph, line, space, then anywhere),
--                                            pieces still too long at the next, then merged
--                                            into chunks of at most size characters
--   ai.chunking_tokens(size, overlap)        windows of size tokens of the model's tokenizer
-- Checks a chunking configuration (null stays null: one vector per row).
create or replace function ai._vectorizer_chunking(p jsonb)
returns jsonb language plpgsql immutable as $$
declare
  impl text := p->>'implementation';
  size integer;
  overlap integer;
begin
  if p is null then
    return null;
  end if;
  if impl = 'none' then
    return '{"implementation": "none"}'::jsonb;
  elsif impl not in ('recursive', 'tokens') or impl is null then
    raise exception 'chunking: implementation must be none, recursive or tokens, not %', coalesce(impl, 'missing')
      using errcode = 'invalid_parameter_value', hint = 'Use ai.chunking_recursive(...) or ai.chunking_tokens(...).';
  end if;
  size := (p->>'chunk_size')::integer;
  overlap := coalesce((p->>'chunk_overlap')::integer, 0);
  if size is null or size < 1 or size > 1000000 then
    raise exception 'chunking: chunk_size must be between 1 and 1000000' using errcode = 'invalid_parameter_value';
  end if;
  if overlap < 0 or overlap >= size then
    raise exception 'chunking: chunk_overlap must be at least 0 and less than chunk_size' using errcode = 'invalid_parameter_value';
  end if;
  if impl = 'recursive' then
    if jsonb_typeof(p->'separators') <> 'array' or jsonb_array_length(p->'separators') = 0
       or exists (select from jsonb_array_elements(p->'separators') e where jsonb_typeof(e) <> 'string') then
      raise exception 'chunking: separators must be a non-empty array of texts' using errcode = 'invalid_parameter_value';
    end if;
    return jsonb_build_object('implementation', impl, 'chunk_size', size, 'chunk_overlap', overlap, 'separators', p->'separators');
  end if;
  return jsonb_build_object('implementation', impl, 'chunk_size', size, 'chunk_overlap', overlap);
end $$;

create or replace function ai.chunking_none()
returns jsonb language sql immutable as $$ select '{"implementation": "none"}'::jsonb $$;

create or replace function ai.chunking_recursive(chunk_size integer, chunk_overlap integer default 0, separators text[] default null)
returns jsonb language sql immutable as $$
  select ai._vectorizer_chunking(pg_catalog.jsonb_build_object('implementation', 'recursive', 'chunk_size', chunk_size,
           'chunk_overlap', chunk_overlap, 'separators', coalesce(separators, array[E'\n\n', E'\n', ' ', ''])))
$$;

create or replace function ai.chunking_tokens(chunk_size integer, chunk_overlap integer default 0)
returns jsonb language sql immutable as $$
  select ai._vectorizer_chunking(pg_catalog.jsonb_build_object('implementation', 'tokens', 'chunk_size', chunk_size, 'chunk_overlap', chunk_overlap))
$$;


-- Creates a vectorizer; returns its id.
--   source       a table with a primary key (plain or partitioned)
--   column_name  the column to embed (any type; its text form is embedded; NULL → no row)
--   model        an embedding model's name or alias
--   destination  the table to create in the source's schema (default <source>_embeddings):
--                the source's key columns, embedding vector(d), model, updated_at; HNSW index
--                (vector_cosine_ops): over a source with rows, built when the backfill is done
--                (index_pending until then; ai._vectorizer_build_index)
--   batch_size   rows per batch (one transaction, one model call)
--   max_attempts failed rows are retried after retry_delay, 2×, 4×, ... (at most an hour
--                apart), then parked in ai.vectorizer_failed
--   dimensions   the model's dimension, needed to create vector(d): taken from ai.models,
--                which a worker fills in when it first loads the model. For a model no worker
--                has loaded yet, start one once (switchyard worker --models NAME) or pass it.
--   chunking     null: one vector per row (the text must fit the model's context, or the row
--                fails). Otherwise ai.chunking_none(), ai.chunking_recursive(...) or
--                ai.chunking_tokens(...): the worker splits the text, and the destination holds
--                the key columns, chunk_seq, chunk, embedding, model, updated_at (HNSW index),
--                with a view <destination>_view of the source's columns and chunk_seq, chunk,
--                embedding (security_invoker: it shows what the reader may see of the source).
--   formatting   a template over $chunk and the source's columns ('$title: $chunk'): what is
--                embedded for each chunk (the chunk column keeps the chunk). Needs chunking.
-- Existing rows are queued at once (backfill).
create or replace function ai.create_vectorizer(
  source regclass,
  column_name name,
  model text,
  destination name default null,
  batch_size integer default 64,
  max_attempts integer default 3,
  dimensions integer default null,
  retry_delay interval default '10 seconds',
  chunking jsonb default null,
  formatting text default null
) returns integer language plpgsql as $$
declare
  model_name text := ai._embedding_model(create_vectorizer.model, 'ai.create_vectorizer');
  known_dims integer;
  dims integer;
  src_schema name;
  src_name name;
  pk_cols name[];
  pk_types regtype[];
  pk_defs text;
  vector_schema name;
  dest_name name;
  dest regclass;
  new_id integer;
  queued bigint;
  op text;
  chunks jsonb := ai._vectorizer_chunking(create_vectorizer.chunking);
  reserved name[] := case when create_vectorizer.chunking is null then array['embedding', 'model', 'updated_at']::name[]
                          else array['chunk_seq', 'chunk', 'embedding', 'model', 'updated_at']::name[] end;
  view_name name;
  bad text;
  index_later boolean;
begin
  select n.nspname, c.relname into src_schema, src_name
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
   where c.oid = create_vectorizer.source and c.relkind in ('r', 'p');
  if not found then
    raise exception 'ai.create_vectorizer: % is not a table', create_vectorizer.source using errcode = 'wrong_object_type';
  end if;
  select array_agg(a.attname order by k.ord), array_agg(a.atttypid::regtype order by k.ord),
         string_agg(format('%I %s', a.attname, format_type(a.atttypid, a.atttypmod)), ', ' order by k.ord)
    into pk_cols, pk_types, pk_defs
    from pg_index i
    cross join unnest(i.indkey) with ordinality k(attnum, ord)
    join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
   where i.indrelid = create_vectorizer.source and i.indisprimary;
  if pk_cols is null then
    raise exception 'ai.create_vectorizer: table % has no primary key', create_vectorizer.source
      using errcode = 'invalid_table_definition', hint = 'A vectorizer identifies rows by their primary key: add one.';
  end if;
  if pk_cols && reserved then
    raise exception 'ai.create_vectorizer: a primary key column of % is named %, which the destination table uses',
      create_vectorizer.source, array_to_string(reserved, ', ') using errcode = 'duplicate_column';
  end if;
  if formatting is not null then
    if chunks is null then
      raise exception 'ai.create_vectorizer: formatting needs chunking' using errcode = 'invalid_parameter_value',
        hint = 'Pass chunking => ai.chunking_none() to embed each row whole, formatted.';
    end if;
    select string_agg(m[1], ', ') into bad
      from regexp_matches(formatting, '\$([A-Za-z_][A-Za-z0-9_]*)', 'g') m
     where m[1] <> 'chunk' and not exists (select from pg_attribute a where a.attrelid = create_vectorizer.source
                                             and a.attname = m[1] and a.attnum > 0 and not a.attisdropped);
    if bad is not null then
      raise exception 'ai.create_vectorizer: formatting names %, which is neither $chunk nor a column of %', bad, create_vectorizer.source
        using errcode = 'undefined_column';
    end if;
  end if;
  if not exists (select from pg_attribute a where a.attrelid = create_vectorizer.source and a.attname = column_name
                  and a.attnum > 0 and not a.attisdropped) then
    raise exception 'ai.create_vectorizer: table % has no column "%"', create_vectorizer.source, column_name
      using errcode = 'undefined_column';
  end if;
  if batch_size is null or batch_size not between 1 and 2048 then
    raise exception 'ai.create_vectorizer: batch_size must be between 1 and 2048' using errcode = 'invalid_parameter_value';
  end if;
  if max_attempts is null or max_attempts < 1 then
    raise exception 'ai.create_vectorizer: max_attempts must be at least 1' using errcode = 'invalid_parameter_value';
  end if;

  select m.dimensions into known_dims from ai.models m where m.name = model_name;
  dims := coalesce(create_vectorizer.dimensions, known_dims);
  if dims is null then
    raise exception 'ai.create_vectorizer: the dimension of model "%" is not known yet', model_name
      using errcode = 'object_not_in_prerequisite_state',
            hint = format('A worker records it when it loads the model: start one once (switchyard worker --models %s), or pass dimensions => N.', model_name);
  elsif dims < 1 or dims <> coalesce(known_dims, dims) then
    raise exception 'ai.create_vectorizer: model "%" has % dimensions, not %', model_name, known_dims, create_vectorizer.dimensions
      using errcode = 'invalid_parameter_value';
  end if;

  dest_name := coalesce(create_vectorizer.destination, left(src_name, 52) || '_embeddings');
  if to_regclass(format('%I.%I', src_schema, dest_name)) is not null then
    raise exception 'ai.create_vectorizer: table %.% already exists', quote_ident(src_schema), quote_ident(dest_name)
      using errcode = 'duplicate_table', hint = 'Pass another destination => ''name'', or drop that table.';
  end if;
  select n.nspname into vector_schema from pg_extension e join pg_namespace n on n.oid = e.extnamespace where e.extname = 'vector';
  if chunks is null then
    execute format('create table %I.%I (%s, embedding %I.vector(%s) not null, model text not null, '
                   'updated_at timestamptz not null default now(), primary key (%s))',
                   src_schema, dest_name, pk_defs, vector_schema, dims,
                   (select string_agg(quote_ident(c), ', ') from unnest(pk_cols) c));
  else
    execute format('create table %I.%I (%s, chunk_seq integer not null, chunk text not null, embedding %I.vector(%s) not null, '
                   'model text not null, updated_at timestamptz not null default now(), primary key (%s, chunk_seq))',
                   src_schema, dest_name, pk_defs, vector_schema, dims,
                   (select string_agg(quote_ident(c), ', ') from unnest(pk_cols) c));
  end if;
  dest := format('%I.%I', src_schema, dest_name)::regclass;
  -- The HNSW index: at once over an empty source; over one with rows, once the backfill is done
  -- (ai._vectorizer_build_index): built over all the rows at once it costs a fraction of
  -- inserting them into it one by one. ai.search scans every chunk until then.
  execute format('select exists (select from %s)', create_vectorizer.source) into index_later;
  if not index_later then
    execute format('create index on %s using hnsw (embedding %I.vector_cosine_ops)', dest, vector_schema);
  end if;
  if chunks is not null then
    -- The view: every source column, then the chunk's. security_invoker: a reader sees the
    -- source rows its own rights (and the source's row-level security) let it see.
    select string_agg(quote_ident(a.attname), ', ') into bad
      from pg_attribute a where a.attrelid = create_vectorizer.source and a.attnum > 0 and not a.attisdropped
       and a.attname in ('chunk_seq', 'chunk', 'embedding');
    if bad is not null then
      raise exception 'ai.create_vectorizer: table % has a column named %, which the chunks view adds', create_vectorizer.source, bad
        using errcode = 'duplicate_column';
    end if;
    view_name := left(dest_name, 58) || '_view';
    execute format('create view %I.%I with (security_invoker = true) as select s.*, d.chunk_seq, d.chunk, d.embedding from %s d join %s s on %s',
                   src_schema, view_name, dest, create_vectorizer.source, ai._vectorizer_pk_match(pk_cols, 'd', 's'));
  end if;

  insert into ai.vectorizers (source, source_column, destination, pk_columns, pk_types, model, dimensions,
                              batch_size, max_attempts, retry_delay, fn_schema, chunking, formatting, view, index_pending)
  values (create_vectorizer.source, column_name, dest, pk_cols, pk_types, model_name, dims,
          create_vectorizer.batch_size, create_vectorizer.max_attempts, create_vectorizer.retry_delay, src_schema,
          chunks, create_vectorizer.formatting, case when view_name is not null then format('%I.%I', src_schema, view_name)::regclass end,
          index_later)
  returning id into new_id;

  perform ai._vectorizer_install(new_id);

  -- Backfill.
  execute format('insert into ai.vectorizer_queue (vectorizer_id, pk) select $1, %s from %s n',
                 ai._vectorizer_pk_json(pk_cols, 'n'), create_vectorizer.source) using new_id;
  get diagnostics queued = row_count;
  if queued > 0 then
    perform ai._vectorizer_wake(new_id);
  end if;
  return new_id;
end $$;

-- Removes the jobs of a vectorizer that is gone (run as the schema's owner: the caller of
-- ai.drop_vectorizer has no rights on graphile_worker). Refuses while it exists: no role can
-- cancel the jobs of another role's vectorizer.
create or replace function ai._vectorizer_forget_jobs(p_id integer)
returns void language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
  if exists (select from ai.vectorizers x where x.id = p_id) then
    raise exception 'vectorizer % still exists', p_id using errcode = 'object_in_use';
  end if;
  perform graphile_worker.remove_job(ai._vectorizer_job_key(p_id));
  perform graphile_worker.remove_job(ai._vectorizer_job_key(p_id) || ':retry');
end $$;

-- Drops a vectorizer: its triggers and trigger function, queue, failed items, jobs, and (by
-- default) its destination. Runs as the caller, who only sees (and may drop) vectorizers of
-- roles it belongs to.
create or replace function ai.drop_vectorizer(id integer, drop_destination boolean default true)
returns void language plpgsql as $$
declare
  v ai.vectorizers;
  op text;
begin
  -- Wait for a batch in flight; later batches find the vectorizer gone.
  perform pg_advisory_xact_lock(7306121, drop_vectorizer.id);
  select * into v from ai.vectorizers x where x.id = drop_vectorizer.id;
  if not found then
    raise exception 'ai.drop_vectorizer: no vectorizer %', drop_vectorizer.id using errcode = 'undefined_object';
  end if;
  if exists (select from pg_class c where c.oid = v.source) then
    foreach op in array array['insert', 'update', 'delete', 'truncate'] loop
      execute format('drop trigger if exists %I on %s', format('ai_vectorizer_%s_%s', v.id, op), v.source);
    end loop;
  end if;
  if v.fn_schema is not null then
    execute format('drop function if exists %I.%I()', v.fn_schema, format('ai_vectorizer_%s_sync', v.id));
  end if;
  delete from ai.vectorizers x where x.id = v.id;
  perform ai._vectorizer_forget_jobs(v.id);
  if v.view is not null and exists (select from pg_class c where c.oid = v.view) then
    execute format('drop view %s', v.view);
  end if;
  if drop_destination and exists (select from pg_class c where c.oid = v.destination) then
    execute format('drop table %s', v.destination);
  end if;
end $$;

-- Worker side, step 1 of a batch (in the batch's transaction): 'ok' (go on) or 'gone' (dropped,
-- or its source or destination was). Batches share the advisory lock; ai.drop_vectorizer takes
-- it exclusively, so it waits for the batches in flight and later ones find the vectorizer gone.
create or replace function ai._vectorizer_begin(p_id integer)
returns text language plpgsql as $$
declare
  v ai.vectorizers;
begin
  perform pg_advisory_xact_lock_shared(7306121, p_id);
  select * into v from ai.vectorizers where id = p_id;
  if not found or not exists (select from pg_class c where c.oid = v.source)
     or not exists (select from pg_class c where c.oid = v.destination) then
    return 'gone';
  end if;
  execute format('lock table %s in row share mode', v.source);
  return 'ok';
end $$;

-- Step 2: claims up to batch_size due items with FOR UPDATE SKIP LOCKED, and every other queued
-- item of the same keys, then reads the keys' current text, locking those source rows against
-- deletion until commit. One row per key; `input` is null when the row is gone or its text is
-- null. Batches run concurrently (several jobs, or lanes of one job), so a key is only taken
-- when all its queued items could be locked: otherwise another batch holds one of them (the
-- row changed again meanwhile) and two batches could write the key's old and new vector in the
-- wrong order. Such a key stays queued for a later batch. `source`: the whole row as jsonb when
-- the vectorizer has a formatting template (which may name any column), else null.
create or replace function ai._vectorizer_claim_rows(p_id integer)
returns table (pk jsonb, ids bigint[], attempts integer, input text, source jsonb)
language plpgsql as $$
declare
  v ai.vectorizers;
  keys jsonb[];
begin
  select * into v from ai.vectorizers x where x.id = p_id;
  select array_agg(distinct d.pk) into keys
    from (select q.pk from ai.vectorizer_queue q
           where q.vectorizer_id = p_id and q.next_attempt_at <= now()
           order by q.next_attempt_at, q.id
           limit v.batch_size
           for update skip locked) d;
  if keys is null then
    return;
  end if;
  return query execute format($q$
    with locked as (
      select q.pk, array_agg(q.id order by q.id) as ids, min(q.attempts)::integer as attempts
        from (select q.id, q.pk, q.attempts from ai.vectorizer_queue q
               where q.vectorizer_id = $1 and q.pk = any($2)
               for update skip locked) q
       group by q.pk),
    queued as (
      select q.pk, count(*) as n from ai.vectorizer_queue q
       where q.vectorizer_id = $1 and q.pk = any($2)
       group by q.pk),
    items as (
      select l.* from locked l join queued on queued.pk = l.pk and queued.n = cardinality(l.ids)),
    src as (
      select %1$s, s.%2$I::text as input, %6$s as source
        from %3$s s
       where (%1$s) in (select %4$s from items k)
       for key share of s)
    select i.pk, i.ids, i.attempts, src.input, src.source
      from items i left join src on %5$s$q$,
    (select string_agg(format('s.%I', c), ', ') from unnest(v.pk_columns) c),
    v.source_column,
    v.source,
    ai._vectorizer_pk_values(v.pk_columns, v.pk_types, 'k.pk'),
    ai._vectorizer_pk_match_json(v.pk_columns, v.pk_types, 'src', 'i.pk'),
    case when v.formatting is null then 'null::jsonb' else 'pg_catalog.to_jsonb(s)' end)
  using p_id, keys;
end $$;

-- Step 2 of a one-vector-per-row batch (as before chunking came): ai._vectorizer_claim_rows
-- without the row.
create or replace function ai._vectorizer_claim(p_id integer)
returns table (pk jsonb, ids bigint[], attempts integer, input text)
language sql as $$
  select c.pk, c.ids, c.attempts, c.input from ai._vectorizer_claim_rows(p_id) c
$$;

-- Step 3: writes a batch's outcome. p_results: one object per claimed key,
--   {"pk", "ids", "attempts", "embedding": "[…]"}  → upserted into the destination
--   {"pk", "ids", "attempts", "chunks": [{"seq", "chunk", "embedding"}, …]}
--                                                  → (chunking) the key's chunks, replacing its old ones
--   {"pk", "ids", "attempts"}                      → row gone or text null: destination row deleted
--   {"pk", "ids", "attempts", "error": {…}}        → retried later, or parked after max_attempts
create or replace function ai._vectorizer_finish(p_id integer, p_results jsonb)
returns void language plpgsql as $$
declare
  v ai.vectorizers;
  dest_keys text := null;
begin
  select * into v from ai.vectorizers x where x.id = p_id;
  select string_agg(quote_ident(c), ', ') into dest_keys from unnest(v.pk_columns) c;
  if v.chunking is not null then
    -- A key's chunks are replaced as a whole (its old ones may be more, or other text): every
    -- key done in this batch loses its chunks, then gets its new ones, in this transaction.
    execute format($q$
      delete from %1$s d using jsonb_to_recordset($1) as r(pk jsonb, error jsonb)
       where r.error is null and %2$s$q$,
      v.destination, ai._vectorizer_pk_match_json(v.pk_columns, v.pk_types, 'd', 'r.pk'))
    using p_results;
    execute format($q$
      insert into %1$s (%2$s, chunk_seq, chunk, embedding, model, updated_at)
      select %3$s, c.seq, c.chunk, c.embedding::%4$s, $2, now()
        from jsonb_to_recordset($1) as r(pk jsonb, chunks jsonb, error jsonb)
        cross join jsonb_to_recordset(r.chunks) as c(seq integer, chunk text, embedding text)
       where r.error is null and r.chunks is not null$q$,
      v.destination, dest_keys, ai._vectorizer_pk_values(v.pk_columns, v.pk_types, 'r.pk'),
      (select format_type(a.atttypid, a.atttypmod) from pg_attribute a where a.attrelid = v.destination and a.attname = 'embedding'))
    using p_results, v.model;
  else
  execute format($q$
    insert into %1$s as d (%2$s, embedding, model, updated_at)
    select %3$s, r.embedding::%4$s, $2, now()
      from jsonb_to_recordset($1) as r(pk jsonb, embedding text)
     where r.embedding is not null
    on conflict (%2$s) do update
      set embedding = excluded.embedding, model = excluded.model, updated_at = excluded.updated_at$q$,
    v.destination, dest_keys, ai._vectorizer_pk_values(v.pk_columns, v.pk_types, 'r.pk'),
    (select format_type(a.atttypid, a.atttypmod) from pg_attribute a where a.attrelid = v.destination and a.attname = 'embedding'))
  using p_results, v.model;
  execute format($q$
    delete from %1$s d using jsonb_to_recordset($1) as r(pk jsonb, embedding text, error jsonb)
     where r.embedding is null and r.error is null and %2$s$q$,
    v.destination, ai._vectorizer_pk_match_json(v.pk_columns, v.pk_types, 'd', 'r.pk'))
  using p_results;
  end if;
  -- Done (embedded or removed): the items go, and so does an earlier failure of the key.
  delete from ai.vectorizer_failed f
   using jsonb_to_recordset(p_results) as r(pk jsonb, error jsonb)
   where f.vectorizer_id = p_id and f.pk = r.pk and r.error is null;
  -- Failed max_attempts times: parked.
  insert into ai.vectorizer_failed as f (vectorizer_id, pk, attempts, error)
  select p_id, r.pk, r.attempts + 1, r.error
    from jsonb_to_recordset(p_results) as r(pk jsonb, attempts integer, error jsonb)
   where r.error is not null and r.attempts + 1 >= v.max_attempts
  on conflict (vectorizer_id, pk) do update
    set attempts = excluded.attempts, error = excluded.error, failed_at = now();
  delete from ai.vectorizer_queue q
   using jsonb_to_recordset(p_results) as r(ids bigint[], attempts integer, error jsonb)
   where q.id = any(r.ids)
     and (r.error is null or r.attempts + 1 >= v.max_attempts or q.id <> r.ids[1]);
  -- Failed, attempts left: the key's first item stays, due again after a backoff.
  update ai.vectorizer_queue q
     set attempts = r.attempts + 1,
         last_error = r.error,
         last_attempt_at = now(),
         next_attempt_at = now() + least(v.retry_delay * power(2, r.attempts), interval '1 hour')
    from jsonb_to_recordset(p_results) as r(ids bigint[], attempts integer, error jsonb)
   where q.id = r.ids[1] and r.error is not null and r.attempts + 1 < v.max_attempts;
end $$;

-- A deferred HNSW index (see ai.create_vectorizer): built by the worker at the end of a job,
-- in a transaction of its own as the vectorizer's owner (who owns the destination), once every
-- item the backfill queued has been tried (items waiting for a retry do not hold it back: their
-- rows join the index as they are written). Returns whether it built the index. Batches wait
-- for the build (its SHARE lock on the destination); readers do not.
create or replace function ai._vectorizer_build_index(p_id integer)
returns boolean language plpgsql as $$
declare
  v ai.vectorizers;
  vector_schema name;
begin
  perform pg_advisory_xact_lock_shared(7306121, p_id);
  -- One builder at a time; the second finds the flag cleared.
  perform pg_advisory_xact_lock(7306122, p_id);
  select * into v from ai.vectorizers x where x.id = p_id;
  if not found or not v.index_pending or not exists (select from pg_class c where c.oid = v.destination) then
    return false;
  end if;
  if exists (select from ai.vectorizer_queue q
              where q.vectorizer_id = p_id and q.attempts = 0 and q.queued_at <= v.created_at) then
    return false;
  end if;
  if not ai._vectorizer_has_index(v.destination) then
    select n.nspname into vector_schema from pg_extension e join pg_namespace n on n.oid = e.extnamespace where e.extname = 'vector';
    begin
      execute format('create index on %s using hnsw (embedding %I.vector_cosine_ops)', v.destination, vector_schema);
    exception when out_of_memory or disk_full then
      -- A parallel build shares its graph through dynamic shared memory, which a container's
      -- small /dev/shm (64 MB by default) may not hold: then serially, in this process's memory.
      perform set_config('max_parallel_maintenance_workers', '0', true);
      execute format('create index on %s using hnsw (embedding %I.vector_cosine_ops)', v.destination, vector_schema);
    end;
  end if;
  perform ai._vectorizer_index_built(p_id);
  return true;
end $$;

-- Whether a table has an HNSW index on its embedding column.
create or replace function ai._vectorizer_has_index(p_table regclass)
returns boolean language sql stable as $$
  select exists (select from pg_index i join pg_class c on c.oid = i.indexrelid join pg_am a on a.oid = c.relam
                  where i.indrelid = p_table and a.amname = 'hnsw')
$$;

-- Clears index_pending once the destination has its index (the vectorizer's owner may not
-- update ai.vectorizers; a flag of a destination without the index stays).
create or replace function ai._vectorizer_index_built(p_id integer)
returns void language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
  update ai.vectorizers x set index_pending = false
   where x.id = p_id and x.index_pending and ai._vectorizer_has_index(x.destination);
end $$;

-- When a job finds nothing due. p_continue: the job used its time slice, hand over to a new
-- job. Returns 'more' (items became due: go on), 'deferred' (a writer is still open: a
-- follow-up job is scheduled), 'continued', or 'idle'. Schedules the retry job for
-- backed-off items. p_own_key: the job key the calling job was started with.
create or replace function ai._vectorizer_settle(p_id integer, p_continue boolean, p_own_key text)
returns text language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  v ai.vectorizers;
  jkey text := ai._vectorizer_job_key(p_id);
  next_due timestamptz;
begin
  select * into v from ai.vectorizers x where x.id = p_id;
  if not found then
    return 'idle';
  end if;
  if p_continue then
    perform graphile_worker.add_job('vectorize:' || v.model, json_build_object('vectorizer_id', p_id),
                                    job_key => jkey, job_key_mode => 'preserve_run_at');
    return 'continued';
  end if;
  if not pg_try_advisory_xact_lock(7306120, p_id) then
    perform graphile_worker.add_job('vectorize:' || v.model, json_build_object('vectorizer_id', p_id),
                                    job_key => jkey, job_key_mode => 'preserve_run_at',
                                    run_at => now() + interval '500 milliseconds');
    return 'deferred';
  end if;
  -- Due items that no batch holds (a held item is done, re-scheduled or, on rollback, retried
  -- by the job that holds it: graphile-worker retries a job that threw).
  if exists (select from ai.vectorizer_queue q where q.vectorizer_id = p_id and q.next_attempt_at <= now()
              limit 1 for update skip locked) then
    return 'more';
  end if;
  select min(q.next_attempt_at) into next_due from ai.vectorizer_queue q where q.vectorizer_id = p_id;
  if next_due is not null and not exists (
    select from graphile_worker.jobs j
     where j.key = jkey || ':retry' and j.locked_at is null and j.run_at <= next_due) then
    perform graphile_worker.add_job('vectorize:' || v.model, json_build_object('vectorizer_id', p_id),
                                    job_key => jkey || ':retry', run_at => next_due);
  end if;
  -- Writers that come after this commit must not count on this job.
  if p_own_key = jkey then
    perform graphile_worker.remove_job(jkey);
  end if;
  return 'idle';
end $$;

-- What a vectorizer's destination holds, read with the caller's rights: done, the source rows
-- that have their vector(s); chunks, the rows of the destination. Null for a reader that may not
-- read the destination. A count over the destination: it costs a scan of it.
create or replace function ai._vectorizer_counts(p_id integer, out done bigint, out chunks bigint)
language plpgsql stable as $$
declare
  v ai.vectorizers;
begin
  select * into v from ai.vectorizers x where x.id = p_id;
  if not found or not exists (select from pg_class c where c.oid = v.destination)
     or not has_table_privilege(v.destination, 'select') then
    return;
  end if;
  if v.chunking is null then
    execute format('select count(*), count(*) from %s', v.destination) into done, chunks;
  else
    execute format('select count(*), coalesce(sum(n), 0)::bigint from (select count(*) as n from %s group by %s) g',
                   v.destination, (select string_agg(quote_ident(c), ', ') from unnest(v.pk_columns) c)) into done, chunks;
  end if;
exception when insufficient_privilege then
  -- No usage on the destination's schema, say (an admin reading another tenant's status).
  done := null;
  chunks := null;
end $$;

-- One row per vectorizer. pending: queued items (a row changed twice before a worker came by
-- counts twice), of which retrying: failed at least once and waiting for their next attempt;
-- failed: parked items; last_error: the newest error message among both; done: source rows with
-- their vector(s), chunks: destination rows (see ai._vectorizer_counts); chunking and view (null
-- for one vector per row); index_pending: the destination's HNSW index waits for the backfill
-- to be done (ai.search scans every chunk until then).
-- Read with the caller's rights (security_invoker), so the vectorizer tables' row-level
-- security decides what each role sees: its own vectorizers, or all of them for the owner,
-- service roles and admins.
create or replace view ai.vectorizer_status with (security_invoker = true) as
select v.id,
       v.source,
       v.source_column,
       v.destination,
       v.model,
       v.dimensions,
       coalesce(q.pending, 0) as pending,
       coalesce(q.retrying, 0) as retrying,
       coalesce(f.failed, 0) as failed,
       e.error->>'message' as last_error,
       e.at as last_error_at,
       q.oldest as oldest_pending_at,
       v.chunking,
       v.view,
       n.done,
       n.chunks,
       v.index_pending
  from ai.vectorizers v
  left join lateral ai._vectorizer_counts(v.id) n on true
  left join lateral (
    select count(*) as pending, count(*) filter (where x.attempts > 0) as retrying, min(x.queued_at) as oldest
      from ai.vectorizer_queue x where x.vectorizer_id = v.id) q on true
  left join lateral (
    select count(*) as failed from ai.vectorizer_failed x where x.vectorizer_id = v.id) f on true
  left join lateral (
    select y.error, y.at from (
      select x.error, x.failed_at as at from ai.vectorizer_failed x where x.vectorizer_id = v.id
      union all
      select x.last_error, x.last_attempt_at from ai.vectorizer_queue x
       where x.vectorizer_id = v.id and x.last_error is not null) y
     order by y.at desc limit 1) e on true;

-- Vectorizers made before migration 0010 move to their own trigger functions, owned by their
-- destination's owner (only a superuser can give a function to another role; otherwise a
-- vectorizer whose destination belongs to the migrating role moves, and others wait, their
-- shared trigger refusing to write for them, until a superuser migrates).
do $$
declare
  v record;
  is_super boolean := (select rolsuper from pg_roles where rolname = current_user);
begin
  for v in
    select x.id, r.rolname as dest_owner, n.nspname as src_schema
      from ai.vectorizers x
      join pg_class d on d.oid = x.destination
      join pg_roles r on r.oid = d.relowner
      join pg_class s on s.oid = x.source
      join pg_namespace n on n.oid = s.relnamespace
     where x.fn_schema is null
  loop
    if not is_super and v.dest_owner <> current_user then
      raise notice 'vectorizer % keeps its shared trigger until a superuser runs switchyard migrate', v.id;
      continue;
    end if;
    update ai.vectorizers x set fn_schema = v.src_schema, owner = v.dest_owner where x.id = v.id;
    perform ai._vectorizer_install(v.id);
    if v.dest_owner <> current_user then
      execute format('alter function %I.%I() owner to %I', v.src_schema, format('ai_vectorizer_%s_sync', v.id), v.dest_owner);
    end if;
  end loop;
end $$;

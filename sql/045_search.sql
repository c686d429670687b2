-- Idempotent: re-applied by every `switchyard migrate`.
--
-- ai.search(vectorizer, query, k, filter): the k source rows nearest to a query, each with its
-- best chunk, in one call (issue 21):
--
--   select s.source_pk->>'id' as id, s.chunk, s.distance, d.title
--     from ai.search(1, 'how do I rotate the keys?', 5, filter => '{"lang": "en"}') s
--     join docs d on d.id = (s.source_pk->>'id')::bigint;
--
-- `filter` (jsonb, default none) keeps only source rows that contain it, as `to_jsonb(row) @>
-- filter` does: equality on any source columns, e.g. {"lang": "en", "tenant_id": 7}. It is
-- applied where chunks meet their source rows, so a filter that few rows pass widens the
-- candidate search below like any other shortfall, and k rows still come back when k exist.
--
-- The query is embedded by ai.embed (through the embedding cache, by the vectorizer's model).
-- It runs with the caller's rights: the vectorizer must be one the caller may see (its own, or
-- any for admins: row-level security on ai.vectorizers), and the chunks are joined to the
-- source rows, so the caller's rights on the source and its row-level security decide which
-- rows come back, and a row deleted since its chunks were written never does.
--
-- How: the nearest L chunks by the HNSW index (cosine distance), their best chunk per source
-- row, joined to the source. When that yields fewer than k rows (documents with many chunks
-- crowd the candidates, or the caller sees few of the rows), L grows 4× up to the index's
-- search width (hnsw.ef_search, set to 1000 for the call), then one exact pass over every
-- chunk decides; while the index is not built yet (index_pending: a backfill in progress),
-- that exact pass alone. A one-vector-per-row vectorizer answers too: chunk_seq 0 and the row's text.
-- The three-argument signature came first: dropped, so that calls with three arguments are not
-- ambiguous between it and this one (099_security.sql re-grants the new one).
drop function if exists ai.search(integer, text, integer);
create or replace function ai.search(vectorizer integer, query text, k integer default 10, filter jsonb default null)
returns table (source_pk jsonb, chunk_seq integer, chunk text, distance float8)
language plpgsql volatile as $$
declare
  v ai.vectorizers;
  q text;
  vector_schema name;
  keys text;
  want integer := search.k;
  width integer;
  total bigint;
  sql text;
  candidates text;
  prev_ef text;
  res jsonb;
begin
  if want is null or want < 1 then
    raise exception 'ai.search: k must be at least 1' using errcode = 'invalid_parameter_value';
  end if;
  select * into v from ai.vectorizers x where x.id = search.vectorizer;
  if not found then
    raise exception 'ai.search: no vectorizer %', search.vectorizer using errcode = 'undefined_object';
  end if;
  if search.query is null then
    return;
  end if;
  if search.filter is not null and pg_catalog.jsonb_typeof(search.filter) <> 'object' then
    raise exception 'ai.search: filter must be a jsonb object of source column values, e.g. {"lang": "en"}' using errcode = 'invalid_parameter_value';
  end if;
  select n.nspname into vector_schema from pg_extension e join pg_namespace n on n.oid = e.extnamespace where e.extname = 'vector';
  q := (select ai.embed(v.model, search.query))::text;
  -- The index's search width, for this call only (a function's own SET clause would need a
  -- superuser to create it while pgvector's parameters are placeholders): set locally, put back
  -- before returning.
  prev_ef := current_setting('hnsw.ef_search', true);
  perform set_config('hnsw.ef_search', '1000', true);
  keys := (select string_agg(format('d.%I', c), ', ') from unnest(v.pk_columns) c);
  sql := format($q$
    select %1$s as source_pk, n.chunk_seq, n.chunk, n.distance
      from (select distinct on (%2$s) %2$s, d.chunk_seq, d.chunk, d.distance
              from (select d.*, %7$s, d.embedding operator(%3$I.<=>) $1::%3$I.vector as distance
                      from %4$s d %%s) d
             order by %2$s, d.distance, d.chunk_seq) n
      join %5$s s on %6$s and ($3::jsonb is null or pg_catalog.to_jsonb(s) operator(pg_catalog.@>) $3::jsonb)
     order by n.distance, n.chunk_seq
     limit $2$q$,
    ai._vectorizer_pk_json(v.pk_columns, 's'), keys, vector_schema, v.destination, v.source,
    ai._vectorizer_pk_match(v.pk_columns, 'n', 's'),
    case when v.chunking is null then format('0 as chunk_seq, null::text as chunk') else 'null as _' end);
  -- Chunk columns of a one-vector-per-row destination: it has none, so they are made up above
  -- (and its text is read from the source below).
  if v.chunking is null then
    sql := replace(sql, 'n.chunk_seq, n.chunk, n.distance', format('n.chunk_seq, s.%I::text, n.distance', v.source_column));
  end if;
  execute format('select count(*) from %s', v.destination) into total;
  width := least(greatest(want * 4, 40), 1000);
  -- Rows are gathered as jsonb, so that a pass that finds too few returns nothing yet.
  loop
    -- No index yet (built when the backfill is done, see ai.create_vectorizer): every pass
    -- would scan every chunk, so the exact pass alone.
    if v.index_pending then
      execute format('select coalesce(pg_catalog.jsonb_agg(r), ''[]'') from (%s) r', format(sql, '')) into res using q, want, search.filter;
      exit;
    end if;
    candidates := format('order by d.embedding operator(%I.<=>) $1::%I.vector limit %s', vector_schema, vector_schema, width);
    execute format('select coalesce(pg_catalog.jsonb_agg(r), ''[]'') from (%s) r', format(sql, candidates)) into res using q, want, search.filter;
    exit when jsonb_array_length(res) >= want or width >= total;
    if width >= 1000 then
      -- Exact: every chunk.
      execute format('select coalesce(pg_catalog.jsonb_agg(r), ''[]'') from (%s) r', format(sql, '')) into res using q, want, search.filter;
      exit;
    end if;
    width := least(width * 4, 1000);
  end loop;
  perform set_config('hnsw.ef_search', coalesce(prev_ef, '40'), true);
  return query select r.source_pk, r.chunk_seq, r.chunk, r.distance
                 from rows from (jsonb_to_recordset(res) as (source_pk jsonb, chunk_seq integer, chunk text, distance float8))
                      with ordinality as r(source_pk, chunk_seq, chunk, distance, o)
                order by r.o;
end $$;

-- A vectorizer created over a table that has rows builds its destination's HNSW index once the
-- backfill is done, not before (issue 21: inserting rows one by one into an HNSW index cost
-- about five times building it over the same rows at once, and as much CPU as a small model's
-- embedding of them). index_pending: the index is not built yet; ai.search scans every chunk
-- meanwhile (exact). Functions in sql/040_vectorizers.sql (ai._vectorizer_build_index) and
-- sql/045_search.sql. Vectorizers made before this migration have their index.
alter table ai.vectorizers add column index_pending boolean not null default false;

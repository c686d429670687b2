-- Retention (sql/095_retention.sql): ai.prune finds expired rows by age without reading whole
-- tables. Rows arrive roughly in time order, so block-range indexes are enough and cost almost
-- nothing to keep up.
create index request_events_created_at_idx on ai.request_events using brin (created_at);
create index requests_finished_at_idx on ai.requests using brin (finished_at);
create index embedding_cache_created_at_idx on ai.embedding_cache using brin (created_at);

-- The queue bound of a model counts interactive requests only (issue 17): batch work
-- (ai.submit_chat, ai.submit_embed, Batch API lines: priority > 0) waits behind them anyway, so
-- a batch of 50,000 lines must not make every interactive request a 429 queue_full.
-- Counting reads at most max_queue entries of this index.
create index requests_interactive_queued_idx on ai.requests (model) where status = 'queued' and priority = 0;
drop index if exists ai.requests_queued_by_model_idx;

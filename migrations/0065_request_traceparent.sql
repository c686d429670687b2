-- The W3C trace context (`traceparent`) a request was queued under (issue 18): serve writes it
-- with the row, the worker that claims the row continues the trace from it. null: no trace
-- (a request queued in SQL, or by a process with nothing to propagate).
alter table ai.requests add column traceparent text
  check (traceparent is null or traceparent ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$');

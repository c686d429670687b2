-- How a chat model marks its reasoning (issue 19): {start, end, opened_by_prompt}, e.g.
-- {"start": "<think>", "end": "</think>", "opened_by_prompt": false}. null: the model does not
-- reason; all of its output is content.
alter table ai.models add column reasoning_format jsonb
  check (reasoning_format is null or jsonb_typeof(reasoning_format) = 'object');

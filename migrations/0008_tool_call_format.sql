-- How a chat model writes tool calls (issue 9): {start, end, separator, name_key, arguments_key},
-- e.g. the Hermes/Qwen style {"start": "<tool_call>\n", "end": "\n</tool_call>", "separator": "\n",
-- "name_key": "name", "arguments_key": "arguments"}. null: that default.
alter table ai.models add column tool_call_format jsonb
  check (tool_call_format is null or jsonb_typeof(tool_call_format) = 'object');

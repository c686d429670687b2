-- A secret per request that only its waiter (serve wrote it) and the worker that claims it know
-- (issue 13): the worker seals (encrypts and authenticates) the events it puts in its
-- notifications with it, so the waiter can take them from the notification instead of reading
-- them back (src/engine/notice.ts). Any role that can connect may LISTEN and NOTIFY on any
-- channel: without the key it can neither read sealed events nor forge them, and a payload that
-- does not open is only a hint to read the rows.
-- null: nobody takes this request's events from notifications (ai.embed, ai.chat_complete).
alter table ai.requests add column notify_key bytea check (notify_key is null or length(notify_key) = 16);

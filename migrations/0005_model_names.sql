-- Model names may be paths (PostgresML's model objects name a model by its hub id or folder,
-- e.g. /models/my-llama), so a leading '/' or '.' is allowed, and up to 256 characters.
alter table ai.models drop constraint models_name_check;
alter table ai.models add constraint models_name_check check (name ~ '^[A-Za-z0-9/.][A-Za-z0-9._:/-]{0,255}$');

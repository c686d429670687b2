import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import type { Config } from '../config.js';
import { openDatabase, type Db } from '../db/pool.js';
import { createApiKey, listApiKeys, revokeApiKey, rotateApiKey, updateApiKey, type KeyObject } from '../admin/keys.js';
import { addModelFrom, listModelObjects, removeModelNamed, setModelDefaults } from '../admin/models.js';
import { createTeam, deleteTeam, listTeams, updateTeam, type TeamObject } from '../admin/teams.js';

/**
 * `switchyard models|keys|teams`: the flags become the admin API's request bodies and go through
 * the same functions (src/admin/), so the CLI and /admin agree on every rule and every answer;
 * `--json` prints the API's object. An ApiError (bad input, no such thing) ends the command.
 */
export class UsageError extends Error {}

const list = (s: string | undefined) => (s ? s.split(',').map((x) => x.trim()).filter(Boolean) : undefined);

export function oneOf<T extends string>(value: string | undefined, allowed: readonly T[], flag: string): T | undefined {
  if (value === undefined) return undefined;
  if (!allowed.includes(value as T)) throw new UsageError(`${flag} must be one of ${allowed.join(', ')}`);
  return value as T;
}

export function positiveInt(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new UsageError(`${flag} must be a positive integer`);
  return n;
}

/** `--budget 0` is a valid budget (nothing may run); `none` clears a limit. */
function limitFlag(value: string | undefined, flag: string, zero = false): number | null | undefined {
  if (value === undefined) return undefined;
  if (value === 'none') return null;
  const n = Number(value);
  if (!Number.isInteger(n) || n < (zero ? 0 : 1)) throw new UsageError(`${flag} must be a ${zero ? 'non-negative' : 'positive'} integer, or none`);
  return n;
}

async function withDb<T>(config: Config, fn: (db: Db) => Promise<T>): Promise<T> {
  const database = openDatabase(config.databaseUrl, { max: 2, applicationName: 'switchyard-cli' });
  try {
    return await fn(database.db);
  } finally {
    await database.close();
  }
}

const LIMIT_OPTIONS = {
  budget: { type: 'string' }, 'budget-period': { type: 'string' }, rpm: { type: 'string' }, tpm: { type: 'string' }, json: { type: 'boolean' },
} as const;

function limitsBody(v: { budget?: string; 'budget-period'?: string; rpm?: string; tpm?: string }) {
  const body: Record<string, unknown> = {};
  const b = limitFlag(v.budget, '--budget', true);
  if (b !== undefined) body.budget_tokens = b;
  const p = oneOf(v['budget-period'], ['day', 'month', 'total'] as const, '--budget-period');
  if (p !== undefined) body.budget_period = p;
  const r = limitFlag(v.rpm, '--rpm');
  if (r !== undefined) body.rpm_limit = r;
  const t = limitFlag(v.tpm, '--tpm');
  if (t !== undefined) body.tpm_limit = t;
  return body;
}

const limitsText = (x: KeyObject | TeamObject) =>
  [
    x.budget_tokens !== null ? `budget ${x.spend.spent + x.spend.reserved}/${x.budget_tokens} per ${x.budget_period}` : null,
    x.rpm_limit !== null ? `${x.rpm_limit} rpm` : null,
    x.tpm_limit !== null ? `${x.tpm_limit} tpm` : null,
  ].filter(Boolean).join(', ');

export async function models(config: Config, args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      task: { type: 'string' }, source: { type: 'string' }, dtype: { type: 'string' }, device: { type: 'string' },
      revision: { type: 'string' }, alias: { type: 'string' }, 'chat-template-file': { type: 'string' },
      'context-length': { type: 'string' }, defaults: { type: 'string' }, json: { type: 'boolean' },
      pooling: { type: 'string' }, 'no-normalize': { type: 'boolean' }, dimensions: { type: 'string' }, truncate: { type: 'boolean' },
      'max-queue': { type: 'string' }, 'tool-call-format': { type: 'string' }, 'reasoning-format': { type: 'string' },
      'moderation-map': { type: 'string' },
    },
  });
  const json = (s: string | undefined, flag: string) => {
    if (s === undefined) return undefined;
    try {
      return JSON.parse(s) as unknown;
    } catch {
      // A format may be a name (hermes, think): the shared check says which names exist.
      if (flag === '--tool-call-format' || flag === '--reasoning-format') return s;
      throw new UsageError(`${flag} must be JSON, e.g. {"temperature":0.7}`);
    }
  };
  if (sub === 'add') {
    const name = positionals[0];
    if (!name) throw new UsageError('models add needs a NAME');
    const task = oneOf(values.task, ['chat', 'embedding', 'rerank', 'moderation'] as const, '--task');
    if (!task || !values.source) throw new UsageError('models add needs --task chat|embedding|rerank|moderation and --source HF_ID_OR_PATH');
    if (values['moderation-map'] && task !== 'moderation') throw new UsageError('--moderation-map is for --task moderation');
    const body = Object.fromEntries(Object.entries({
      name, task, source: values.source, revision: values.revision, dtype: values.dtype,
      device: oneOf(values.device, ['cpu', 'cuda'] as const, '--device'),
      aliases: list(values.alias),
      chat_template: values['chat-template-file'] ? readFileSync(values['chat-template-file'], 'utf8') : undefined,
      context_length: positiveInt(values['context-length'], '--context-length'),
      defaults: json(values.defaults, '--defaults'),
      pooling: oneOf(values.pooling, ['mean', 'cls', 'none'] as const, '--pooling'),
      normalize: values['no-normalize'] ? false : undefined,
      dimensions: positiveInt(values.dimensions, '--dimensions'),
      max_queue: positiveInt(values['max-queue'], '--max-queue'),
      tool_call_format: json(values['tool-call-format'], '--tool-call-format'),
      reasoning_format: json(values['reasoning-format'], '--reasoning-format'),
      truncate: values.truncate ? true : undefined,
      moderation: values['moderation-map'] ? moderationMap(values['moderation-map']) : undefined,
    }).filter(([, v]) => v !== undefined));
    let dtypeWhy = '';
    const m = await withDb(config, (db) => addModelFrom(db, body, { ...(config.modelsDir ? { modelsDir: config.modelsDir } : {}), onDtype: (why) => (dtypeWhy = why) }));
    if (values.json) return void console.log(JSON.stringify(m, null, 2));
    console.log(`registered ${m.name} (${m.task}) from ${m.source}${m.aliases.length ? `, aliases ${m.aliases.join(', ')}` : ''}`);
    console.log(`dtype ${dtypeWhy}`);
    console.log('Workers pick up new models when they start: restart running workers to serve it.');
  } else if (sub === 'list') {
    const { data } = await withDb(config, listModelObjects);
    if (values.json) console.log(JSON.stringify(data, null, 2));
    else if (data.length === 0) console.log('no models registered');
    else for (const r of data) console.log(`${r.name}\t${r.task}\t${r.source}\t${r.dtype}\t${r.device}${r.aliases.length ? `\taliases: ${r.aliases.join(',')}` : ''}`);
  } else if (sub === 'remove') {
    const name = positionals[0];
    if (!name) throw new UsageError('models remove needs a NAME');
    await withDb(config, (db) => removeModelNamed(db, name));
    console.log(`removed ${name}`);
  } else if (sub === 'defaults') {
    const [name, defaults] = positionals;
    if (!name || defaults === undefined) throw new UsageError('models defaults needs a NAME and a JSON object, e.g. \'{"temperature":0.7}\'');
    const m = await withDb(config, (db) => setModelDefaults(db, name, { defaults: json(defaults, 'the defaults') }));
    console.log(values.json ? JSON.stringify(m, null, 2) : `defaults of ${m.name}: ${JSON.stringify(m.defaults)}`);
  } else throw new UsageError('models: expected add, list, remove or defaults');
}

/** --moderation-map: a JSON object, or a file holding one (checked by the shared rule in src/admin/models.ts). */
function moderationMap(value: string): unknown {
  try {
    return JSON.parse(value.trimStart().startsWith('{') ? value : readFileSync(value, 'utf8'));
  } catch (err) {
    throw new UsageError(`--moderation-map must be a JSON object or a file holding one: ${(err as Error).message}`);
  }
}

export async function keys(config: Config, args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  const { values, positionals } = parseArgs({
    args: rest, allowPositionals: true,
    options: { name: { type: 'string' }, models: { type: 'string' }, admin: { type: 'boolean' }, team: { type: 'string' }, ...LIMIT_OPTIONS },
  });
  const id = () => {
    const v = positionals[0];
    if (!v || !/^[0-9a-f-]{36}$/i.test(v)) throw new UsageError(`keys ${sub} needs a key ID (see keys list)`);
    return v;
  };
  const team = values.team === undefined ? {} : { team: values.team === 'none' ? null : values.team };
  if (sub === 'create') {
    if (!values.name) throw new UsageError('keys create needs --name N');
    const k = await withDb(config, (db) =>
      createApiKey(db, { name: values.name, models: list(values.models) ?? null, admin: values.admin === true, ...team, ...limitsBody(values) }));
    if (values.json) return void console.log(JSON.stringify(k, null, 2));
    console.error(`created key ${k.id} (${k.name}); it is shown only once:`);
    console.log(k.key);
  } else if (sub === 'list') {
    const { data } = await withDb(config, listApiKeys);
    if (values.json) return void console.log(JSON.stringify(data, null, 2));
    if (data.length === 0) console.log('no keys');
    for (const r of data) {
      const state = r.revoked_at ? 'revoked' : 'active';
      const limits = limitsText(r);
      console.log(`${r.id}\t${r.name}\t${r.prefix}…\t${state}\t${r.models ? r.models.join(',') : 'all models'}${r.admin ? '\tadmin' : ''}${r.team_id ? `\tteam ${r.team_id}` : ''}${limits ? `\t${limits}` : ''}`);
    }
  } else if (sub === 'update') {
    const k = await withDb(config, (db) =>
      updateApiKey(db, id(), { ...(values.name ? { name: values.name } : {}), ...(values.models ? { models: values.models === 'all' ? null : list(values.models) } : {}), ...team, ...limitsBody(values) }));
    console.log(values.json ? JSON.stringify(k, null, 2) : `updated ${k.id}${limitsText(k) ? ` (${limitsText(k)})` : ''}`);
  } else if (sub === 'revoke') {
    const k = await withDb(config, (db) => revokeApiKey(db, id()));
    console.log(values.json ? JSON.stringify(k, null, 2) : `revoked ${k.id}`);
  } else if (sub === 'rotate') {
    const k = await withDb(config, (db) => rotateApiKey(db, id()));
    if (values.json) return void console.log(JSON.stringify(k, null, 2));
    console.error(`rotated key ${k.id} (${k.name}); the old secret stops working within a second; the new one is shown only once:`);
    console.log(k.key);
  } else throw new UsageError('keys: expected create, list, update, revoke or rotate');
}

export async function teams(config: Config, args: string[]): Promise<void> {
  const [sub, ...rest] = args;
  const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { name: { type: 'string' }, ...LIMIT_OPTIONS } });
  const ref = () => {
    if (!positionals[0]) throw new UsageError(`teams ${sub} needs a team NAME or ID`);
    return positionals[0];
  };
  const show = (t: TeamObject) => (values.json ? JSON.stringify(t, null, 2) : `${t.id}\t${t.name}${limitsText(t) ? `\t${limitsText(t)}` : ''}`);
  if (sub === 'create') {
    const t = await withDb(config, (db) => createTeam(db, { name: ref(), ...limitsBody(values) }));
    console.log(show(t));
  } else if (sub === 'list') {
    const { data } = await withDb(config, listTeams);
    if (values.json) console.log(JSON.stringify(data, null, 2));
    else if (data.length === 0) console.log('no teams');
    else for (const t of data) console.log(show(t));
  } else if (sub === 'update') {
    const t = await withDb(config, (db) => updateTeam(db, ref(), { ...(values.name ? { name: values.name } : {}), ...limitsBody(values) }));
    console.log(show(t));
  } else if (sub === 'delete') {
    const t = await withDb(config, (db) => deleteTeam(db, ref()));
    console.log(values.json ? JSON.stringify(t, null, 2) : `deleted ${t.id}`);
  } else throw new UsageError('teams: expected create, list, update or delete');
}

import { addModel, findModel, listModels, removeModel } from '../db/models-repo.js';
import type { Db } from '../db/pool.js';
import type { ModelRow, NewModel } from '../db/types.js';
import { ApiError, errors } from '../protocol/errors.js';
import { REASONING_FORMATS, reasoningFormatProblem } from '../protocol/reasoning.js';
import { moderationMappingProblem } from '../protocol/moderations.js';
// Pure rules (which ONNX export a source ships), shared with `up`; no CLI machinery comes with it.
import { defaultDtype } from '../cli/dtype.js';
import { TOOL_FORMATS, toolFormatProblem } from '../protocol/tools.js';
import { asBody, flag, limit, names, only, text, type Body } from './input.js';

/** Registered models: the admin API's /admin/models and the CLI's `models` (the same functions). */

export type ModelObject = Omit<ModelRow, 'created_at'> & { id: string; object: 'model'; created_at: number };

const toObject = (m: ModelRow): ModelObject => ({ ...m, id: m.name, object: 'model', created_at: Math.floor(new Date(m.created_at).getTime() / 1000) });

const FIELDS = [
  'name', 'task', 'source', 'revision', 'dtype', 'device', 'aliases', 'chat_template', 'context_length', 'defaults',
  'pooling', 'normalize', 'dimensions', 'truncate', 'max_queue', 'tool_call_format', 'reasoning_format', 'moderation',
] as const;

function oneOf<T extends string>(body: Body, k: string, allowed: readonly T[]): T | undefined {
  const v = body[k];
  if (v === undefined) return undefined;
  if (!allowed.includes(v as T)) throw errors.invalid(`'${k}' must be one of ${allowed.join(', ')}.`, k);
  return v as T;
}

function defaultsOf(body: Body): Record<string, unknown> | undefined {
  const v = body.defaults;
  if (v === undefined) return undefined;
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw errors.invalid(`'defaults' must be a JSON object, e.g. {"temperature":0.7}.`, 'defaults');
  return v as Record<string, unknown>;
}

/** A named format (`hermes`, `think`) or a JSON object, checked; stored as JSON text. */
function format(body: Body, k: 'tool_call_format' | 'reasoning_format'): string | null {
  const v = body[k];
  if (v === undefined || v === null) return null;
  const named = k === 'tool_call_format' ? TOOL_FORMATS : REASONING_FORMATS;
  const value = typeof v === 'string' ? named[v] : v;
  if (!value) throw errors.invalid(`'${k}' must be one of ${Object.keys(named).join(', ')} or a JSON object.`, k);
  const problem = k === 'tool_call_format' ? toolFormatProblem(value) : reasoningFormatProblem(value);
  if (problem) throw errors.invalid(`'${k}': ${problem}`, k);
  return JSON.stringify(value);
}

/** Moderation models: how a classifier's labels map to OpenAI's categories (protocol/moderations.ts). */
function moderationOf(body: Body, task: string): string | null {
  const v = body.moderation;
  if (v === undefined || v === null) return null;
  if (task !== 'moderation') throw errors.invalid("'moderation' is for models of task 'moderation'.", 'moderation');
  const problem = moderationMappingProblem(v);
  if (problem) throw errors.invalid(`'moderation': ${problem} ({"labels": {"LABEL": ["harassment"]}, "thresholds": {"harassment": 0.5}, "threshold": 0.5})`, 'moderation');
  return JSON.stringify(v);
}

/**
 * Registers a model (as `switchyard models add`); workers serve it once they (re)start. Without
 * `dtype`: int8 where the model ships it and runs on CPU (cli/dtype.ts); `onDtype` hears why.
 */
export async function addModelFrom(
  db: Db,
  input: unknown,
  opts: { modelsDir?: string; onDtype?(why: string): void } = {},
): Promise<ModelObject> {
  const body = asBody(input);
  only(body, FIELDS);
  const name = text(body, 'name', true, 256);
  const task = oneOf(body, 'task', ['chat', 'embedding', 'rerank', 'moderation'] as const);
  if (!task) throw errors.invalid("'task' is required: 'chat', 'embedding', 'rerank' or 'moderation'.", 'task');
  const source = text(body, 'source', true, 1000);
  const chatTemplate = body.chat_template;
  if (chatTemplate !== undefined && chatTemplate !== null && typeof chatTemplate !== 'string') throw errors.invalid("'chat_template' must be a string.", 'chat_template');
  const revision = text(body, 'revision');
  const dtype = text(body, 'dtype');
  const device = oneOf(body, 'device', ['cpu', 'cuda'] as const);
  const pooling = oneOf(body, 'pooling', ['mean', 'cls', 'none'] as const);
  const normalize = flag(body, 'normalize');
  const truncate = flag(body, 'truncate');
  const moderation = moderationOf(body, task);
  const chosen = dtype
    ? null
    : await defaultDtype(source, { ...(revision ? { revision } : {}), ...(device ? { device } : {}), ...((opts.modelsDir ?? process.env.SWITCHYARD_MODELS_DIR) ? { modelsDir: opts.modelsDir ?? process.env.SWITCHYARD_MODELS_DIR } : {}) });
  opts.onDtype?.(chosen ? chosen.why : `${dtype} (--dtype)`);
  const row: NewModel = {
    name, task, source,
    ...(revision ? { revision } : {}),
    dtype: dtype ?? chosen!.dtype,
    moderation,
    ...(device ? { device } : {}),
    aliases: names(body, 'aliases') ?? [],
    chat_template: (chatTemplate as string | null | undefined) ?? null,
    context_length: limit(body, 'context_length', 1 << 24) ?? null,
    defaults: defaultsOf(body) ?? {},
    ...(pooling ? { pooling } : {}),
    ...(normalize !== undefined ? { normalize } : {}),
    dimensions: limit(body, 'dimensions', 1 << 16) ?? null,
    max_queue: limit(body, 'max_queue', 1 << 24) ?? null,
    tool_call_format: format(body, 'tool_call_format'),
    reasoning_format: format(body, 'reasoning_format'),
    ...(truncate !== undefined ? { truncate } : {}),
  };
  try {
    return toObject(await addModel(db, row));
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === '23505') {
      throw new ApiError(409, `The model name or an alias is already in use: ${(err as Error).message}.`, 'invalid_request_error', 'model_exists', 'name');
    }
    if (code === '23514') {
      throw errors.invalid(`'name' may hold letters, digits and . _ : / - (up to 256 characters, not starting with - _ or :).`, 'name');
    }
    throw err;
  }
}

export async function listModelObjects(db: Db): Promise<{ object: 'list'; data: ModelObject[] }> {
  return { object: 'list', data: (await listModels(db)).map(toObject) };
}

/** Unregisters a model; one a vectorizer still uses is a 409 (drop the vectorizer first). */
export async function removeModelNamed(db: Db, name: string): Promise<{ id: string; object: 'model'; deleted: true }> {
  try {
    if (!(await removeModel(db, name))) throw errors.modelNotFound(name);
  } catch (err) {
    if ((err as { code?: string }).code === '23503') {
      throw new ApiError(409, `A vectorizer uses the model '${name}': drop it first (select ai.drop_vectorizer(ID); see ai.vectorizer_status).`, 'invalid_request_error', 'model_in_use');
    }
    throw err;
  }
  return { id: name, object: 'model', deleted: true };
}

/**
 * Replaces a model's default request parameters (what a request that leaves them out gets, e.g.
 * {"temperature": 0.7, "max_tokens": 256}). Serves see it within their model cache's second.
 */
export async function setModelDefaults(db: Db, name: string, input: unknown): Promise<ModelObject> {
  const body = asBody(input);
  only(body, ['defaults']);
  const defaults = defaultsOf(body);
  if (!defaults) throw errors.invalid("'defaults' is required: a JSON object.", 'defaults');
  const model = await findModel(db, name);
  if (!model || model.name !== name) throw errors.modelNotFound(name);
  const row = await db.updateTable('ai.models').set({ defaults }).where('name', '=', name).returningAll().executeTakeFirstOrThrow();
  return toObject(row);
}

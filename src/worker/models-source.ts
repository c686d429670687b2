import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';

/** What a worker needs to load a model; built from an ai.models row. */
export interface ModelSpec {
  name: string;
  task: 'chat' | 'embedding' | 'moderation';
  source: string;
  revision: string;
  dtype: string;
  device: 'cpu' | 'cuda';
  chatTemplate: string | null;
  contextLength: number | null;
  /** Embedding models only. */
  pooling: 'mean' | 'cls' | 'none';
  normalize: boolean;
  truncate: boolean;
  /** Moderation models: ai.models.moderation, the label mapping (protocol/moderations.ts). */
  moderation?: unknown;
}

export type ResolvedSource =
  | { kind: 'local'; dir: string; parent: string; id: string }
  | { kind: 'hub'; id: string };

/**
 * SWITCHYARD_MODELS_DIR is searched first (offline use), then a source that is itself a path,
 * then the hub. transformers.js loads local models as `<localModelPath>/<id>`, hence parent + id.
 */
export function resolveSource(source: string, modelsDir: string | undefined): ResolvedSource {
  const local = (dir: string): ResolvedSource => ({ kind: 'local', dir, parent: dirname(dir), id: basename(dir) });
  if (modelsDir) {
    const candidate = resolve(modelsDir, source);
    if (!isAbsolute(source) && existsSync(join(candidate, 'config.json'))) return local(candidate);
  }
  if (isAbsolute(source) || source.startsWith('./') || source.startsWith('../')) return local(resolve(source));
  return { kind: 'hub', id: source };
}

/** Where downloaded hub models are cached (transformers.js' own default is inside node_modules). */
export function modelCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.SWITCHYARD_CACHE_DIR || join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'switchyard', 'models');
}

/** The part of transformers.js's `env` that says where model files come from. */
export interface TransformersEnv {
  cacheDir: string | null;
  allowLocalModels: boolean;
  allowRemoteModels: boolean;
  localModelPath: string;
}

/**
 * Points transformers.js's process-global `env` at where a model's files are (a local folder, or
 * the hub with the download cache), and says where that is. Loads that follow must not
 * interleave with another model's.
 */
export function pointEnvAt(env: TransformersEnv, source: string, modelsDir: string | undefined): ResolvedSource {
  const where = resolveSource(source, modelsDir);
  env.cacheDir = modelCacheDir();
  if (where.kind === 'local') {
    env.allowLocalModels = true;
    env.allowRemoteModels = false;
    env.localModelPath = `${where.parent}/`;
  } else {
    env.allowLocalModels = false;
    env.allowRemoteModels = true;
  }
  return where;
}

/** transformers.js 4.x file names per dtype, for error messages that say what is missing. */
export function onnxFileFor(dtype: string): string {
  const suffix: Record<string, string> = {
    fp32: '', fp16: '_fp16', q8: '_quantized', int8: '_int8', uint8: '_uint8', q4: '_q4', q4f16: '_q4f16', bnb4: '_bnb4',
  };
  return `onnx/model${suffix[dtype] ?? `_${dtype}`}.onnx`;
}

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { onnxFileFor, resolveSource } from '../worker/models-source.js';

/**
 * The dtype a model runs in when `models add` or `up` is not given `--dtype`: int8 (q8) on CPU
 * where the model ships an int8 export, fp32 otherwise.
 *
 * Why int8 on CPU: decode on these machines is bound by reading the weights, and int8 weights are
 * a quarter of fp32's; issue 15 measured 1.7–1.9× decode and 2.3× embeddings with int8, for
 * outputs that differ from fp32's only by quantization noise. Why not on cuda: onnxruntime's
 * dynamic int8 kernels are CPU kernels; a GPU runs fp32 (or fp16, asked for with --dtype).
 *
 * What int8 changes besides speed: the exports (transformers.js's `model_quantized.onnx`, made by
 * onnxruntime's dynamic quantization) quantize each matrix product's input with one scale for the
 * whole tensor, so a sequence's logits move slightly with what it is batched with and with how
 * its prompt was chunked. fp32 keeps the scheduler's guarantee that a sequence's tokens do not
 * depend on its batch; `--dtype fp32` when that matters more than speed.
 */
export const CPU_QUANTIZED = 'q8';

export interface DtypeChoice {
  dtype: string;
  /** Why, in a sentence for the CLI to print. */
  why: string;
}

/** Whether the hub repository lists `file` at `revision`; null when the hub cannot be asked (offline). */
async function hubHas(id: string, revision: string, file: string): Promise<boolean | null> {
  try {
    // transformers.js's own idea of where the hub is (HF_ENDPOINT-style overrides included).
    const { env } = await import('@huggingface/transformers');
    const host = env.remoteHost.endsWith('/') ? env.remoteHost : `${env.remoteHost}/`;
    const res = await fetch(`${host}api/models/${id}/revision/${encodeURIComponent(revision)}`, {
      headers: process.env.HF_TOKEN ? { authorization: `Bearer ${process.env.HF_TOKEN}` } : {},
      signal: AbortSignal.timeout(5000),
    });
    if (!res.ok) return null;
    const body = (await res.json()) as { siblings?: { rfilename: string }[] };
    return (body.siblings ?? []).some((s) => s.rfilename === file);
  } catch {
    return null;
  }
}

/** Whether a model folder (SWITCHYARD_MODELS_DIR or a path) holds the int8 export. */
export function folderShipsQuantized(dir: string): boolean {
  return existsSync(join(dir, onnxFileFor(CPU_QUANTIZED)));
}

export async function defaultDtype(source: string, opts: { revision?: string; device?: 'cpu' | 'cuda'; modelsDir?: string }): Promise<DtypeChoice> {
  if (opts.device === 'cuda') return { dtype: 'fp32', why: 'fp32 on cuda (--dtype fp16 or another to override)' };
  const file = onnxFileFor(CPU_QUANTIZED);
  const where = resolveSource(source, opts.modelsDir);
  // Only an org/name id is worth asking the hub about (asking loads transformers.js, seconds on a
  // busy machine); a bare name that is no folder here stays fp32, as it always was.
  if (where.kind === 'hub' && !where.id.includes('/')) return { dtype: 'fp32', why: `fp32: ${source} is no model folder here, and not an org/name hub id to look for ${file} in` };
  const ships = where.kind === 'local' ? folderShipsQuantized(where.dir) : await hubHas(where.id, opts.revision ?? 'main', file);
  if (ships) return { dtype: CPU_QUANTIZED, why: `${CPU_QUANTIZED} (int8 weights): the model ships ${file} and runs on CPU (--dtype fp32 to override)` };
  if (ships === null) return { dtype: 'fp32', why: `fp32: could not list the hub repository's files to look for ${file} (--dtype ${CPU_QUANTIZED} if it has one)` };
  return { dtype: 'fp32', why: `fp32: the model ships no ${file}` };
}

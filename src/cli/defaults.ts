import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import type { NewModel } from '../db/types.js';
import { CPU_QUANTIZED, folderShipsQuantized } from './dtype.js';

/**
 * What `up` registers on a machine that can reach the model hub: both repositories ship an int8
 * export (onnx/model_quantized.onnx), which `up` runs on CPU (see dtype.ts for why).
 */
export const HUB_DEFAULTS: NewModel[] = [
  { name: 'smollm2', task: 'chat', source: 'HuggingFaceTB/SmolLM2-135M-Instruct', dtype: CPU_QUANTIZED },
  { name: 'minilm', task: 'embedding', source: 'Xenova/all-MiniLM-L6-v2', dtype: CPU_QUANTIZED },
];

function taskOf(configPath: string): 'chat' | 'embedding' | null {
  try {
    const config = JSON.parse(readFileSync(configPath, 'utf8')) as { architectures?: string[] };
    const arch = config.architectures?.[0] ?? '';
    if (/ForCausalLM$/.test(arch)) return 'chat';
    if (/(Bert|Roberta|MPNet|XLMRoberta|Nomic|Model)$/.test(arch)) return 'embedding';
  } catch {
    /* not a model folder */
  }
  return null;
}

/**
 * Models found in SWITCHYARD_MODELS_DIR (folders with a config.json, up to two levels deep,
 * e.g. `org/name`), registered under their folder's last name with the path below the
 * folder as source, in int8 where the folder holds the int8 export.
 */
export function discoverModels(dir: string): NewModel[] {
  const found: NewModel[] = [];
  const visit = (path: string, depth: number) => {
    const config = join(path, 'config.json');
    if (existsSync(config)) {
      const task = taskOf(config);
      const source = relative(dir, path);
      if (task && source) found.push({ name: source.split('/').pop()!, task, source, dtype: folderShipsQuantized(path) ? CPU_QUANTIZED : 'fp32' });
      return;
    }
    if (depth === 0) return;
    for (const entry of readdirSync(path).sort()) {
      const child = join(path, entry);
      if (!entry.startsWith('.') && statSync(child).isDirectory()) visit(child, depth - 1);
    }
  };
  visit(dir, 2);
  return found;
}

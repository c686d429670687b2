/**
 * A load-time rewrite of a causal LM's ONNX graph (issue 15): logits for the positions the caller
 * asks for, not for every position of the forward.
 *
 * An exported graph projects every position's hidden state onto the vocabulary: a prefill chunk
 * of 128 tokens computes (and hands to JS) 128 × 49,152 logits, 25 MB, of which the scheduler
 * reads one row, and the projection is about a fifth of the model's multiply-adds per token on
 * the SmolLM2 shape (49,152 × 576 of ~134 M). The rewrite adds an input, `logits_index`
 * ([batch, n] int64: per row the n positions to keep, each row its own), and gathers those
 * positions of the hidden state before the projection:
 *
 *   x = GatherElements(hidden, Expand(Reshape(logits_index, [b, n, 1]), [b, n, H]), axis = 1)
 *
 * so `logits` is [batch, n, vocab]. The projection is the same product per kept row, so the kept
 * rows' logits are bit-identical to the exported graph's (test/worker/generation/logits-rows.test.ts).
 *
 * Two shapes of the projection are recognised, as the exports here come, with `logits` declared
 * [batch, positions, vocab] and made by the projection itself (one row per position on axis 1):
 *   - float: logits = MatMul(hidden, W), W a weight (an initializer, or a Transpose of one: tied
 *     embeddings), optionally plus a constant bias;
 *   - int8 (dynamic quantization, fixtures/models/generator/quantize-q8.mjs and onnxruntime's own
 *     quantizer): logits = Mul(Cast(MatMulInteger(q, Wq, qZero, wZero)), scale), q from
 *     DynamicQuantizeLinear(hidden). The gather goes between the two, on the quantized rows,
 *     so the quantization's scale is still the whole forward's, as exported (gathering before
 *     it would quantize with the kept rows' scale alone and change the logits).
 * Anything else (logits that read other per-position tensors, an export with its own head) loads
 * as it was, and the caller reads every position as before (`LoadedChatModel.keepsLogits`).
 */

import { fields, int64Tensor, newNode, nextId, parseNode, text, utf8, withGraph, Writer, type Node } from './onnx-wire.js';

/** The input the rewrite adds. */
export const LOGITS_INDEX = 'logits_index';

/** The graph, with logits for the positions `logits_index` names only; null when its projection is not one the rewrite knows. */
export function keepLogitRows(model: Uint8Array): Uint8Array | null {
  const top = [...fields(model)];
  const graphField = top.find((f) => f.no === 7 && f.wire === 2);
  if (!graphField) return null;
  const graphFields = [...fields(graphField.value)];
  const initializers = new Set<string>();
  const graphOutputs = new Set<string>();
  const graphInputs = new Set<string>();
  let logitsRank = 0;
  for (const f of graphFields) {
    const name = (no: number) => {
      for (const t of fields(f.value)) if (t.no === no) return text.decode(t.value);
      return '';
    };
    if (f.no === 5) initializers.add(name(8));
    else if (f.no === 11) graphInputs.add(name(1));
    else if (f.no === 12) {
      graphOutputs.add(name(1));
      if (name(1) === 'logits') logitsRank = rankOf(f.value);
    }
  }
  // [batch, positions, vocab], declared: the projection that makes it then reads one row per
  // position on axis 1, which is what the gather takes (a projection of a flattened [batch ×
  // positions, hidden] would be reshaped after it, and is not matched below).
  if (logitsRank !== 3 || graphInputs.has(LOGITS_INDEX)) return null;
  const nodes = graphFields.filter((f) => f.no === 1).map((f) => parseNode(f.value));
  if (nodes.some((n) => n.subgraph)) return null;
  const producer = new Map<string, Node>();
  const readers = new Map<string, number>();
  for (const n of nodes) {
    for (const o of n.outputs) producer.set(o, n);
    for (const i of n.inputs) readers.set(i, (readers.get(i) ?? 0) + 1);
  }
  /** A constant: an initializer, or a Transpose, Cast or Constant of constants. */
  const constant = (name: string | undefined): boolean => {
    if (name === undefined) return false;
    if (initializers.has(name)) return true;
    const p = producer.get(name);
    return !!p && p.domain === '' && (p.opType === 'Constant' || ((p.opType === 'Transpose' || p.opType === 'Cast') && p.inputs.every(constant)));
  };
  const only = (name: string) => readers.get(name) === 1 && !graphOutputs.has(name);

  // From `logits` back over constant biases to the projection.
  let head = producer.get('logits');
  while (head && head.opType === 'Add' && head.domain === '' && head.inputs.length === 2 && constant(head.inputs[1]) && producer.get(head.inputs[0]!) && only(head.inputs[0]!)) {
    head = producer.get(head.inputs[0]!);
  }
  if (!head || head.domain !== '') return null;
  /** The projection's node whose first input holds one row per position, and that input. */
  let gatherAt: Node | null = null;
  if (head.opType === 'MatMul' && constant(head.inputs[1])) gatherAt = head;
  else if (head.opType === 'Mul' && head.inputs.length === 2) {
    const [a, b] = head.inputs.map((i) => producer.get(i!));
    const cast = [a, b].find((n) => n?.opType === 'Cast');
    const mm = cast && only(cast.outputs[0]!) ? producer.get(cast.inputs[0]!) : undefined;
    const scale = head.inputs.find((i) => i !== cast?.outputs[0]);
    const dql = mm ? producer.get(mm.inputs[0]!) : undefined;
    // The scale is the quantizer's (per tensor) times the weight's: no per-position tensor.
    const scaleOk = (name: string | undefined): boolean => {
      if (name === undefined) return false;
      if (constant(name) || (dql && dql.outputs.includes(name))) return true;
      const p = producer.get(name);
      return !!p && p.opType === 'Mul' && p.inputs.every(scaleOk);
    };
    if (mm && mm.opType === 'MatMulInteger' && constant(mm.inputs[1]) && dql?.opType === 'DynamicQuantizeLinear' && scaleOk(scale)) gatherAt = mm;
  }
  if (!gatherAt) return null;

  const rows = gatherAt.inputs[0]!;
  const tmp = () => `switchyard_logits_t${nextId()}`;
  const [ish, hsh, hsz, eshape, idx3, idx, wide, kept, one, two, three] = [tmp(), tmp(), tmp(), tmp(), tmp(), tmp(), tmp(), tmp(), tmp(), tmp(), tmp()] as const;
  const added = [int64Tensor(one, [1]), int64Tensor(two, [2]), int64Tensor(three, [3])];
  const gather = [
    newNode('Shape', [LOGITS_INDEX], [ish]),
    newNode('Shape', [rows], [hsh]),
    newNode('Slice', [hsh, two, three], [hsz]),
    newNode('Concat', [ish, hsz], [eshape], { axis: 0 }),
    newNode('Concat', [ish, one], [idx3], { axis: 0 }),
    newNode('Reshape', [LOGITS_INDEX, idx3], [idx]),
    newNode('Expand', [idx, eshape], [wide]),
    newNode('GatherElements', [rows, wide], [kept], { axis: 1 }),
  ];
  // The projection reads the kept rows: its node again, with its first input replaced.
  const rewired = newNodeLike(gatherAt, kept);

  const g = new Writer();
  for (const f of graphFields) if (f.no !== 1) g.raw(graphField.value.subarray(f.start, f.end));
  for (const t of added) g.bytes(5, t);
  g.bytes(11, indexInput());
  for (const n of nodes) {
    if (n === gatherAt) {
      for (const x of gather) g.bytes(1, x.raw);
      g.bytes(1, rewired);
    } else g.bytes(1, n.raw);
  }
  return withGraph(model, top, graphField, g);
}

/** The rank a ValueInfoProto declares (0 when it declares no shape). */
function rankOf(valueInfo: Uint8Array): number {
  for (const t of fields(valueInfo)) {
    if (t.no !== 2) continue;
    for (const tt of fields(t.value)) {
      if (tt.no !== 1) continue;
      for (const sh of fields(tt.value)) if (sh.no === 2) return [...fields(sh.value)].filter((d) => d.no === 1).length;
    }
  }
  return 0;
}

/** `node`'s encoding with its first input renamed to `input` (every other field as it was). */
function newNodeLike(node: Node, input: string): Uint8Array {
  const w = new Writer();
  let first = true;
  for (const f of fields(node.raw)) {
    if (f.no === 1 && first) {
      w.string(1, input);
      first = false;
    } else w.raw(node.raw.subarray(f.start, f.end));
  }
  return w.done();
}

/** ValueInfoProto of `logits_index`: int64 [batch_size, logits_positions]. */
function indexInput(): Uint8Array {
  const dim = (param: string) => new Writer().bytes(2, utf8.encode(param)).done();
  const shape = new Writer().bytes(1, dim('batch_size')).bytes(1, dim('logits_positions')).done();
  const tensor = new Writer().int(1, 7).bytes(2, shape).done();
  const type = new Writer().bytes(1, tensor).done();
  return new Writer().string(1, LOGITS_INDEX).bytes(2, type).done();
}

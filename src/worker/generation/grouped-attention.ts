/**
 * A load-time rewrite of a causal LM's ONNX graph (issue 15): attention over grouped KV heads
 * without materialising the repeated keys and values.
 *
 * The usual export of a grouped-query model (Llama's `repeat_kv`, and the bench and fixture
 * models built like it) copies each layer's whole cache to every query head before attention:
 *
 *   e = Reshape(Expand(Unsqueeze(present, axes=[2]), [b, kvHeads, group, T, d]), [b, heads, T, d])
 *   scores = Mul(MatMul(q, Transpose(e_k, [0,1,3,2])), scale) ... ctx = MatMul(probs, e_v)
 *
 * so a decode step writes and reads `group` copies of the cache (onnxruntime's Expand was the
 * largest op that grows with the context: 37 of 238 ms a step at batch 1 × 1,023 tokens against
 * 2 of 136 at 40, profiled on the SmolLM2-shaped bench model). The rewrite groups the queries
 * instead and lets MatMul broadcast the unexpanded cache over the group:
 *
 *   q5 = Reshape(q, [b, kvHeads, group, s, d]); s5 = Mul(MatMul(q5, Transpose(u_k, [0,1,2,4,3])), scale)
 *   scores = Reshape(s5, [b, heads, s, -1]) ... ctx = Reshape(MatMul(Reshape(probs, [b, kvHeads, group, s, -1]), u_v), [b, heads, s, -1])
 *
 * (u = the Unsqueeze's output, [b, kvHeads, 1, T, d]). Each head's products are the same
 * matrix products of the same shapes (M = s rows, the scale still folded into the product as
 * onnxruntime fuses it), so the outputs are bit-identical, not merely close: checked on every
 * output (logits and present.*) for decode, prefill, padded and batched shapes
 * (test/worker/generation/grouped-attention.test.ts). With the scale applied after the
 * reshape instead, decode steps differed in the last bits (onnxruntime takes another kernel for
 * an unscaled 1-row product), so the Mul stays before it.
 *
 * Only that exact pattern is rewritten; a graph without it (another export, one with its own
 * attention operator) loads unchanged. The graph's sizes are read at run time (Shape, once per
 * run for all layers: per-layer shape arithmetic cost ~1 ms a short-context step), so the
 * rewrite needs no config. Models whose weights live in external data files are left alone
 * (their bytes could not be handed to onnxruntime without their paths).
 *
 * The ONNX protobuf is edited at the wire level: only the graph's node list (and a few small
 * initializers added) changes; every other field, the weights among them, is copied as it is.
 */

import { elementsOf, fields, int64Tensor, newNode, nextId, parseNode, tensorInts, text, withGraph, Writer, type Field, type Node } from './onnx-wire.js';

// --- the rewrite -----------------------------------------------------------------------------------

export interface RewriteResult {
  bytes: Uint8Array;
  /** Attention products rewritten: two per layer (keys and values). */
  rewritten: number;
  /** Cache outputs (`present.*`) that now hold only the step's new keys or values (`split`). */
  split: number;
}

export interface RewriteOptions {
  /**
   * Also split each layer's attention over the cache it is given and the step's new keys and
   * values, so that the graph never concatenates the two: `present.*` then holds only the new
   * tokens' keys and values ([b, kvHeads, s, d]), which the caller appends to its own cache
   * (scheduler.ts). Scores are computed in two products and concatenated (a [.., s, past + s]
   * tensor, not the cache), the probabilities sliced in two and each part multiplied by its
   * values, the two contexts added. Close to the exported graph's outputs, not bit-identical:
   * the last value product's sum is split in two (test/worker/generation/grouped-attention.test.ts).
   */
  split?: boolean;
}

/**
 * The model with its repeated-KV attention grouped (see the top of this file), or null when the
 * graph has no such pattern or cannot be rewritten safely.
 */
export function groupAttention(model: Uint8Array, opts: RewriteOptions = {}): RewriteResult | null {
  const top = [...fields(model)];
  const graphField = top.find((f) => f.no === 7 && f.wire === 2);
  if (!graphField) return null;
  const graphFields = [...fields(graphField.value)];
  /** Initializers' element counts, by name. */
  const consts = new Map<string, number>();
  const graphOutputs = new Set<string>();
  const graphInputs = new Set<string>();
  for (const f of graphFields) {
    if (f.no === 5) {
      let name = '';
      let external = false;
      for (const t of fields(f.value)) {
        if (t.no === 8) name = text.decode(t.value);
        else if (t.no === 14 && t.int === 1n) external = true;
      }
      if (external) return null;
      consts.set(name, elementsOf(f.value));
    } else if (f.no === 12) {
      for (const v of fields(f.value)) if (v.no === 1) graphOutputs.add(text.decode(v.value));
    } else if (f.no === 11) {
      for (const v of fields(f.value)) if (v.no === 1) graphInputs.add(text.decode(v.value));
    }
  }
  let nodes: (Node | null)[] = graphFields.filter((f) => f.no === 1).map((f) => parseNode(f.value));
  // A subgraph may read any outer tensor without listing it as an input: who reads what is then
  // not known here (a merged decoder's If branches), so such a graph is left as exported.
  if (nodes.some((n) => n!.subgraph)) return null;
  const producer = new Map<string, number>();
  const consumers = new Map<string, number[]>();
  nodes.forEach((n, i) => {
    for (const o of n!.outputs) producer.set(o, i);
    for (const x of n!.inputs) if (x) consumers.set(x, [...(consumers.get(x) ?? []), i]);
  });
  const node = (name: string | undefined) => (name === undefined ? undefined : producer.has(name) ? nodes[producer.get(name)!] ?? undefined : undefined);
  const only = (name: string) => {
    const c = consumers.get(name) ?? [];
    return c.length === 1 && !graphOutputs.has(name) ? nodes[c[0]!] ?? undefined : undefined;
  };
  /** Values of a small int64 constant: an initializer or a Constant node. */
  const smallInitializers = new Map<string, bigint[]>();
  for (const f of graphFields) {
    if (f.no !== 5 || f.value.length > 256) continue;
    const vals = tensorInts(f.value);
    let name = '';
    for (const t of fields(f.value)) if (t.no === 8) name = text.decode(t.value);
    if (vals) smallInitializers.set(name, vals);
  }
  const intsOf = (name: string | undefined): bigint[] | null => {
    if (name === undefined) return null;
    if (smallInitializers.has(name)) return smallInitializers.get(name)!;
    const n = node(name);
    return n?.opType === 'Constant' ? n.constInts : null;
  };
  const same = (a: bigint[] | null | undefined, b: number[]) => !!a && a.length === b.length && a.every((v, i) => v === BigInt(b[i]!));

  const added = new Map<string, Uint8Array>();
  const constant = (values: number[]) => {
    const name = `switchyard_gqa_c${nextId()}`;
    added.set(name, int64Tensor(name, values));
    return name;
  };
  const tmp = () => `switchyard_gqa_t${nextId()}`;
  /** New nodes to put where node i was (before it: their inputs come before it). */
  const before = new Map<number, Node[]>();
  const drop = new Set<Node>();
  /** Each match: where its nodes go, the [b, heads, s, *] tensor it groups, the cache it reads, and its nodes. */
  const matches: { at: number; src: string; x: string; emit: (shapes: { shape5: string; shape4: string; flat: string }) => Node[] }[] = [];

  /**
   * With `split`: the cache output `x` = Concat(past, new) on the sequence axis, `past` a graph
   * input. (Nothing else may read `x` once the rewrite is done: checked at the end.)
   */
  const splitOf = (x: string): { past: string; fresh: string; cat: Node } | null => {
    if (!opts.split) return null;
    const cat = node(x);
    if (!cat || cat.opType !== 'Concat' || cat.domain !== '' || cat.inputs.length !== 2 || !graphOutputs.has(x)) return null;
    const axis = cat.int.get('axis');
    if (axis !== 2n && axis !== -2n) return null;
    return graphInputs.has(cat.inputs[0]!) ? { past: cat.inputs[0]!, fresh: cat.inputs[1]!, cat } : null;
  };
  /** The past's length (every layer's cache has the same), computed once where the first split product is. */
  let pastLen: string | null = null;
  let pastOf = '';
  const lenOf = (past: string) => {
    pastOf ||= past;
    return (pastLen ??= tmp());
  };
  const splits: { cat: Node; fresh: string }[] = [];

  for (const r of nodes) {
    if (!r || r.opType !== 'Reshape' || r.domain !== '') continue;
    const e = node(r.inputs[0]);
    if (!e || e.opType !== 'Expand' || only(e.outputs[0]!) !== r) continue;
    const u = node(e.inputs[0]);
    if (!u || u.opType !== 'Unsqueeze' || only(u.outputs[0]!) !== e) continue;
    if (!same(u.inputs[1] !== undefined ? intsOf(u.inputs[1]) : u.ints.get('axes'), [2])) continue;
    const x = u.inputs[0]!;
    const uOut = u.outputs[0]!;
    const c = only(r.outputs[0]!);
    if (!c) continue;
    if (c.opType === 'Transpose' && same(c.ints.get('perm'), [0, 1, 3, 2])) {
      // Keys: MatMul(q, Transpose(expanded)), then (usually) the scale, kept before the reshape.
      const m = only(c.outputs[0]!);
      if (!m || m.opType !== 'MatMul' || m.inputs[1] !== c.outputs[0]) continue;
      const q = m.inputs[0]!;
      // The scale must stay on the product, before the reshape, where onnxruntime folds it into
      // the MatMul as in the exported graph (see the top of this file): only a constant scalar
      // (what onnxruntime folds) qualifies; any other Mul or Div after the product, and the
      // attention is left as exported.
      const sc = only(m.outputs[0]!);
      const scalar = (name: string | undefined) =>
        name !== undefined && (consts.get(name) === 1 || (node(name)?.opType === 'Constant' && node(name)!.constElements === 1));
      const isScale = (n: Node) =>
        (n.opType === 'Div' && n.inputs[0] === m.outputs[0] && scalar(n.inputs[1])) ||
        (n.opType === 'Mul' && n.inputs.length === 2 && n.inputs.includes(m.outputs[0]!) && scalar(n.inputs.find((i) => i !== m.outputs[0])));
      if (sc && (sc.opType === 'Mul' || sc.opType === 'Div') && !isScale(sc)) continue;
      const scaled = sc && isScale(sc) ? sc : null;
      const last = scaled ?? m;
      /** q · kᵀ over one cache, scaled as exported: `perm` swaps the cache's last two axes. */
      const product = (qg: string, cache: string, perm: number[]): [Node[], string] => {
        const [kt, sg, scaledOut] = [tmp(), tmp(), tmp()];
        const out = [
          newNode('Transpose', [cache], [kt], { perm }),
          newNode('MatMul', [qg, kt], [sg]),
          ...(scaled ? [newNode(scaled.opType, scaled.inputs.map((i) => (i === m.outputs[0] ? sg : i)), [scaledOut])] : []),
        ];
        return [out, scaled ? scaledOut : sg];
      };
      const sp = splitOf(x);
      if (sp) splits.push({ cat: sp.cat, fresh: sp.fresh });
      matches.push({ at: nodes.indexOf(last), src: q, x: sp ? sp.past : x, emit: ({ shape5, shape4, flat }) => {
        const qg = tmp();
        if (!sp) {
          // [b, kvHeads, group, s, d] · [b, kvHeads, 1, d, T]: one product of s rows per head.
          const [nodesOf, scores] = product(qg, uOut, [0, 1, 2, 4, 3]);
          return [newNode('Reshape', [q, shape5], [qg]), ...nodesOf, newNode('Reshape', [scores, shape4], [...last.outputs])];
        }
        // [b, kvHeads, group × s, d] · [b, kvHeads, d, T], over the cache given and over the new
        // keys, side by side: [.., group × s, past + s].
        const sg = tmp();
        const [pastNodes, pastScores] = product(qg, sp.past, [0, 1, 3, 2]);
        const [newNodes, newScores] = product(qg, sp.fresh, [0, 1, 3, 2]);
        return [
          newNode('Reshape', [q, flat], [qg]),
          ...pastNodes,
          ...newNodes,
          newNode('Concat', [pastScores, newScores], [sg], { axis: -1 }),
          newNode('Reshape', [sg, shape4], [...last.outputs]),
        ];
      } });
      for (const d of [r, e, c, m, ...(scaled ? [scaled] : [])]) drop.add(d);
    } else if (c.opType === 'MatMul' && c.inputs[1] === r.outputs[0]) {
      // Values: MatMul(probs, expanded).
      const probs = c.inputs[0]!;
      const sp = splitOf(x);
      if (sp) splits.push({ cat: sp.cat, fresh: sp.fresh });
      matches.push({ at: nodes.indexOf(c), src: probs, x: sp ? sp.past : x, emit: ({ shape5, shape4, flat }) => {
        const [pg, cg] = [tmp(), tmp()];
        if (!sp) return [newNode('Reshape', [probs, shape5], [pg]), newNode('MatMul', [pg, uOut], [cg]), newNode('Reshape', [cg, shape4], [...c.outputs])];
        // The probabilities over the cache given and over the new tokens, each times its values.
        const P = lenOf(sp.past);
        const [pp, pn, cp, cn] = [tmp(), tmp(), tmp(), tmp()];
        return [
          newNode('Reshape', [probs, flat], [pg]),
          newNode('Slice', [pg, constant([0]), P, constant([-1])], [pp]),
          newNode('Slice', [pg, P, constant([Number.MAX_SAFE_INTEGER]), constant([-1])], [pn]),
          newNode('MatMul', [pp, sp.past], [cp]),
          newNode('MatMul', [pn, sp.fresh], [cn]),
          newNode('Add', [cp, cn], [cg]),
          newNode('Reshape', [cg, shape4], [...c.outputs]),
        ];
      } });
      for (const d of [r, e, c]) drop.add(d);
    }
  }
  if (matches.length === 0) return null;

  // The grouping's shapes, computed once, where the first match is, from its tensors: every
  // layer of one run has the same batch, heads, kv heads and length. (A layer that differed would
  // fail its Reshape or MatMul loudly, not compute something else: the element counts or the
  // broadcast would not match.) shape5 = [b, kvHeads, heads / kvHeads, s, -1], shape4 = [b, heads, s, -1].
  const first = matches.reduce((a, m) => (m.at < a.at ? m : a));
  const [sh, xs, b, nh, s, kvh, group, shape5, shape4, flat] = [tmp(), tmp(), tmp(), tmp(), tmp(), tmp(), tmp(), tmp(), tmp(), tmp()] as const;
  const shared = [
    newNode('Shape', [first.src], [sh]),
    newNode('Shape', [first.x], [xs]),
    newNode('Slice', [sh, constant([0]), constant([1])], [b]),
    newNode('Slice', [sh, constant([1]), constant([2])], [nh]),
    newNode('Slice', [sh, constant([2]), constant([3])], [s]),
    newNode('Slice', [xs, constant([1]), constant([2])], [kvh]),
    newNode('Div', [nh, kvh], [group]),
    newNode('Concat', [b, kvh, group, s, constant([-1])], [shape5], { axis: 0 }),
    newNode('Concat', [b, nh, s, constant([-1])], [shape4], { axis: 0 }),
    // [b, kvHeads, group × s, same last axis] (Reshape's 0 keeps that axis of its input).
    ...(splits.length > 0 ? [newNode('Concat', [constant([0]), kvh, constant([-1, 0])], [flat], { axis: 0 })] : []),
  ];
  for (const m of matches) before.set(m.at, [...(m === first ? shared : []), ...m.emit({ shape5, shape4, flat })]);
  const rewritten = matches.length;
  if (pastLen !== null) {
    // The past's length, from the graph input itself: computable before anything else.
    const ps = tmp();
    before.set(0, [newNode('Shape', [pastOf], [ps]), newNode('Slice', [ps, constant([2]), constant([3])], [pastLen]), ...(before.get(0) ?? [])]);
  }
  // Each split cache output is the step's new keys or values alone: no Concat of the cache.
  for (const { cat, fresh } of new Map(splits.map((x) => [x.cat, x])).values()) {
    const i = nodes.indexOf(cat);
    drop.add(cat);
    before.set(i, [...(before.get(i) ?? []), newNode('Identity', [fresh], [...cat.outputs])]);
  }

  const ordered: Node[] = [];
  nodes.forEach((n, i) => {
    for (const m of before.get(i) ?? []) ordered.push(m);
    if (n && !drop.has(n)) ordered.push(n);
  });
  const readBefore = new Set(nodes.flatMap((n) => n!.inputs));
  nodes = pruneDead(ordered, graphOutputs);
  // Initializers only the removed nodes read (the expansions' shapes) go too: onnxruntime would
  // warn about each at every load.
  const readAfter = new Set(nodes.flatMap((n) => n!.inputs));
  // A split cache output that something else still reads (the full cache's shape, say) would
  // hand that reader the new tokens only: such a graph is grouped without the split.
  if (splits.some((x) => x.cat.outputs.some((o) => readAfter.has(o)))) return groupAttention(model, { ...opts, split: false });
  const orphan = (f: Field) => {
    if (f.no !== 5 || f.value.length > 256) return false;
    let name = '';
    for (const t of fields(f.value)) if (t.no === 8) name = text.decode(t.value);
    return readBefore.has(name) && !readAfter.has(name) && !graphOutputs.has(name);
  };

  const g = new Writer();
  for (const f of graphFields) if (f.no !== 1 && !orphan(f)) g.raw(graphField.value.subarray(f.start, f.end));
  // The constants of pruned nodes (the 5-D shape, when every product is split) go with them.
  for (const [name, t] of added) if (readAfter.has(name)) g.bytes(5, t);
  for (const n of nodes) g.bytes(1, n!.raw);
  return { bytes: withGraph(model, top, graphField, g), rewritten, split: new Set(splits.map((x) => x.cat)).size };
}

/** Drops nodes none of whose outputs is read (the expansions' shape arithmetic), repeatedly. */
function pruneDead(nodes: Node[], graphOutputs: Set<string>): Node[] {
  let live = nodes;
  for (;;) {
    const read = new Set<string>(graphOutputs);
    for (const n of live) for (const i of n.inputs) read.add(i);
    const next = live.filter((n) => n.outputs.some((o) => read.has(o)));
    if (next.length === live.length) return live;
    live = next;
  }
}

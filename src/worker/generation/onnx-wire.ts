/**
 * The ONNX protobuf, read and written at the wire level: as much as the load-time graph rewrites
 * need (grouped-attention.ts, logits-rows.ts). A rewrite changes the graph's node list and adds a
 * few small initializers or inputs; every other field, the weights among them, is copied as it is.
 */

// --- protobuf wire format (only what an ONNX graph edit needs) ----------------------------------

export interface Field {
  no: number;
  wire: number;
  /** The whole field, tag included. */
  start: number;
  end: number;
  /** Its value's bytes (length-delimited fields). */
  value: Uint8Array;
  /** Its value as a number (varint fields). */
  int: bigint;
}

function readVarint(buf: Uint8Array, pos: number): [bigint, number] {
  let result = 0n;
  let shift = 0n;
  for (;;) {
    if (pos >= buf.length) throw new Error('truncated varint');
    const b = buf[pos++]!;
    result |= BigInt(b & 0x7f) << shift;
    if (b < 0x80) return [result, pos];
    shift += 7n;
  }
}

export function* fields(buf: Uint8Array): Generator<Field> {
  let pos = 0;
  while (pos < buf.length) {
    const start = pos;
    const [tag, p] = readVarint(buf, pos);
    pos = p;
    const no = Number(tag >> 3n);
    const wire = Number(tag & 7n);
    let value = buf.subarray(pos, pos);
    let int = 0n;
    if (wire === 0) [int, pos] = readVarint(buf, pos);
    else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else if (wire === 2) {
      const [len, q] = readVarint(buf, pos);
      value = buf.subarray(q, q + Number(len));
      pos = q + Number(len);
    } else throw new Error(`unsupported wire type ${wire}`);
    yield { no, wire, start, end: pos, value, int };
  }
}

function varint(v: bigint | number): number[] {
  let x = BigInt.asUintN(64, BigInt(v));
  const out: number[] = [];
  while (x >= 0x80n) {
    out.push(Number(x & 0x7fn) | 0x80);
    x >>= 7n;
  }
  out.push(Number(x));
  return out;
}

export const utf8 = new TextEncoder();
export const text = new TextDecoder();

/** Collects a message's fields as parts, copied once, when done. */
export class Writer {
  private readonly parts: Uint8Array[] = [];
  private length = 0;
  private push(b: Uint8Array): void {
    this.parts.push(b);
    this.length += b.length;
  }
  bytes(no: number, value: Uint8Array): this {
    this.push(Uint8Array.from([...varint((no << 3) | 2), ...varint(value.length)]));
    this.push(value);
    return this;
  }
  /** A nested message, without copying its parts first (a graph holds the weights). */
  message(no: number, w: Writer): this {
    this.push(Uint8Array.from([...varint((no << 3) | 2), ...varint(w.length)]));
    for (const p of w.parts) this.push(p);
    return this;
  }
  string(no: number, s: string): this {
    return this.bytes(no, utf8.encode(s));
  }
  int(no: number, v: bigint | number): this {
    this.push(Uint8Array.from([...varint(no << 3), ...varint(v)]));
    return this;
  }
  raw(b: Uint8Array): this {
    this.push(b);
    return this;
  }
  done(): Uint8Array {
    return Buffer.concat(this.parts);
  }
}

// --- the graph, as far as the rewrite reads it ----------------------------------------------------

export interface Node {
  /** The node's encoded bytes (kept as they are unless the node is new). */
  raw: Uint8Array;
  opType: string;
  domain: string;
  inputs: string[];
  outputs: string[];
  /** INTS attributes, by name. */
  ints: Map<string, bigint[]>;
  /** INT attributes, by name. */
  int: Map<string, bigint>;
  /** A Constant node's value, when it is a small int64 tensor. */
  constInts: bigint[] | null;
  /** A Constant node's element count (1 for value_float / value_int). */
  constElements: number | null;
  /** It holds a subgraph (If, Loop, Scan), whose reads of outer tensors this rewrite does not follow. */
  subgraph: boolean;
}

function intList(f: Field): bigint[] {
  if (f.wire === 0) return [f.int];
  const out: bigint[] = [];
  for (let pos = 0; pos < f.value.length; ) {
    const [v, p] = readVarint(f.value, pos);
    out.push(BigInt.asIntN(64, v));
    pos = p;
  }
  return out;
}

/** A TensorProto's element count (the product of its dims; 1 for a scalar). */
export function elementsOf(buf: Uint8Array): number {
  let n = 1;
  for (const f of fields(buf)) if (f.no === 1) for (const d of intList(f)) n *= Number(d);
  return n;
}

/** An int64 TensorProto's values (raw_data or int64_data), or null for any other tensor. */
export function tensorInts(buf: Uint8Array): bigint[] | null {
  let type = 0;
  let raw: Uint8Array | null = null;
  const ints: bigint[] = [];
  for (const f of fields(buf)) {
    if (f.no === 2) type = Number(f.int);
    else if (f.no === 9) raw = f.value;
    else if (f.no === 7) ints.push(...intList(f).map((v) => BigInt.asIntN(64, v)));
  }
  if (type !== 7) return null;
  // A copy: `raw` may be a view into a larger (pooled) buffer.
  if (raw) return raw.length % 8 === 0 ? Array.from(new BigInt64Array(new Uint8Array(raw).buffer)) : null;
  return ints;
}

export function parseNode(raw: Uint8Array): Node {
  const node: Node = { raw, opType: '', domain: '', inputs: [], outputs: [], ints: new Map(), int: new Map(), constInts: null, constElements: null, subgraph: false };
  for (const f of fields(raw)) {
    if (f.no === 1) node.inputs.push(text.decode(f.value));
    else if (f.no === 2) node.outputs.push(text.decode(f.value));
    else if (f.no === 4) node.opType = text.decode(f.value);
    else if (f.no === 7) node.domain = text.decode(f.value);
    else if (f.no === 5) {
      let name = '';
      const ints: bigint[] = [];
      let one: bigint | null = null;
      let tensor: Uint8Array | null = null;
      for (const a of fields(f.value)) {
        if (a.no === 1) name = text.decode(a.value);
        else if (a.no === 3) one = BigInt.asIntN(64, a.int);
        else if (a.no === 8) ints.push(...intList(a));
        else if (a.no === 5) tensor = a.value;
        else if (a.no === 6 || a.no === 11) node.subgraph = true;
      }
      if (ints.length) node.ints.set(name, ints);
      if (one !== null) node.int.set(name, one);
      if (tensor && name === 'value') {
        node.constInts = tensorInts(tensor);
        node.constElements = elementsOf(tensor);
      } else if (name === 'value_float' || name === 'value_int') node.constElements = 1;
    }
  }
  return node;
}

let fresh = 0;

/** A number for a new name, unique in the process (new nodes, tensors and initializers of every rewrite). */
export const nextId = () => ++fresh;

/** A new node; `attrs`: INT (a number) and INTS (an array) attributes. */
export function newNode(opType: string, inputs: string[], outputs: string[], attrs: Record<string, number | number[]> = {}): Node {
  const w = new Writer();
  for (const i of inputs) w.string(1, i);
  for (const o of outputs) w.string(2, o);
  w.string(3, `switchyard_${opType}_${nextId()}`).string(4, opType);
  for (const [name, v] of Object.entries(attrs)) {
    const a = new Writer().string(1, name);
    if (Array.isArray(v)) {
      a.int(20, 7);
      for (const x of v) a.int(8, x);
    } else a.int(20, 2).int(3, v);
    w.bytes(5, a.done());
  }
  return { raw: w.done(), opType, domain: '', inputs, outputs, ints: new Map(), int: new Map(), constInts: null, constElements: null, subgraph: false };
}

/** The model's bytes with its graph field (`graphField`, one of its fields `top`) replaced by `graph`; every other field copied as it is. */
export function withGraph(model: Uint8Array, top: readonly Field[], graphField: Field, graph: Writer): Uint8Array {
  const m = new Writer();
  for (const f of top) {
    if (f === graphField) m.message(7, graph);
    else m.raw(model.subarray(f.start, f.end));
  }
  return m.done();
}

export function int64Tensor(name: string, values: number[]): Uint8Array {
  const data = new BigInt64Array(values.map(BigInt));
  return new Writer().int(1, values.length).int(2, 7).string(8, name).bytes(9, new Uint8Array(data.buffer)).done();
}

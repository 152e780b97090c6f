/**
 * A minimal ONNX ModelProto encoder: just enough protobuf to describe the small single-op graphs the ORT
 * backend runs (field numbers from onnx/onnx.proto). Hand-written because the graphs are tiny and fixed;
 * pulling a protobuf runtime plus generated ONNX bindings would be heavier than these few lines.
 */

class ProtoWriter {
  /** chunks, so that megabyte initializers are copied as blocks rather than byte by byte */
  private parts: Uint8Array[] = [];
  private size = 0;

  varint(field: number, value: number | bigint): this {
    this.key(field, 0);
    this.rawVarint(BigInt(value));
    return this;
  }

  bytes(field: number, data: Uint8Array): this {
    this.key(field, 2);
    this.rawVarint(BigInt(data.length));
    this.push(data);
    return this;
  }

  string(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }

  /** A nested message: its chunks are adopted, not copied, so weights are copied once, in finish(). */
  message(field: number, w: ProtoWriter): this {
    this.key(field, 2);
    this.rawVarint(BigInt(w.size));
    for (const p of w.parts) this.push(p);
    return this;
  }

  finish(): Uint8Array {
    const out = new Uint8Array(this.size);
    let o = 0;
    for (const p of this.parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }

  private push(p: Uint8Array): void {
    this.parts.push(p);
    this.size += p.length;
  }

  private key(field: number, wire: number): void {
    this.rawVarint(BigInt((field << 3) | wire));
  }

  private rawVarint(v: bigint): void {
    if (v < 0n) v = BigInt.asUintN(64, v);
    const bytes: number[] = [];
    do {
      let byte = Number(v & 0x7fn);
      v >>= 7n;
      if (v > 0n) byte |= 0x80;
      bytes.push(byte);
    } while (v > 0n);
    this.push(Uint8Array.from(bytes));
  }
}

export const ElemType = { FLOAT: 1, UINT8: 2, INT32: 6, INT64: 7, FLOAT16: 10, DOUBLE: 11 } as const;
export type ElemTypeId = (typeof ElemType)[keyof typeof ElemType];

export interface ValueInfo {
  name: string;
  elemType: ElemTypeId;
  /** number = fixed size, string = symbolic dimension */
  dims: (number | string)[];
}

export interface NodeSpec {
  opType: string;
  inputs: string[];
  outputs: string[];
  domain?: string;
  intAttrs?: Record<string, number>;
  intsAttrs?: Record<string, number[]>;
}

const ATTR_INT = 2;
const ATTR_INTS = 7;

function valueInfo(v: ValueInfo): ProtoWriter {
  const shape = new ProtoWriter();
  for (const d of v.dims) {
    const dim = new ProtoWriter();
    if (typeof d === 'number') dim.varint(1, d);
    else dim.string(2, d);
    shape.message(1, dim);
  }
  const tensorType = new ProtoWriter().varint(1, v.elemType).message(2, shape);
  const type = new ProtoWriter().message(1, tensorType);
  return new ProtoWriter().string(1, v.name).message(2, type);
}

function node(n: NodeSpec, index: number): ProtoWriter {
  const w = new ProtoWriter();
  for (const i of n.inputs) w.string(1, i);
  for (const o of n.outputs) w.string(2, o);
  w.string(3, `n${index}`).string(4, n.opType);
  for (const [name, value] of Object.entries(n.intAttrs ?? {})) {
    w.message(5, new ProtoWriter().string(1, name).varint(3, value).varint(20, ATTR_INT));
  }
  for (const [name, values] of Object.entries(n.intsAttrs ?? {})) {
    const attr = new ProtoWriter().string(1, name);
    for (const v of values) attr.varint(8, v);
    w.message(5, attr.varint(20, ATTR_INTS));
  }
  if (n.domain) w.string(7, n.domain);
  return w;
}

/** A float32 array's bytes, as an Initializer holds them (a view, not a copy). */
export const float32Bytes = (x: Float32Array): Uint8Array => new Uint8Array(x.buffer, x.byteOffset, x.byteLength);

/** A constant baked into the graph (weights the engine may pre-pack into its own layout at session creation). */
export interface Initializer {
  name: string;
  elemType: ElemTypeId;
  dims: number[];
  /** little-endian raw bytes */
  data: Uint8Array;
}

function tensorProto(t: Initializer): ProtoWriter {
  const w = new ProtoWriter();
  for (const d of t.dims) w.varint(1, d);
  return w.varint(2, t.elemType).string(8, t.name).bytes(9, t.data);
}

export function encodeModel(
  nodes: NodeSpec[],
  inputs: ValueInfo[],
  outputs: ValueInfo[],
  initializers: Initializer[] = [],
  opset = 17,
): Uint8Array {
  const graph = new ProtoWriter();
  nodes.forEach((n, i) => graph.message(1, node(n, i)));
  graph.string(2, 'g');
  for (const t of initializers) graph.message(5, tensorProto(t));
  for (const i of inputs) graph.message(11, valueInfo(i));
  for (const o of outputs) graph.message(12, valueInfo(o));
  const model = new ProtoWriter()
    .varint(1, 8) // ir_version 8 pairs with opset 17
    .string(2, 'gptq-ts')
    .message(7, graph)
    .message(8, new ProtoWriter().string(1, '').varint(2, opset));
  if (nodes.some((n) => n.domain === MS_DOMAIN)) model.message(8, new ProtoWriter().string(1, MS_DOMAIN).varint(2, 1));
  return model.finish();
}

/** onnxruntime's contrib-op domain (MatMulNBits and friends) */
export const MS_DOMAIN = 'com.microsoft';

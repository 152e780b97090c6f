/**
 * A minimal ONNX ModelProto encoder: just enough protobuf to describe the small single-op graphs the ORT
 * backend runs (field numbers from onnx/onnx.proto). Hand-written because the graphs are tiny and fixed;
 * pulling a protobuf runtime plus generated ONNX bindings would be heavier than these few lines.
 */

class ProtoWriter {
  private parts: number[] = [];

  varint(field: number, value: number | bigint): this {
    this.key(field, 0);
    this.rawVarint(BigInt(value));
    return this;
  }

  bytes(field: number, data: Uint8Array): this {
    this.key(field, 2);
    this.rawVarint(BigInt(data.length));
    for (const b of data) this.parts.push(b);
    return this;
  }

  string(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }

  message(field: number, w: ProtoWriter): this {
    return this.bytes(field, w.finish());
  }

  finish(): Uint8Array {
    return Uint8Array.from(this.parts);
  }

  private key(field: number, wire: number): void {
    this.rawVarint(BigInt((field << 3) | wire));
  }

  private rawVarint(v: bigint): void {
    if (v < 0n) v = BigInt.asUintN(64, v);
    do {
      let byte = Number(v & 0x7fn);
      v >>= 7n;
      if (v > 0n) byte |= 0x80;
      this.parts.push(byte);
    } while (v > 0n);
  }
}

export const ElemType = { FLOAT: 1, INT32: 6, INT64: 7, FLOAT16: 10, DOUBLE: 11 } as const;
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

export function encodeModel(nodes: NodeSpec[], inputs: ValueInfo[], outputs: ValueInfo[], opset = 17): Uint8Array {
  const graph = new ProtoWriter();
  nodes.forEach((n, i) => graph.message(1, node(n, i)));
  graph.string(2, 'g');
  for (const i of inputs) graph.message(11, valueInfo(i));
  for (const o of outputs) graph.message(12, valueInfo(o));
  return new ProtoWriter()
    .varint(1, 8) // ir_version 8 pairs with opset 17
    .string(2, 'gptq-ts')
    .message(7, graph)
    .message(8, new ProtoWriter().string(1, '').varint(2, opset))
    .finish();
}

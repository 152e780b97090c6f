/**
 * The part of the WebAssembly JS API that the kernels of tensor/ use. Node has it as a global, but TypeScript declares it only
 * in the DOM library, which this project does not load.
 */
declare namespace WebAssembly {
  function validate(bytes: BufferSource): boolean;
  interface MemoryDescriptor {
    initial: number;
    maximum?: number;
    shared?: boolean;
  }
  class Memory {
    constructor(descriptor: MemoryDescriptor);
    readonly buffer: ArrayBuffer | SharedArrayBuffer;
    grow(pages: number): number;
  }
  class Module {
    constructor(bytes: BufferSource);
  }
  class Instance {
    constructor(module: Module, imports?: Record<string, Record<string, unknown>>);
    readonly exports: Record<string, unknown>;
  }
}

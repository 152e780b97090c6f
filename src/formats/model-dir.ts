import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tensorBytes, writeSafetensors, type TensorToWrite } from '../io/safetensors.js';

export const TOKENIZER_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'tokenizer.model',
  'generation_config.json',
];

/**
 * Write a new Hugging Face model directory (the caller makes it appear atomically): config.json and other JSON
 * files, the source's tokenizer files, and the tensors as model.safetensors, or as numbered shards with
 * model.safetensors.index.json when they exceed maxShardBytes.
 */
export async function writeModelDir(
  srcDir: string,
  outDir: string,
  o: { json: Record<string, object | undefined>; tensors: Map<string, TensorToWrite>; maxShardBytes?: number },
): Promise<void> {
  const shards = splitShards(o.tensors, o.maxShardBytes ?? Infinity);
  mkdirSync(outDir);
  for (const [file, value] of Object.entries(o.json)) if (value) writeFileSync(join(outDir, file), JSON.stringify(value, null, 2) + '\n');
  for (const f of TOKENIZER_FILES) if (existsSync(join(srcDir, f))) copyFileSync(join(srcDir, f), join(outDir, f));
  if (shards.length === 1) {
    await writeSafetensors(join(outDir, 'model.safetensors'), shards[0]!);
    return;
  }
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (const [i, shard] of shards.entries()) {
    const file = `model-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`;
    await writeSafetensors(join(outDir, file), shard);
    for (const [name, t] of shard) {
      weightMap[name] = file;
      total += tensorBytes(t);
    }
  }
  writeFileSync(
    join(outDir, 'model.safetensors.index.json'),
    JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + '\n',
  );
}

function splitShards(tensors: Map<string, TensorToWrite>, maxBytes: number): Map<string, TensorToWrite>[] {
  const shards: Map<string, TensorToWrite>[] = [new Map()];
  let size = 0;
  for (const [name, t] of tensors) {
    if (size > 0 && size + tensorBytes(t) > maxBytes) {
      shards.push(new Map());
      size = 0;
    }
    shards.at(-1)!.set(name, t);
    size += tensorBytes(t);
  }
  return shards;
}

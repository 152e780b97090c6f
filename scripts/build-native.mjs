// Compiles the native kernels (src/tensor/native/kernels.c: the 4-bit matmul and decode attention) into
// build/kernels.node, against the running Node's own headers, with the system C compiler ($CC, else cc). Part of
// `npm run build`, where a warning is an error (-Werror), and the package's install step (`--install`: an
// installed package compiles them on the user's machine, whose compiler may warn where ours does not, so there a
// failed compile is reported and skipped, not fatal). Where there is nothing to build them with (not x86-64, no
// compiler, no headers) it says so and leaves them out: generation then runs on onnxruntime instead.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const source = join(root, 'src/tensor/native/kernels.c');
const out = join(root, 'build/kernels.node');
const headers = join(dirname(process.execPath), '..', 'include', 'node');
const cc = process.env.CC || 'cc';
const install = process.argv.includes('--install');

function skip(why) {
  console.warn(`build-native: ${why}; the native kernels are left out (generation runs on onnxruntime)`);
  process.exit(0);
}

if (process.arch !== 'x64' || process.platform !== 'linux') skip(`${process.platform}-${process.arch} is not linux-x64`);
if (!existsSync(join(headers, 'node_api.h'))) skip(`no node_api.h beside this Node (${headers})`);
if (spawnSync(cc, ['--version'], { stdio: 'ignore' }).status !== 0) skip(`no C compiler (${cc})`);
mkdirSync(dirname(out), { recursive: true });
const tmp = `${out}.tmp-${process.pid}`;
const flags = ['-O3', '-std=gnu11', '-shared', '-fPIC', '-pthread', '-Wall', '-Wextra', ...(install ? [] : ['-Werror'])];
try {
  execFileSync(cc, [...flags, '-I', headers, source, '-o', tmp, '-lm'], { stdio: 'inherit' });
} catch (e) {
  rmSync(tmp, { force: true });
  if (!install) throw e;
  skip(`${cc} failed on ${source}`);
}
renameSync(tmp, out);
console.log(`build-native: wrote ${out}`);

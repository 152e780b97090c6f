"""Golden dequantized values for llama.cpp's block formats, from the `gguf` Python package's own dequantizer.

Random blocks of each type (random bytes, with each fp16 factor drawn as a finite half in [-2, 2]) and the float32
weights gguf.quants.dequantize gives for them. test/ggml-blocks.test.ts checks that our unpack + dequantize gives the
same weights bit for bit and that our pack writes the same bytes back. Run: python scripts/gguf/make_block_fixtures.py
(needs `pip install gguf numpy` from the local mirror); writes test/fixtures/ggml-blocks.json.
"""

import base64
import json
import os

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

# type -> (bytes per block, byte offsets of its fp16 factors)
TYPES = {
    "Q4_0": (T.Q4_0, 18, [0]),
    "Q4_1": (T.Q4_1, 20, [0, 2]),
    "Q5_0": (T.Q5_0, 22, [0]),
    "Q5_1": (T.Q5_1, 24, [0, 2]),
    "Q8_0": (T.Q8_0, 34, [0]),
    "IQ4_NL": (T.IQ4_NL, 18, [0]),
    "Q2_K": (T.Q2_K, 84, [80, 82]),
    "Q3_K": (T.Q3_K, 110, [108]),
    "Q4_K": (T.Q4_K, 144, [0, 2]),
    "Q5_K": (T.Q5_K, 176, [0, 2]),
    "Q6_K": (T.Q6_K, 210, [208]),
}
BLOCKS = 6

rng = np.random.default_rng(20261129)
out = {}
for name, (qtype, nbytes, halves) in TYPES.items():
    raw = bytearray(rng.integers(0, 256, size=BLOCKS * nbytes, dtype=np.uint8).tobytes())
    for b in range(BLOCKS):
        for off in halves:
            h = np.float16(rng.uniform(-2, 2)).tobytes()
            raw[b * nbytes + off : b * nbytes + off + 2] = h
    values = dequantize(np.frombuffer(bytes(raw), dtype=np.uint8), qtype).astype(np.float32).reshape(-1)
    out[name] = {
        "bytes": base64.b64encode(bytes(raw)).decode(),
        "values": base64.b64encode(values.tobytes()).decode(),
    }

path = os.path.join(os.path.dirname(__file__), "..", "..", "test", "fixtures", "ggml-blocks.json")
with open(path, "w") as f:
    json.dump(out, f, indent=0)
print("wrote", path, {k: len(base64.b64decode(v["values"])) // 4 for k, v in out.items()})

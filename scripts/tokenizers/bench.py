#!/usr/bin/env python3
"""Throughput of the Python `tokenizers` library, for `npm run bench` (bench/foundation.ts), on the same text.

    bench.py CORPUS_TXT NAME=TOKENIZER_JSON[.gz] ...

Prints one JSON line per tokenizer: ids of encode(text) (one call over the whole text, as gptq-ts encodes it)
and MB/s of it, and MB/s of encode_batch over the text's lines (the library's multi-threaded path).
"""

import gzip
import json
import sys
import time

import tokenizers
from tokenizers import Tokenizer


def main():
    text = open(sys.argv[1], encoding="utf-8").read()
    mb = len(text.encode("utf-8")) / 1e6
    lines = text.split("\n")
    for arg in sys.argv[2:]:
        name, path = arg.split("=", 1)
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            tok = Tokenizer.from_str(f.read())
        t = time.perf_counter()
        n = len(tok.encode(text).ids)
        single = time.perf_counter() - t
        t = time.perf_counter()
        tok.encode_batch(lines)
        batch = time.perf_counter() - t
        print(json.dumps({"name": name, "version": tokenizers.__version__, "tokens": n, "mbps": mb / single, "batch_mbps": mb / batch}), flush=True)


if __name__ == "__main__":
    main()

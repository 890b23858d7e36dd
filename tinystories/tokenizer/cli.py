"""``tinystories tokenizer train|restrict|encode|export-hf``: the tokenizer from the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tinystories.corpus import EOT, read_text_chunks
from tinystories.tokenizer.bpe import Tokenizer, resolve_tokenizer


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = sub.add_parser("train", help="train a byte-level BPE on text files")
    p.add_argument("files", nargs="+", type=Path, help="UTF-8 .txt or .txt.zst files")
    p.add_argument("--vocab-size", type=int, required=True, help="total tokens: 256 bytes + merges + special tokens")
    p.add_argument("--special-tokens", nargs="*", default=[EOT], help=f"default: {EOT}")
    p.add_argument("--out", type=Path, required=True, help="output JSON (our format)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--errors", choices=["strict", "replace"], default="strict", help="invalid UTF-8: fail or replace")

    p = sub.add_parser("restrict", help="keep the K most frequent tokens of a corpus (closed under merges)")
    p.add_argument("--tokenizer", default="gpt2", help="name, JSON file or folder (default gpt2)")
    p.add_argument("--top-k", type=int, required=True)
    p.add_argument("corpus", nargs="+", type=Path, help="UTF-8 .txt or .txt.zst files")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--errors", choices=["strict", "replace"], default="strict")

    p = sub.add_parser("encode", help="print the token ids of text (or save them as .npy)")
    p.add_argument("--tokenizer", default="gpt2")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="text to encode")
    src.add_argument("--file", type=Path, help="a UTF-8 .txt or .txt.zst file")
    p.add_argument("--out", type=Path, default=None, help="write ids to this .npy instead of printing them")
    p.add_argument("--allowed-special", default="all", help='"all", "none_raise" or comma-separated tokens')
    p.add_argument("--errors", choices=["strict", "replace"], default="strict")

    p = sub.add_parser("export-hf", help="write a Hugging Face tokenizers tokenizer.json")
    p.add_argument("--tokenizer", default="gpt2")
    p.add_argument("--out", type=Path, required=True, help="tokenizer.json path or folder")


def run_cli(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as e:
        hint = " (--errors replace replaces bad bytes with U+FFFD)" if "invalid UTF-8" in str(e) else ""
        print(f"tinystories tokenizer {args.action}: error: {e}{hint}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.action == "train":
        tok = Tokenizer.train(
            args.files,
            args.vocab_size,
            args.special_tokens,
            num_threads=args.threads,
            errors=args.errors,
            progress=True,
        )
        tok.save(args.out)
        print(f"trained {tok!r} -> {args.out}")
    elif args.action == "restrict":
        tok = resolve_tokenizer(args.tokenizer).restrict(
            args.top_k, args.corpus, num_threads=args.threads, errors=args.errors, progress=True
        )
        tok.save(args.out)
        print(f"restricted to {tok!r} -> {args.out}")
    elif args.action == "encode":
        tok = resolve_tokenizer(args.tokenizer)
        allowed = (
            args.allowed_special
            if args.allowed_special in ("all", "none_raise")
            else set(args.allowed_special.split(","))
        )
        text = args.text if args.text is not None else "".join(read_text_chunks(args.file, args.errors))
        ids = tok.encode_to_numpy(text, allowed_special=allowed)
        if args.out is not None:
            np.save(args.out, ids)
            print(f"{len(ids)} tokens -> {args.out}")
        else:
            print(" ".join(map(str, ids.tolist())))
    elif args.action == "export-hf":
        resolve_tokenizer(args.tokenizer).save_hf(args.out)
        print(f"wrote {args.out}")
    return 0

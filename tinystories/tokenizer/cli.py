"""``tinystories tokenizer train|restrict|encode|export-hf``: the tokenizer from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tinystories.corpus import EOT, read_text_chunks
from tinystories.runtime.arguments import (
    ArgumentParser,
    Container,
    add_no_progress_argument,
    add_out_argument,
    add_threads_argument,
    add_tokenizer_argument,
    add_vocab_size_argument,
    one_line_errors,
)
from tinystories.tokenizer.bpe import Tokenizer, resolve_tokenizer


def _add_errors_argument(parser: Container) -> None:
    parser.add_argument(
        "--errors",
        choices=["strict", "replace"],
        default="strict",
        help="invalid UTF-8 in the input: fail, or replace it with U+FFFD",
    )


def add_cli_arguments(parser: ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = sub.add_parser("train", help="train a byte-level BPE on text files")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="UTF-8 .txt or .txt.zst files")
    add_vocab_size_argument(p, required=True, note="256 bytes + merges + special tokens")
    p.add_argument("--special-tokens", nargs="*", default=[EOT], help="tokens never split or merged")
    add_out_argument(p, "the tokenizer JSON (our format)", required=True)
    add_threads_argument(p)
    _add_errors_argument(p)
    add_no_progress_argument(p)

    p = sub.add_parser("restrict", help="keep the N most frequent tokens of a corpus (closed under merges)")
    add_tokenizer_argument(p, note="the tokenizer to restrict")
    add_vocab_size_argument(
        p, required=True, note="the 256 bytes, the special tokens, then the tokens most frequent in the corpus"
    )
    p.deprecate("--top-k", "--vocab-size")
    p.add_argument("corpus", nargs="+", type=Path, metavar="FILE", help="UTF-8 .txt or .txt.zst files")
    add_out_argument(p, "the restricted tokenizer JSON (our format)", required=True)
    add_threads_argument(p)
    _add_errors_argument(p)
    add_no_progress_argument(p)

    p = sub.add_parser("encode", help="print the token ids of text (or save them as .npy)")
    add_tokenizer_argument(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="text to encode")
    src.add_argument("--file", type=Path, help="a UTF-8 .txt or .txt.zst file to encode")
    add_out_argument(p, "the ids as .npy (default: print them)")
    p.add_argument("--allowed-special", default="all", help='"all", "none_raise" or comma-separated tokens')
    _add_errors_argument(p)

    p = sub.add_parser("export-hf", help="write a Hugging Face tokenizers tokenizer.json")
    add_tokenizer_argument(p)
    add_out_argument(p, "the tokenizer.json (a file, or a folder to put it in)", required=True)


@one_line_errors("tinystories tokenizer")
def run_cli(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except ValueError as e:
        if "invalid UTF-8" in str(e):
            raise ValueError(f"{e} (--errors replace replaces bad bytes with U+FFFD)") from None
        raise


def _run(args: argparse.Namespace) -> int:
    if args.action == "train":
        tok = Tokenizer.train(
            args.files,
            args.vocab_size,
            args.special_tokens,
            num_threads=args.threads,
            errors=args.errors,
            progress=not args.no_progress,
        )
        tok.save(args.out)
        print(f"trained {tok!r} -> {args.out}")
    elif args.action == "restrict":
        tok = resolve_tokenizer(args.tokenizer).restrict(
            args.vocab_size, args.corpus, num_threads=args.threads, errors=args.errors, progress=not args.no_progress
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

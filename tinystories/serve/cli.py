"""``tinystories serve``: checkpoints behind an OpenAI-compatible API, with a playground at ``/``.

    tinystories serve runs/8m runs/28M/checkpoints/step_00020000.pt runs/sweep --port 8000
    OPENAI_API_KEY=... tinystories serve runs/8m --host 0.0.0.0 --api-key-env OPENAI_API_KEY

Needs the ``serve`` extra (``pip install "tinystories[serve]"``: FastAPI + uvicorn).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tinystories.runtime.arguments import (
    ArgumentParser,
    add_api_key_env_argument,
    add_checkpoint_arguments,
    add_device_arguments,
    one_line_errors,
)
from tinystories.runtime.errors import WorkFailed


def add_cli_arguments(parser: ArgumentParser) -> None:
    add_checkpoint_arguments(
        parser,
        nargs="+",
        note="here a run folder serves each of its checkpoints, and any other folder the runs found up to 3 "
        "levels below it (a sweep folder's runs included)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: this machine only, answering loopback Host names only)",
    )
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    add_api_key_env_argument(
        parser, default=None, note="callers must send its value (401 without it); default none here (no key needed)"
    )
    parser.add_argument(
        "--max-models",
        type=int,
        default=2,
        help="models kept in memory; the least recently used is evicted to load another",
    )
    parser.add_argument(
        "--max-batch", type=int, default=32, help="rows decoded together at most (more wait for a row to end)"
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=0.0,
        help="how long a request reaching an idle model waits for others to start with it (later ones join "
        "the running batch at its next step)",
    )
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger request bodies are refused (413)")
    parser.add_argument(
        "--eval-dir",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="also read grades.jsonl / probes.jsonl from here for the playground (eval --out DIR)",
    )
    add_device_arguments(parser)


@one_line_errors("tinystories serve")
def run_cli(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise WorkFailed(
            f'{exc.name or exc} is not installed; install the serve extra: pip install "tinystories[serve]"'
        ) from None
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ValueError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
    if args.max_models < 1 or args.max_batch < 1:
        raise ValueError(f"--max-models ({args.max_models}) and --max-batch ({args.max_batch}) must be >= 1")

    from tinystories.runtime.device import resolve_device, resolve_execution
    from tinystories.serve.app import create_app
    from tinystories.serve.models import ModelPool, discover_models

    entries = discover_models(args.checkpoints)
    device = resolve_device(args.device, 0)
    # decoding with the KV cache runs the plain path, eager, as `tinystories sample` does
    dtype = resolve_execution(device, dtype=args.dtype, impl="torch", compile=False).dtype
    pool = ModelPool(
        entries,
        max_models=args.max_models,
        device=str(device),
        dtype=dtype,
        max_batch=args.max_batch,
        wait_s=args.batch_wait_ms / 1000,
    )
    app = create_app(
        pool, api_key=api_key, max_body_bytes=args.max_body_bytes, eval_dirs=args.eval_dir, bind_host=args.host
    )
    print(
        f"serving {len(entries)} model(s) on http://{args.host}:{args.port}/ (playground) and "
        f"http://{args.host}:{args.port}/v1 (OpenAI API): {', '.join(entries)}",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0

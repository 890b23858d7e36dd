"""``tinystories serve``: checkpoints behind an OpenAI-compatible API, with a playground at ``/``.

    tinystories serve runs/8m runs/28M/checkpoints/step_00020000.pt runs/sweep --port 8000
    OPENAI_API_KEY=... tinystories serve runs/8m --host 0.0.0.0 --api-key-env OPENAI_API_KEY

Needs the ``serve`` extra (``pip install "tinystories[serve]"``: FastAPI + uvicorn).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="CKPT_OR_RUN_OR_SWEEP_DIR",
        help="checkpoint files, run directories (each checkpoint) or sweep directories (each run)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api-key-env", metavar="VAR", help="require this environment variable's value as the API key (401 without it)"
    )
    parser.add_argument(
        "--max-models",
        type=int,
        default=2,
        help="models kept in memory; the least recently used is evicted to load another",
    )
    parser.add_argument("--max-batch", type=int, default=32, help="rows batched into one forward pass at most")
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=10.0,
        help="how long the first waiting request waits for others to batch with",
    )
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20)
    parser.add_argument(
        "--eval-dir",
        type=Path,
        action="append",
        default=[],
        help="also read grades.jsonl / probes.jsonl from here for the playground",
    )
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")


def run_cli(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        sys.exit(
            f"tinystories serve: {exc.name or exc} is not installed; install the serve extra: "
            f'pip install "tinystories[serve]"'
        )
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            sys.exit(f"tinystories serve: --api-key-env {args.api_key_env}: that environment variable is not set")
    if args.max_models < 1 or args.max_batch < 1:
        sys.exit(f"tinystories serve: --max-models ({args.max_models}) and --max-batch ({args.max_batch}) must be >= 1")
    import torch

    from tinystories.serve.app import create_app
    from tinystories.serve.models import ModelPool, discover_models

    try:
        entries = discover_models(args.paths)
    except (OSError, ValueError) as exc:
        sys.exit(f"tinystories serve: {exc}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pool = ModelPool(
        entries, max_models=args.max_models, device=device, max_batch=args.max_batch, wait_s=args.batch_wait_ms / 1000
    )
    app = create_app(pool, api_key=api_key, max_body_bytes=args.max_body_bytes, eval_dirs=args.eval_dir)
    print(
        f"serving {len(entries)} model(s) on http://{args.host}:{args.port}/ (playground) and "
        f"http://{args.host}:{args.port}/v1 (OpenAI API): {', '.join(entries)}",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0

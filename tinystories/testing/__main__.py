"""``python -m tinystories.testing --port-file F``: the OpenAI-compatible test server in its own process
(benchmarks), serving until killed; the chosen port is written to ``--port-file`` once it listens."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from tinystories.atomic import atomic_write_text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="OpenAI-compatible test server on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, help="write the port here once listening")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--log", type=Path, help="append one JSON line per request")
    args = parser.parse_args(argv)
    try:
        from tinystories.testing.openai_server import Faults, OpenAIServer
    except ModuleNotFoundError as exc:
        sys.exit(f"python -m tinystories.testing: {exc}")
    server = OpenAIServer(faults=Faults(rate=args.fault_rate), port=args.port, log_path=args.log).start()
    if args.port_file:
        atomic_write_text(args.port_file, str(server.port))
    try:
        threading.Event().wait()  # the server runs in its own thread until the process is killed
    except KeyboardInterrupt:
        server.stop()
    return 0


raise SystemExit(main())

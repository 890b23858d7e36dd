"""``python -m tinystories.testing --port-file F``: the OpenAI-compatible test server in its own process
(benchmarks), serving until killed; the chosen port is written to ``--port-file`` once it listens."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from tinystories.atomic import atomic_write_text
from tinystories.testing.openai_server import Faults, OpenAIServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="OpenAI-compatible test server on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, help="write the port here once listening")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--log", type=Path, help="append one JSON line per request")
    args = parser.parse_args(argv)
    server = OpenAIServer(faults=Faults(rate=args.fault_rate), port=args.port, log_path=args.log)

    async def run() -> None:
        await server.serve()
        if args.port_file:
            atomic_write_text(args.port_file, str(server.port))
        await asyncio.Event().wait()

    asyncio.run(run())
    return 0


raise SystemExit(main())

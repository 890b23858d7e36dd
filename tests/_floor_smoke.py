"""Run by ``tests/test_packaging.py`` inside a virtual environment holding the declared floors of the light
requirements: checks that the floors are what is imported, runs every import statement of ours that names them
(lazy ones included), and drives the code paths that use them against the local test servers.

    python _floor_smoke.py SPEC.json     # {"versions": {dist: version}, "imports": [source], "site_dirs": [dir]}
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import site
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from packaging.version import Version


def check_versions(versions: dict[str, str]) -> None:
    found = {dist: importlib.metadata.version(dist) for dist in versions}
    wrong = {dist: v for dist, v in found.items() if Version(v) != Version(versions[dist])}
    assert not wrong, f"imported {wrong}, not the floors {versions}"


def run_imports(sources: list[str]) -> None:
    for source in sources:
        try:
            exec(source, {})
        except ImportError as e:
            raise AssertionError(f"{source!r} fails at the floors: {e}") from e


def synthesize_online_and_batch(tmp: Path) -> None:
    """openai + httpx2 (both transports) and rich's progress bars, through the real client."""
    from tinystories.llm import ClientConfig
    from tinystories.synth import SynthConfig, synthesize
    from tinystories.testing import OpenAIServer

    with OpenAIServer() as server:
        ours = ClientConfig(base_url=server.url, api_key="test")  # our keep-alive transport under the SDK
        stock = ClientConfig(base_url=server.url, api_key="test", http_transport="httpx")
        for name, client, batch_api in (("keepalive", ours, False), ("httpx", stock, False), ("batch", ours, True)):
            config = SynthConfig(
                n=3,
                out=tmp / f"{name}.jsonl",
                model="test-model",
                client=client,
                batch_api=batch_api,
                batch_poll_s=0.02,
            )
            summary = synthesize(config)
            assert summary.written == 3 and summary.failed == 0, (name, summary)


def download_from_the_hub(tmp: Path) -> None:
    """huggingface_hub's metadata and resumable GET, and httpx2's errors, against the fake Hub."""
    from tinystories.data.download import DATASETS, download
    from tinystories.testing import FakeHub

    files = {name: f"{name}: Once upon a time.\n".encode() * 100 for name in DATASETS["v1"]}
    with FakeHub(files) as hub:
        # Before huggingface_hub is first imported: its constants read the environment once.
        os.environ.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
        written = download(["v1"], tmp / "raw", progress=False)
    assert {p.name: p.read_bytes() for p in written} == files


def serve_without_models() -> None:
    """fastapi, starlette, pydantic and uvicorn: the app answers, and a bad request is a 400 in OpenAI's shape."""
    from tinystories.serve.app import create_app
    from tinystories.serve.models import ModelPool
    from tinystories.serve.server import serve_in_thread

    def post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    with serve_in_thread(create_app(ModelPool({}))) as url:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as response:
            assert json.loads(response.read())["data"] == []
        status, body = post(f"{url}/v1/chat/completions", b"{not json")
        assert status == 400 and body["error"]["code"] == "invalid_json", body
        status, body = post(f"{url}/v1/chat/completions", json.dumps({"model": "m", "messages": []}).encode())
        assert status == 400 and body["error"]["param"] == "messages", body


def train_config_from_the_command_line(tmp: Path) -> None:
    """pydantic (docstrings as help, validation) and pydantic-settings (the trainer's options): the spellings
    tinystories-train accepts, one-line errors, and --print-config read back."""
    import contextlib
    import io

    from tinystories.train import load_config, main

    def run(argv: list[str]) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        return code, out.getvalue(), err.getvalue()

    code, printed, _ = run(["--max_steps", "1e4", "--compile", "--seq-len=none", "--resume=false", "--print-config"])
    assert code == 0 and "max_steps = 10000" in printed and "compile = true" in printed, printed
    (tmp / "printed.toml").write_text(printed)
    assert load_config(str(tmp / "printed.toml")) == load_config(
        None, {"max_steps": "1e4", "compile": "true"} | {"seq_len": "none"}
    )
    code, _, err = run(["--hidden-size=30", "--num-heads=4"])
    assert (
        code == 2 and err == "tinystories-train: error: command line: hidden_size=30 is not divisible by num_heads=4\n"
    )


def files_and_formats(tmp: Path) -> None:
    """zstandard (corpus), jsonschema (index.json), safetensors (HF export), submitit (the local executor)."""
    import torch
    import zstandard

    from tinystories.corpus import read_text
    from tinystories.data.shards import schema_problems
    from tinystories.model import GPTNeo, config_from_preset
    from tinystories.model.hf import export_hf, load_hf_model
    from tinystories.sweep.cluster import ClusterOptions, make_executor
    from tinystories.sweep.grid import SweepConfig

    (tmp / "a.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(b"Once upon a time."))
    assert read_text(tmp / "a.txt.zst") == "Once upon a time."
    assert schema_problems({"version": "x"}, tmp / "index.json")
    config = config_from_preset("demo", vocab_size=64, hidden_size=16, num_layers=1, max_position_embeddings=32)
    model = GPTNeo(config)
    loaded = load_hf_model(export_hf(model, tmp / "hf"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    sweep = SweepConfig(out_dir=str(tmp / "sweep"), hidden=[16], layers=[1], tokens=[1000])
    assert make_executor(sweep, ClusterOptions(executor="local")) is not None


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    # After the environment's own site-packages (the floors): where the calling interpreter finds tinystories.
    for directory in spec["site_dirs"]:
        site.addsitedir(directory)
    check_versions(spec["versions"])
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        download_from_the_hub(tmp)  # first: it points huggingface_hub at the fake Hub before its first import
        run_imports(spec["imports"])
        synthesize_online_and_batch(tmp)
        serve_without_models()
        train_config_from_the_command_line(tmp)
        files_and_formats(tmp)
    print("floors ok")


if __name__ == "__main__":
    main()

"""Export to / import from a Hugging Face GPTNeoForCausalLM directory; `tinystories export` read by transformers
(the newest and the `hf` extra's floor), optimum + ONNX Runtime and the Hub (`--push-to-hub`, on the fake Hub)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _fixtures import save_random_checkpoint
from test_packaging import declared, floor, floor_environment

from tinystories.model import GPTNeo, GPTNeoConfig
from tinystories.model.checkpoint import read_checkpoint
from tinystories.model.hf import export_hf, load_hf_model
from tinystories.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")


def test_export_loads_in_transformers_with_equal_logits(tmp_path):
    torch.manual_seed(0)
    model = GPTNeo(
        GPTNeoConfig(
            vocab_size=500, hidden_size=64, num_layers=3, num_heads=16, max_position_embeddings=128, window_size=32
        )
    ).eval()
    out = export_hf(model, tmp_path / "hf")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors"}
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "GPTNeoForCausalLM"
    x = torch.randint(0, 500, (2, 100))
    with torch.no_grad():
        diff = (hf(x).logits - model(x).logits).abs().max().item()
    assert diff <= 1e-4

    again = load_hf_model(out)  # and back: the import is the export's inverse
    assert again.config == model.config
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_import_of_a_transformers_saved_model(tmp_path):
    hf_config = transformers.GPTNeoConfig(
        vocab_size=300,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        max_position_embeddings=64,
        window_size=8,
        attention_types=[[["global", "local"], 1]],
    )
    torch.manual_seed(3)
    hf = transformers.GPTNeoForCausalLM(hf_config).eval()
    hf.save_pretrained(tmp_path / "saved")
    model = load_hf_model(tmp_path / "saved")
    x = torch.randint(0, 300, (2, 50))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, hf(x).logits, atol=1e-5, rtol=0)


def test_export_refuses_a_non_empty_directory_and_import_names_missing_files(tmp_path):
    model = GPTNeo(GPTNeoConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="busy"):
        export_hf(model, tmp_path / "busy")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "x"
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_model(tmp_path)


# ------------------------------------------------------------------------------------ `tinystories export`
PROMPTS = ["Once upon a time", "Lily saw a big red ball in the park and", "The dog"]
NEW_TOKENS = 12


def tinystories(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "tinystories.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        # never the developer's own token: each test gives the one it means
        env={**{k: v for k, v in os.environ.items() if k != "HF_TOKEN"}, "COLUMNS": "400", **(env or {})},
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, real_stories):
    """A checkpoint (random weights, a 512-token BPE of real stories) with the metrics.jsonl its run would write."""
    tokenizer = Tokenizer.train(real_stories[:300], vocab_size=512)
    run = tmp_path_factory.mktemp("export") / "run"
    save_random_checkpoint(run, 40, tokenizer, train_config={"data": "data/tinystories-v1", "seq_len": 64})
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in ({"step": 20, "val_loss": 5.5}, {"step": 40, "val_loss": 5.25}))
    )
    return run


@pytest.fixture(scope="module")
def export_spec(run_dir, tmp_path_factory):
    """The run exported with `tinystories export`, and what `tinystories sample --greedy` prints for PROMPTS."""
    out = tmp_path_factory.mktemp("exported") / "hf"
    done = tinystories("export", str(run_dir), "--out", str(out))
    assert done.returncode == 0, done.stderr
    greedy = {}
    for prompt in PROMPTS:
        sample = tinystories(
            "sample", str(run_dir), "--greedy", "--prompt", prompt, "--max-new-tokens", str(NEW_TOKENS)
        )
        assert sample.returncode == 0, sample.stderr
        greedy[prompt] = sample.stdout.strip()
    eot = Tokenizer.from_json(read_checkpoint(run_dir)["tokenizer_json"]).eot_token
    return {"dir": str(out), "context": 128, "eot": eot, "max_new_tokens": NEW_TOKENS, "greedy": greedy}


def run_export_check(python: str, spec: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    return subprocess.run(
        [
            python,
            str(
                Path(__file__).parent / "_export_check.py",
            ),
            str(tmp_path / "spec.json"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )


def test_the_export_reads_right_in_transformers(export_spec, tmp_path):
    """tok(text) has no token_type_ids, model(**tok(text)) == model(ids), pipeline batches, greedy == ours."""
    check = run_export_check(sys.executable, {**export_spec, "onnx": False}, tmp_path)
    assert check.returncode == 0 and "export ok" in check.stdout, check.stdout + check.stderr


def test_the_export_carries_a_model_card(export_spec, run_dir):
    from huggingface_hub import ModelCard

    card = ModelCard.load(Path(export_spec["dir"]) / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert card.data.license == "cdla-sharing-1.0"
    text = card.text
    assert "| tokens seen | not recorded |" in text  # save_random_checkpoint records no token counter
    assert "| training steps | 40 |" in text and "5.2500 nats/token (at step 40" in text
    assert "`data/tinystories-v1`" in text and "| parameters | " in text
    assert f"tinystories export {run_dir} --out {export_spec['dir']}" in text


@pytest.mark.slow
def test_the_export_reads_right_at_the_hf_floor_and_through_onnx(export_spec, tmp_path):
    """The same checks on the lowest transformers the `hf` extra allows, plus optimum's ONNX export generated with
    ONNX Runtime (optimum-onnx needs transformers < 4.58: it runs here, in the floor environment)."""
    lowest = floor(declared()["hf"]["transformers"])
    python = str(floor_environment(tmp_path / "floor", "transformers"))
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", f"transformers=={lowest}", "optimum-onnx", "onnxruntime"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    check = run_export_check(python, {**export_spec, "onnx": True}, tmp_path)
    out = check.stdout + check.stderr
    assert check.returncode == 0 and f"export ok (transformers {lowest}" in check.stdout and "onnx ok" in out, out


# ------------------------------------------------------------------------------------ `export --push-to-hub`
def hub_env(hub_url: str, tmp_path: Path, token: str | None) -> dict[str, str]:
    env = {"HF_ENDPOINT": hub_url, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    return {**env, "HF_TOKEN": token} if token else env


def test_push_to_hub_uploads_the_export(run_dir, tmp_path):
    from tinystories.testing import FakeHub

    with FakeHub({}) as hub:
        hub.write_token = "hf_good"
        done = tinystories(
            "export", str(run_dir), "--out", str(tmp_path / "hf"), "--push-to-hub", "me/tiny-story",
            env=hub_env(hub.url, tmp_path, "hf_good"),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"pushed to {hub.url}/me/tiny-story/commit/" in done.stdout
        local = {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()}
        assert hub.pushed == {"me/tiny-story": local}
        assert "README.md" in local and "model.safetensors" in local
        assert b'pipeline("text-generation", model="me/tiny-story")' in local["README.md"]
        assert hub.authorization == {"Bearer hf_good"}


@pytest.mark.parametrize("fault", ["bad token", "unreachable"])
def test_push_to_hub_fails_in_one_line_and_keeps_the_export(run_dir, tmp_path, fault):
    from tinystories.testing import FakeHub

    with FakeHub({}) as hub:
        hub.write_token = "hf_good"
        url = hub.url
        if fault == "unreachable":
            hub.__exit__()  # nothing listens on the port any more
        out = tmp_path / "hf"
        done = tinystories(
            "export", str(run_dir), "--out", str(out), "--push-to-hub", "me/tiny-story",
            env=hub_env(url, tmp_path, "hf_bad"),
        )  # fmt: skip
        assert done.returncode == 1, done.stdout + done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("tinystories export: error: pushing") and "me/tiny-story" in line
        assert ("token was refused" if fault == "bad token" else "cannot reach the Hugging Face Hub") in line
        assert hub.pushed.get("me/tiny-story", {}) == {}
    assert {p.name for p in out.iterdir()} >= {"README.md", "config.json", "model.safetensors", "tokenizer.json"}
    assert load_hf_model(out).config.hidden_size == 32  # the local export is whole


def test_push_to_hub_without_a_token_or_with_a_bad_repo_id_is_bad_input(run_dir, tmp_path):
    for repo, token, expected in (("me/tiny", None, "no Hugging Face token"), ("tiny", "t", "OWNER/NAME")):
        done = tinystories(
            "export", str(run_dir), "--out", str(tmp_path / "hf"), "--push-to-hub", repo,
            env=hub_env("http://127.0.0.1:9", tmp_path, token),
        )  # fmt: skip
        assert done.returncode == 2 and expected in done.stderr, done.stderr
        assert not (tmp_path / "hf").exists()  # refused before any work

"""The trainer end to end: config errors, kill -9 and resume bit-exactly, DDP == one process, NaN guard,
sampling and export of a trained checkpoint, and the no-argument demo."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_fixtures import TINY, final_state, run_train, sigkill_when, train_env

from tinystories.model.checkpoint import list_checkpoints, read_checkpoint
from tinystories.train import ConfigError, load_config, main


# -- configuration -------------------------------------------------------------------------------------
def test_config_layers_and_errors(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "3M"\nlr = 5e-4\nbatch_size = 8\n')
    c = load_config(str(toml), {"lr": "1e-3", "max_steps": "2e3"})
    assert (c.preset, c.lr, c.batch_size, c.max_steps) == ("3M", 1e-3, 8, 2000)
    assert load_config(None, {}).max_steps == 300  # the demo preset's own training defaults

    bad = [
        ({"bogus": 1}, "unknown config key 'bogus'"),
        ({"lr": "fast"}, "lr='fast' is not a valid float"),
        ({"batch_siz": 2}, "did you mean 'batch_size'"),
        ({"hidden_size": 100, "num_heads": 16}, "divisible"),
        ({"seq_len": 4096}, "exceeds the model's context"),
        ({"batch_size": 0}, "batch_size=0 must be positive"),
        ({"dtype": "fp8"}, "dtype='fp8' must be one of"),
        ({"preset": "7B"}, "preset='7B' is unknown"),
        ({"resume": True}, "--resume needs --out"),
        ({"data": "/nonexistent/x.txt", "preset": "1M"}, "does not exist"),
        ({"init_from_hf": str(tmp_path)}, "no config.json there"),
    ]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_config(None, overrides)
    toml.write_text('max_steps = "ten"\n')
    with pytest.raises(ConfigError, match=r"run.toml: max_steps='ten' is not a valid int"):
        load_config(str(toml))
    toml.write_text("max_steps = [\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(str(toml))

    # The command line reports one clear error and allocates nothing (no run directory appears).
    out = tmp_path / "never"
    assert main([f"--out={out}", "--hidden-size=30", "--num-heads=4"]) == 2
    assert "hidden_size=30 is not divisible by num_heads=4" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        main(["--max-stepz=3"])  # argparse: unrecognized argument (abbreviations are off)


# -- resume after SIGKILL --------------------------------------------------------------------------------
def test_sigkill_then_resume_is_bit_identical(dataset, tmp_path):
    common = [
        f"--data={dataset}",
        *TINY,
        "--max-steps=24",
        "--ckpt-every=3",
        "--eval-every=100",
        "--log-every=1",
        "--keep-last=2",
    ]
    straight = run_train([*common, f"--out={tmp_path / 'straight'}"])
    assert straight.returncode == 0, straight.stderr

    # Kill the second run with SIGKILL between checkpoints (after step 10 is logged; ckpt_every=3).
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinystories.train", *common, f"--out={tmp_path / 'killed'}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=train_env(),
    )
    sigkill_when(proc, "step 10/")
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    saved = list_checkpoints(tmp_path / "killed")
    assert saved and read_checkpoint(saved[-1])["step"] < 24
    assert len(saved) <= 2  # keep_last

    resumed = run_train([*common, f"--out={tmp_path / 'killed'}", "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed {saved[-1]}" in resumed.stdout
    a, b = final_state(tmp_path / "straight"), final_state(tmp_path / "killed")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"
    ca = read_checkpoint(list_checkpoints(tmp_path / "straight")[-1])
    cb = read_checkpoint(list_checkpoints(tmp_path / "killed")[-1])
    assert ca["loader"] == cb["loader"] and ca["step"] == cb["step"] == 24
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])

    again = run_train([*common, f"--out={tmp_path / 'killed'}"])  # no --resume: refuses, keeps the run
    assert again.returncode == 2 and "already holds checkpoints" in again.stderr


# -- distributed -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_on_the_same_global_batch(dataset, tmp_path):
    common = [f"--data={dataset}", *TINY, "--max-steps=6", "--ckpt-every=6", "--eval-every=3", "--log-every=1"]
    single = run_train([*common, "--batch-size=8", f"--out={tmp_path / 'one'}"])
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "tinystories.train",
            *common,
            "--batch-size=4",
            f"--out={tmp_path / 'two'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "x2" in ddp.stdout  # the run really had two processes
    a, b = final_state(tmp_path / "one"), final_state(tmp_path / "two")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=2e-5, rtol=1e-4, msg=name)
    # Validation losses agree too (each rank evaluated its share; all-reduced).
    val = [
        [
            r["val_loss"]
            for r in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text().splitlines())
            if "val_loss" in r
        ]
        for d in ("one", "two")
    ]
    assert len(val[0]) == len(val[1]) == 2
    for x, y in zip(*val):
        assert math.isclose(x, y, rel_tol=1e-4)


# -- non-finite guard ---------------------------------------------------------------------------------------
def test_a_non_finite_step_is_skipped_and_counted(dataset, tmp_path, monkeypatch):
    from tinystories import train as train_module
    from tinystories.model import GPTNeo

    real_forward, calls = GPTNeo.forward, {"n": 0}

    def forward(self, idx, targets=None, **kwargs):
        out = real_forward(self, idx, targets, **kwargs)
        if targets is not None and self.training:
            calls["n"] += 1
            if calls["n"] == 3:  # poison the third training step's loss
                return out._replace(loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(GPTNeo, "forward", forward)
    config = load_config(
        None,
        dict(a.lstrip("-").split("=", 1) for a in TINY)
        | {
            "data": str(dataset),
            "max_steps": "6",
            "ckpt_every": "6",
            "eval_every": "6",
            "log_every": "1",
            "out": str(tmp_path / "run"),
        },
    )
    run = train_module.train(config)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["skipped_steps"] for r in steps] == [0, 0, 1, 1, 1, 1]
    assert all(math.isfinite(v) for v in final_state(run)["wte.weight"].flatten().tolist())


def test_too_many_non_finite_steps_in_a_row_abort_with_a_clear_message(dataset, tmp_path, monkeypatch, capsys):
    # Weights gone non-finite (an lr that overflows AdamW is refused up front now): every loss is non-finite.
    from tinystories.train import loop

    real_step = loop.train_step

    def poisoned_step(train_model, model, *args, **kwargs):
        with torch.no_grad():
            model.wte.weight.fill_(float("nan"))
        return real_step(train_model, model, *args, **kwargs)

    monkeypatch.setattr(loop, "train_step", poisoned_step)
    args = [f"--data={dataset}", *TINY, "--max-steps=50", "--max-bad-steps=3", "--log-every=1"]
    assert main([*args, f"--out={tmp_path / 'run'}"]) == 1
    err = capsys.readouterr().err
    assert "aborting: 3 consecutive steps with a non-finite loss or gradients" in err
    assert "Lower --lr" in err


# -- using a trained checkpoint: sample, export -------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_run(dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    result = run_train(
        [f"--data={dataset}", *TINY, "--max-steps=30", "--ckpt-every=30", "--eval-every=30", f"--out={run}"]
    )
    assert result.returncode == 0, result.stderr
    return run


def test_sample_batched_prompts_equal_single_prompts_and_cli(trained_run):
    from tinystories.model import load_checkpoint
    from tinystories.model.generate import generate_texts

    model, tokenizer, config = load_checkpoint(trained_run)
    assert config["max_steps"] == 30 and not model.training
    prompts = ["Once upon a time", "Tom", "One day, a little girl named Lily went to the park"]
    batched = generate_texts(model, tokenizer, prompts, max_new_tokens=25, temperature=0)
    for prompt, text in zip(prompts, batched):
        assert text.startswith(prompt)
        assert generate_texts(model, tokenizer, [prompt], max_new_tokens=25, temperature=0) == [text]
    assert generate_texts(model, tokenizer, prompts, max_new_tokens=25, temperature=0, use_cache=False) == batched
    sampled = generate_texts(model, tokenizer, prompts, max_new_tokens=25, top_k=20, top_p=0.9, seed=3)
    assert sampled == generate_texts(model, tokenizer, prompts, max_new_tokens=25, top_k=20, top_p=0.9, seed=3)

    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinystories.cli",
            "sample",
            str(trained_run),
            "--prompt",
            "Once upon a time",
            "--prompt",
            "Tom",
            "--greedy",
            "--max-new-tokens",
            "25",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr
    assert batched[0].strip() in cli.stdout and batched[1].strip() in cli.stdout


def test_export_of_a_trained_checkpoint_loads_in_transformers(trained_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    from tinystories.model import load_checkpoint

    out = tmp_path / "hf"
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinystories.cli",
            "export",
            str(trained_run),
            "--format",
            "hf",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr
    model, tokenizer, _ = load_checkpoint(trained_run)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    text = "Once upon a time, there was a little dog."
    ids = tokenizer.encode(text)
    assert hf_tokenizer(text)["input_ids"] == ids
    assert hf_tokenizer.eos_token_id == tokenizer.eot_token
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (hf(x).logits - model(x).logits).abs().max().item() <= 1e-4

    # load_checkpoint reads the HF directory back to the very same weights.
    again, _, _ = load_checkpoint(out)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_init_from_hf_trains_from_the_exported_weights(trained_run, dataset, tmp_path):
    out = tmp_path / "hf"
    assert (
        subprocess.run(
            [sys.executable, "-m", "tinystories.cli", "export", str(trained_run), "--out", str(out)],
            capture_output=True,
            timeout=300,
        ).returncode
        == 0
    )
    run = tmp_path / "finetune"
    result = run_train(
        [
            f"--data={dataset}",
            *TINY,
            f"--init-from-hf={out}",
            "--max-steps=2",
            "--ckpt-every=2",
            "--eval-every=2",
            "--lr=1e-9",
            "--min-lr=0",
            f"--out={run}",
        ]
    )
    assert result.returncode == 0, result.stderr
    start, end = final_state(trained_run), final_state(run)
    for name in start:  # lr ~0: the fine-tuned weights are still the exported ones
        torch.testing.assert_close(end[name], start[name], atol=1e-6, rtol=0)


# -- the no-argument demo ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_no_argument_demo_trains_saves_and_tells_a_story(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TINYSTORIES_PEAK_FLOPS", None)
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from tinystories.train import main; sys.exit(main([]))"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DEMO DATA" in result.stdout
    runs = [
        p for p in (tmp_path / "runs").iterdir() if p.name.startswith("demo-") and p.is_dir() and list_checkpoints(p)
    ]
    assert len(runs) == 1
    records = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert val[-1] < val[0] and val[-1] < 2.5  # it learned the template language
    story = result.stdout.split("A story by the model")[1].split("):", 1)[1].split("\ncheckpoint:")[0]
    assert story.strip().startswith("Once upon a time") and len(story.split()) >= 8


def test_text_file_data_is_prepared_automatically_and_bf16_runs(dataset, tmp_path):
    run = tmp_path / "run"
    result = run_train(
        [
            f"--data={dataset.parent / 'stories.txt'}",
            f"--tokenizer={dataset / 'tokenizer.json'}",
            *TINY,
            "--dtype=bf16",
            "--max-steps=3",
            "--ckpt-every=3",
            "--eval-every=3",
            f"--out={run}",
        ]
    )
    assert result.returncode == 0, result.stderr
    assert (run / "data" / "index.json").is_file() and "preparing shards" in result.stdout
    assert "cpu bf16" in result.stdout
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    config = json.loads((run / "config.json").read_text())
    assert config["dtype"] == "bf16" and config["model"]["vocab_size"] == 400


@pytest.mark.slow
def test_compiled_training_matches_eager_training(dataset, tmp_path):
    common = [f"--data={dataset}", *TINY, "--max-steps=4", "--ckpt-every=4", "--eval-every=4"]
    eager = run_train([*common, f"--out={tmp_path / 'eager'}"])
    compiled = run_train([*common, "--compile", f"--out={tmp_path / 'compiled'}"])
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr[-3000:]
    a, b = final_state(tmp_path / "eager"), final_state(tmp_path / "compiled")
    assert not any(k.startswith("_orig_mod") for k in b)  # the plain state dict is saved
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4, msg=name)

"""``impl``/``compile``/``dtype`` = auto: the path each GPU generation gets (capability faked), explicit choices
that cannot work, the hybrid (no ``tl.dot``) model path, the fp16 GradScaler path on CPU (overflow steps
skipped and counted, scaler state bit-exact across SIGKILL + resume), and the throughput timer."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys

import pytest
import torch
from _fixtures import save_random_checkpoint
from _train_fixtures import TINY, final_state, sigkill_when
from kernel_checks import assert_same_gradients, plain_reference

from tinystories.model import GPTNeo, GPTNeoConfig
from tinystories.model.checkpoint import list_checkpoints, read_checkpoint
from tinystories.runtime.device import choose_execution, resolve_execution, torch_builds_for
from tinystories.train import ConfigError, load_config


def fake_gpu(
    monkeypatch, capability: tuple[int, int], arch_list: list[str] | None = None, triton: tuple[bool, str] = (True, "")
) -> torch.device:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(
        torch.cuda, "get_device_name", lambda device=None: f"Fake GPU sm_{capability[0]}{capability[1]}"
    )
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: arch_list or ["sm_70", "sm_75", "sm_80", "sm_90"])
    monkeypatch.setattr(torch.version, "cuda", "12.8")  # a CUDA build (the check skips ROCm arch names)
    monkeypatch.setattr("tinystories.kernels.kernels_available", lambda: triton)
    return torch.device("cuda", 0)


@pytest.mark.parametrize(
    "capability, dtype, impl",
    [((7, 0), "fp16", "hybrid"), ((7, 5), "fp16", "hybrid"), ((8, 0), "bf16", "fused"), ((9, 0), "bf16", "fused")],
)
def test_auto_picks_the_path_for_each_gpu_generation(monkeypatch, capability, dtype, impl):
    path = resolve_execution(fake_gpu(monkeypatch, capability))
    assert (path.dtype, path.impl, path.compile) == (dtype, impl, True)
    assert f"sm_{capability[0]}{capability[1]}" in path.device and "Fake GPU" in path.device
    line = path.describe()
    assert "\n" not in line and f"{dtype}, impl={impl}, compile=on" in line
    assert ("tl.dot has no tensor cores" in line) == (capability < (8, 0))


def test_cpu_and_mps_take_the_plain_eager_path():
    assert choose_execution("cpu", None, dtype="auto", impl="auto", compile=None, triton=(True, ""))[:3] == (
        "fp32",
        "torch",
        False,
    )
    assert choose_execution("mps", None, dtype="auto", impl="auto", compile=None, triton=(False, "no"))[:3] == (
        "fp32",
        "torch",
        False,
    )
    path = resolve_execution(torch.device("cpu"))
    assert (path.dtype, path.impl, path.compile, path.device) == ("fp32", "torch", False, "cpu")


def test_explicit_flags_win_and_impossible_ones_stop(monkeypatch):
    gpu = fake_gpu(monkeypatch, (7, 0))
    path = resolve_execution(gpu, impl="fused", compile=False)  # slow without tensor cores, but it works
    assert (path.dtype, path.impl, path.compile) == ("fp16", "fused", False)
    assert "impl=fused, compile=False as given" in path.reason
    with pytest.raises(ConfigError, match=r"dtype=bf16 needs a GPU of compute capability >= 8.0 \(this one is sm_70\)"):
        resolve_execution(gpu, dtype="bf16")
    assert resolve_execution(gpu, dtype="fp32").dtype == "fp32"

    no_triton = fake_gpu(monkeypatch, (9, 0), triton=(False, "triton is not installed"))
    assert resolve_execution(no_triton).impl == "torch"  # auto falls back and says why
    assert "triton is not installed" in resolve_execution(no_triton).reason
    for impl in ("fused", "hybrid"):
        with pytest.raises(ConfigError, match=f"impl={impl} needs the Triton kernels.*triton is not installed"):
            resolve_execution(no_triton, impl=impl)

    # A CUDA 13 build of PyTorch has no sm_70 code: say so instead of failing at the first kernel.
    v100 = fake_gpu(monkeypatch, (7, 0), arch_list=["sm_75", "sm_80", "sm_90", "compute_90"])
    with pytest.raises(ConfigError, match="has no kernels for sm_70.*CUDA 12.x"):
        resolve_execution(v100)
    with pytest.raises(ConfigError, match="compile=true needs"):
        choose_execution("cuda", (6, 0), dtype="auto", impl="auto", compile=True, triton=(True, ""))


def test_which_builds_run_on_which_gpu():
    assert torch_builds_for((7, 0), ["sm_50", "sm_70", "sm_80"])
    assert torch_builds_for((8, 6), ["sm_80", "sm_90"])  # a cubin for sm_80 runs on sm_86
    assert not torch_builds_for((7, 0), ["sm_75", "sm_80"])
    assert not torch_builds_for((8, 0), ["sm_86", "sm_90"])
    assert torch_builds_for((12, 0), ["sm_90", "compute_90"])  # PTX is JIT-compiled for newer GPUs


def test_the_execution_path_says_as_given_only_for_what_the_user_gave():
    reason = choose_execution(
        "cpu", None, dtype="auto", impl="torch", compile=False, triton=(True, ""), given=("dtype",)
    )[3]
    assert reason == "cpu: the plain PyTorch path, eager"  # `sample`'s own plain path: nothing to say
    reason = choose_execution("cuda", (9, 0), dtype="auto", impl="torch", compile=False, triton=(True, ""), given=())[3]
    assert (
        reason.startswith("impl=torch, compile=False for this command; auto: sm_90 >= sm_80") and "given" not in reason
    )
    reason = choose_execution("cpu", None, dtype="fp16", impl="auto", compile=False, triton=(True, ""))[3]
    assert reason.startswith("dtype=fp16, compile=False as given; auto:")


def test_config_accepts_auto_and_the_new_choices():
    c = load_config(None, {})
    assert (c.impl, c.compile, c.dtype) == ("auto", None, "auto")
    c = load_config(None, {"impl": "hybrid", "compile": "auto", "dtype": "fp16"})
    assert (c.impl, c.compile, c.dtype) == ("hybrid", None, "fp16")
    assert load_config(None, {"compile": "true"}).compile is True
    with pytest.raises(ConfigError, match="impl='triton' must be one of auto, torch, fused, hybrid"):
        load_config(None, {"impl": "triton"})


def test_an_impossible_explicit_choice_stops_the_trainer_before_it_starts(dataset, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # CPU without the interpreter
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinystories.train",
            f"--data={dataset}",
            *TINY,
            "--impl=fused",
            f"--out={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "tinystories-train: error: impl=fused needs the Triton kernels, which cannot run here: no CUDA device "
        "(set TRITON_INTERPRET=1 to run the kernels on CPU in Triton's interpreter); use --impl=torch (or auto)"
    ]
    assert not (tmp_path / "run").exists()


# -- the hybrid path (sm_7x): Triton LayerNorm + cross-entropy, cuBLAS/SDPA for everything with tl.dot -------
def test_hybrid_runs_only_the_kernels_without_tl_dot_and_computes_the_same_function(monkeypatch, caplog):
    from tinystories import kernels

    ok, reason = kernels.kernels_available()
    if not ok:
        pytest.skip(reason)
    calls: dict[str, int] = {}

    def spy_on(name: str) -> None:
        real = getattr(kernels, name)

        def spy(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return real(*args, **kwargs)

        monkeypatch.setattr(kernels, name, spy)

    for name in ("attention", "fused_mlp", "layer_norm", "linear_cross_entropy"):
        spy_on(name)
    model, x, y, plain, plain_grads = plain_reference()
    model.impl = "hybrid"
    with caplog.at_level(logging.WARNING, logger="tinystories.model"):
        loss = model(x, y, return_logits=False).loss
    assert "falls back" not in caplog.text
    assert calls == {"layer_norm": 5, "linear_cross_entropy": 1}  # 2 per block + ln_f; never attention or MLP
    torch.testing.assert_close(loss, plain.loss, atol=1e-5, rtol=1e-5)
    loss.backward()
    assert_same_gradients(model, plain_grads)


# -- fp16 with the GradScaler, on CPU ----------------------------------------------------------------------
def test_fp16_overflow_steps_are_skipped_and_counted():
    from tinystories.runtime.device import Dist, autocast_context
    from tinystories.train.step import make_optimizer, train_step

    c = load_config(None, {"grad_accum": "1"})
    torch.manual_seed(0)
    model = GPTNeo(
        GPTNeoConfig(
            vocab_size=64, hidden_size=16, num_layers=1, num_heads=2, max_position_embeddings=16, window_size=8
        )
    )
    optimizer = make_optimizer(model, c, torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30)  # far above fp16's range: the gradients overflow
    x = torch.randint(0, 64, (2, 8))
    step = functools.partial(
        train_step,
        model,
        model,
        optimizer,
        scaler,
        lambda: (x, x),
        c=c,
        lr=1e-3,
        autocast=autocast_context(torch.device("cpu"), "fp16"),
        dist=Dist(),
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    first = step()
    assert first.overflow and not first.applied and first.loss == first.loss  # finite loss, inf gradients
    assert scaler.get_scale() == 2.0**29
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), f"{name} changed on an overflow step"
    results = [step()]
    while results[-1].overflow and len(results) < 30:
        results.append(step())
    assert results[-1].applied and len(results) > 1  # the scale came down into range, then steps apply
    assert scaler.get_scale() < 2.0**29 and any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


FP16_TRAIN = (
    "import functools, sys, torch; "
    # A huge initial scale and a short growth interval: overflows, backoffs and growths all happen.
    "torch.amp.GradScaler.__init__ = functools.partialmethod(torch.amp.GradScaler.__init__, "
    "init_scale=2.0 ** 30, growth_interval=3); "
    "from tinystories.train.cli import main; sys.exit(main(sys.argv[1:]))"
)


def test_fp16_scaler_state_survives_sigkill_and_resume_bit_exactly(dataset, tmp_path):
    common = [
        f"--data={dataset}",
        *TINY,
        "--dtype=fp16",
        "--max-steps=10",
        "--ckpt-every=3",
        "--eval-every=100",
        "--log-every=1",
        "--keep-last=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    straight = subprocess.run(
        [sys.executable, "-c", FP16_TRAIN, *common, f"--out={tmp_path / 'straight'}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "execution path: fp16, impl=torch, compile=off on cpu (dtype=fp16 as given" in straight.stdout

    proc = subprocess.Popen(
        [sys.executable, "-c", FP16_TRAIN, *common, f"--out={tmp_path / 'killed'}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    sigkill_when(proc, "step 5/")
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert read_checkpoint(list_checkpoints(tmp_path / "killed")[-1])["step"] < 10
    resumed = subprocess.run(
        [sys.executable, "-c", FP16_TRAIN, *common, f"--out={tmp_path / 'killed'}", "--resume"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    ca = read_checkpoint(list_checkpoints(tmp_path / "straight")[-1])
    cb = read_checkpoint(list_checkpoints(tmp_path / "killed")[-1])
    assert ca["scaler"] == cb["scaler"] and ca["counters"] == cb["counters"]
    assert ca["counters"]["overflow_steps"] >= 1 and ca["counters"]["skipped_steps"] == 0
    assert ca["scaler"]["scale"] < 2.0**30
    a, b = final_state(tmp_path / "straight"), final_state(tmp_path / "killed")
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"
    records = [json.loads(r) for r in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    overflow = [r["overflow_steps"] for r in records if "loss" in r]
    assert overflow == sorted(overflow) and overflow[-1] == ca["counters"]["overflow_steps"]
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert config["execution"]["dtype"] == "fp16" and config["execution"]["impl"] == "torch"


# -- the trainer fixes found with the README -----------------------------------------------------------------
class FakeClock:
    """``time`` for the training loop: only the patched work below moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def strftime(self, fmt: str) -> str:
        return "fake-time"


def test_tokens_per_s_after_an_eval_or_checkpoint_counts_only_training_time(
    dataset,
    tmp_path,
    monkeypatch,
):
    from tinystories.train import loop, metrics

    clock = FakeClock()
    monkeypatch.setattr(loop, "time", clock)
    monkeypatch.setattr(metrics, "time", clock)  # the step clock

    def timed(fn, seconds):
        def run(*args, **kwargs):
            out = fn(*args, **kwargs)
            clock.now += seconds
            return out

        return run

    monkeypatch.setattr(loop, "train_step", timed(loop.train_step, 1.0))  # each step: exactly 1 s
    monkeypatch.setattr(loop, "validation_loss", timed(loop.validation_loss, 50.0))
    monkeypatch.setattr(loop, "save_checkpoint", timed(loop.save_checkpoint, 30.0))
    # eval_every and ckpt_every are not multiples of log_every: the case that read 2-4x too fast
    config = load_config(
        None,
        dict(a.lstrip("-").split("=", 1) for a in TINY)
        | {
            "data": str(dataset),
            "max_steps": "12",
            "log_every": "4",
            "eval_every": "3",
            "ckpt_every": "5",
            "sample_max_new_tokens": "0",
            "out": str(tmp_path / "run"),
        },
    )
    run = loop.train(config)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    assert len(speeds) == 3
    assert speeds == [4 * 32 * 1.0] * 3  # batch 4 x seq 32 tokens per 1-second step


def test_fine_tuning_from_hf_takes_the_papers_defaults_and_min_lr_follows_lr(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    c = load_config(None, {"init_from_hf": str(hf), "lr": "1e-4"})  # the README's fine-tune line
    assert (c.seq_len, c.batch_size, c.lr, c.min_lr) == (512, 32, 1e-4, pytest.approx(1e-5))
    assert load_config(None, {"init_from_hf": str(hf), "preset": "33M"}).seq_len == 512  # not the HF 2048
    assert load_config(None, {"init_from_hf": str(hf), "seq_len": "128"}).seq_len == 128
    assert load_config(None, {"lr": "1e-4", "min_lr": "0"}).min_lr == 0.0  # given: kept
    assert load_config(None, {"preset": "8M", "lr": "2e-3"}).min_lr == pytest.approx(2e-4)
    assert load_config(None, {}).seq_len == 128  # the demo preset's own defaults are unchanged


def test_eval_loss_windows_default_to_the_trained_length_and_sample_uses_the_resolution(
    dataset,
    tmp_path,
    capsys,
):
    from tinystories.cli import main
    from tinystories.data import load_dataset_tokenizer
    from tinystories.evaluate import heldout
    from tinystories.evaluate.students import GPTNeoStudent

    tokenizer = load_dataset_tokenizer(dataset)
    ckpt = save_random_checkpoint(
        tmp_path / "run",
        1,
        tokenizer,
        train_config={"seq_len": 32},
        num_heads=2,
        max_position_embeddings=64,
        window_size=16,
    )
    student = GPTNeoStudent.from_checkpoint(ckpt)
    widths = []
    real = student.window_logits
    student.window_logits = lambda windows: widths.append(windows.shape[1]) or real(windows)
    heldout.split_loss(student, dataset, max_tokens=100)
    assert set(widths) == {32}  # trained at 32, though the context is 64
    widths.clear()
    heldout.split_loss(student, dataset, max_tokens=100, seq_len=64)
    assert set(widths) == {64}
    text = "Once upon a time there was a cat. " * 30
    widths.clear()
    heldout.text_loss(student, text)
    assert max(widths) == 32

    (tmp_path / "held_out.txt").write_text(text)
    assert (
        main(
            [
                "eval",
                "loss",
                str(ckpt),
                "--stories",
                str(tmp_path / "held_out.txt"),
                "--seq-len",
                "16",
                "--dtype",
                "bf16",
            ]
        )
        == 0
    )
    assert "held-out loss" in capsys.readouterr().out
    assert main(["eval", "loss", str(ckpt), "--data", str(dataset), "--seq-len", "65"]) == 2
    assert "seq_len=65 must be between 1 and" in capsys.readouterr().err

    # `tinystories sample` takes the same resolution and says so on stderr (stories go to stdout).
    assert main(["sample", str(ckpt), "--dtype", "bf16", "--greedy", "--max-new-tokens", "5"]) == 0
    err = capsys.readouterr().err
    assert "execution path: bf16, impl=torch, compile=off on cpu (dtype=bf16 as given; auto: cpu:" in err  # only dtype


def test_hybrid_compiles_as_one_graph_from_the_first_call():
    """sm_7x's auto path is hybrid + torch.compile: no graph break, even when the first call is traced."""
    from tinystories import kernels

    ok, reason = kernels.kernels_available()
    if not ok:
        pytest.skip(reason)
    torch.manual_seed(0)
    model = GPTNeo(
        GPTNeoConfig(
            vocab_size=100, hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=32, window_size=8
        ),
        impl="hybrid",
    )
    x, y = torch.randint(0, 100, (2, 24)), torch.randint(0, 100, (2, 24))
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, y, return_logits=False).loss, model(x, y, return_logits=False).loss)


@pytest.mark.skipif(
    torch.backends.mps.is_available() or torch.cuda.is_available(), reason="needs a machine without them"
)
def test_a_device_this_machine_lacks_is_one_line(dataset, tmp_path):
    for device in ("mps", "cuda:0"):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "tinystories.train",
                f"--data={dataset}",
                *TINY,
                f"--device={device}",
                f"--out={tmp_path / device}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert f"device='{device}' but" in result.stderr and "not available" in result.stderr, result.stderr
        assert not (tmp_path / device).exists()

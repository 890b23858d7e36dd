"""The trainer's training step, throughput and peak memory: our GPT-Neo vs Hugging Face ``GPTNeoForCausalLM``.

Every contender runs the step ``tinystories-train`` runs, :func:`tinystories.train.step.train_step`, set up as the
trainer sets it up: the ``TrainConfig`` of the preset, batch and dtype (with the preset's CPU threads), the
execution path ``resolve_execution`` gives it, the trainer's AdamW (weight decay on matrices only), gradient
clipping, GradScaler, autocast and learning-rate schedule. Only the model differs: ours, or Hugging Face's behind
the same call (``model(x, y, return_logits=False).loss``). Each contender runs in its own subprocess so peak memory
(CUDA allocator peak, or the process's max RSS on CPU) is its own.

    pytest benchmarks/bench_train.py -s                      # CPU: small preset, eager (what CI can afford)
    python benchmarks/bench_train.py --device cuda --preset 33M --batch 64 --seq 512 --dtype bf16 --budget 420

Contenders: ours (plain PyTorch), ours compiled, ours fused (Triton kernels, CUDA), HF eager, HF compiled;
compiled ones are skipped on CPU unless --compile is given (inductor's CPU compile takes minutes on 2 cores).
Ratios are against HF eager from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from tinystories.model import GPTNeo, GPTNeoConfig, GPTNeoOutput, config_from_preset
from tinystories.model.hf import hf_config_dict
from tinystories.runtime.device import Dist, autocast_context, resolve_execution
from tinystories.train.config import load_config
from tinystories.train.step import learning_rate, make_optimizer, train_step

CONTENDERS = ("ours", "ours-compiled", "ours-fused", "hf-eager", "hf-compiled")


def _worker(args: argparse.Namespace) -> dict:
    """Time one contender's training steps in this process; returns tokens/s and peak memory."""
    name, device = args.worker, torch.device(args.device)
    c = load_config(
        None,
        {
            "preset": args.preset,
            "batch_size": args.batch,
            "seq_len": args.seq,
            "dtype": args.dtype,
            "device": args.device,
            "impl": "fused" if name == "ours-fused" else "torch",
            "compile": name.endswith("compiled"),
        },
    )
    execution = resolve_execution(device, dtype=c.dtype, impl=c.impl, compile=c.compile)
    if c.cpu_threads is not None:  # the preset's CPU threads (the demo's: 1), as the trainer sets them
        torch.set_num_threads(c.cpu_threads)
    torch.manual_seed(0)
    config = config_from_preset(args.preset, **({"vocab_size": args.vocab} if args.vocab else {}))
    if name.startswith("hf"):
        model: torch.nn.Module = HFAsOurs(config)
    else:
        model = GPTNeo(config, impl=execution.impl)
    model.to(device).train()
    train_model = torch.compile(model) if execution.compile else model  # as the trainer wraps it
    optimizer = make_optimizer(model, c, device)
    scaler = torch.amp.GradScaler(device.type, enabled=execution.dtype == "fp16")
    autocast = autocast_context(device, execution.dtype)
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1), device=device)
    batch = (tokens[:, :-1], tokens[:, 1:])

    def step(i: int) -> float:
        lr = learning_rate(i, c)
        return train_step(
            train_model, model, optimizer, scaler, lambda: batch, c=c, lr=lr, autocast=autocast, dist=Dist()
        ).loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for i in range(args.warmup):
        step(i)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps, start = 0, time.perf_counter()
    while steps < args.min_steps or (time.perf_counter() - start < args.seconds and steps < args.max_steps):
        loss = step(args.warmup + steps)
        steps += 1
    sync()
    elapsed = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "contender": name,
        "execution": execution.as_dict(),
        "tokens_per_s": args.batch * args.seq * steps / elapsed,
        "peak_bytes": peak,
        "steps": steps,
        "loss": loss,
    }


class HFAsOurs(torch.nn.Module):
    """Hugging Face ``GPTNeoForCausalLM`` of ``config`` (eager attention) behind our model's call, the one the
    trainer's step makes: ``model(x, y, return_logits=False).loss``, the next-token loss of ``y`` from fp32 logits
    as HF's own ``labels=`` loss computes it (without its shift: ``x`` and ``y`` come aligned)."""

    def __init__(self, config: GPTNeoConfig) -> None:
        import transformers  # the HF workers alone need it

        super().__init__()
        fields = hf_config_dict(config).items()
        hf_config = transformers.GPTNeoConfig(
            **{k: v for k, v in fields if k not in ("architectures", "model_type", "torch_dtype")}
        )
        hf_config._attn_implementation = "eager"
        self.hf = transformers.GPTNeoForCausalLM(hf_config)

    def forward(self, x: torch.Tensor, y: torch.Tensor, return_logits: bool = True) -> GPTNeoOutput:
        logits = self.hf(input_ids=x).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        return GPTNeoOutput(logits if return_logits else None, loss, None, None)


def run_contender(name: str, args: argparse.Namespace, timeout: float) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--device",
        args.device,
        "--preset",
        args.preset,
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--dtype",
        args.dtype,
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        "--min-steps",
        str(args.min_steps),
        "--max-steps",
        str(args.max_steps),
    ]
    if args.vocab:
        cmd += ["--vocab", str(args.vocab)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"contender": name, "error": f"timed out after {timeout:.0f}s"}
    if proc.returncode != 0:
        return {"contender": name, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace) -> list[dict]:
    names = list(args.contenders or CONTENDERS)
    skipped = []
    if args.device == "cpu":
        if not args.compile:
            skipped += [(n, "compile skipped on CPU (pass --compile)") for n in names if n.endswith("compiled")]
        skipped += [(n, "fused kernels need CUDA") for n in names if n == "ours-fused"]
    elif not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device} but CUDA is not available")
    names = [n for n in names if n not in dict(skipped)]
    deadline = time.monotonic() + args.budget
    results = []
    for i, name in enumerate(names):
        left = deadline - time.monotonic()
        if left < 10:
            results.append({"contender": name, "error": "time budget used up"})
            continue
        results.append(run_contender(name, args, timeout=left / max(1, (len(names) - i) ** 0.5)))
    return results + [{"contender": n, "error": why} for n, why in skipped]


def print_table(results: list[dict], args: argparse.Namespace) -> None:
    base = next((r for r in results if r["contender"] == "hf-eager" and "error" not in r), None)
    print(
        f"\nthe trainer's step (tinystories.train.step.train_step), preset {args.preset}, batch {args.batch} x seq "
        f"{args.seq}, {args.dtype}, "
        f"device {args.device}" + (f" ({_device_name(args.device)})" if args.device != "cpu" else "")
    )
    print(f"{'contender':<15}{'tokens/s':>12}{'vs HF eager':>13}{'peak memory':>14}{'mem vs HF':>11}")
    for r in results:
        if "error" in r:
            print(f"{r['contender']:<15}  -- {r['error']}")
            continue
        speed = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "n/a"
        mem = f"{r['peak_bytes'] / base['peak_bytes']:.2f}x" if base else "n/a"
        print(
            f"{r['contender']:<15}{r['tokens_per_s']:>12,.0f}{speed:>13}{r['peak_bytes'] / 2**20:>11,.0f} MiB{mem:>11}"
        )
    if args.device == "cpu":
        print("(CPU peak memory is each subprocess's max RSS, including the Python/torch runtime)")


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(torch.device(device))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="demo")
    p.add_argument("--vocab", type=int, default=None, help="vocab size (default: the preset's)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per contender")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--min-steps", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--budget", type=float, default=300.0, help="wall-clock budget for all contenders")
    p.add_argument("--compile", action="store_true", help="also time compiled contenders on CPU")
    p.add_argument("--contenders", nargs="*", choices=CONTENDERS)
    p.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def test_train_step_vs_hf(capsys):
    """CPU, demo preset: ours vs HF eager, each for a few seconds, printed side by side."""
    args = parse_args(["--seconds", "4", "--budget", "120", "--contenders", "ours", "hf-eager"])
    results = compare(args)
    with capsys.disabled():
        print_table(results, args)
    assert all("error" not in r for r in results), results


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.worker:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        print(json.dumps(_worker(arguments)))
    else:
        print_table(compare(arguments), arguments)

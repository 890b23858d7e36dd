"""Training-step throughput and peak memory: our GPT-Neo vs Hugging Face ``GPTNeoForCausalLM``.

Same config, device, dtype, batch and optimizer (AdamW, clipping) for every contender; each runs in its own
subprocess so peak memory (CUDA allocator peak, or the process's max RSS on CPU) is its own.

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

CONTENDERS = ("ours", "ours-compiled", "ours-fused", "hf-eager", "hf-compiled")


def _worker(args: argparse.Namespace) -> dict:
    """Time one contender's training steps in this process; returns tokens/s and peak memory."""
    import torch

    from tinystories.model import GPTNeo, config_from_preset
    from tinystories.model.hf import hf_config_dict

    device = torch.device(args.device)
    torch.manual_seed(0)
    config = config_from_preset(args.preset, **({"vocab_size": args.vocab} if args.vocab else {}))
    name = args.worker
    if name.startswith("hf"):
        import transformers

        hf_config = transformers.GPTNeoConfig(
            **{
                k: v
                for k, v in hf_config_dict(config).items()
                if k not in ("architectures", "model_type", "torch_dtype")
            }
        )
        hf_config._attn_implementation = "eager"
        model = transformers.GPTNeoForCausalLM(hf_config).to(device)

        def loss_of(module, tokens):  # HF shifts the labels itself
            return module(input_ids=tokens, labels=tokens).loss
    else:
        model = GPTNeo(config, impl="fused" if name == "ours-fused" else "torch").to(device)

        def loss_of(module, tokens):
            return module(tokens[:, :-1], tokens[:, 1:], return_logits=False).loss

    module = torch.compile(model) if name.endswith("compiled") else model
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    scaler = torch.amp.GradScaler(device.type, enabled=args.dtype == "fp16")
    # T+1 tokens: ours takes T inputs and T targets, HF takes all and predicts the last T: the same work.
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1), device=device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_of(module, tokens)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    steps, start = 0, time.perf_counter()
    while steps < args.min_steps or (time.perf_counter() - start < args.seconds and steps < args.max_steps):
        loss = step()
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
        "tokens_per_s": args.batch * args.seq * steps / elapsed,
        "peak_bytes": peak,
        "steps": steps,
        "loss": float(loss),
    }


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
    import torch

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
        f"\ntraining step, preset {args.preset}, batch {args.batch} x seq {args.seq}, {args.dtype}, "
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
    import torch

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

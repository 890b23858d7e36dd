"""Where a run executes: the device, the execution path (precision, kernels, compilation; ``auto`` resolved
from the device once at start-up), the torchrun process group, and the peak FLOP/s for MFU."""

from __future__ import annotations

import os
from collections.abc import Collection
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch

from tinystories.runtime.errors import ConfigError

# Dense peak FLOP/s per device and dtype, for MFU. Matched by substring of the device name, first hit wins.
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", dict(bf16=989e12, fp16=989e12, fp32=67e12)),
    ("H100 PCIe", dict(bf16=756e12, fp16=756e12, fp32=51e12)),
    ("H100", dict(bf16=989e12, fp16=989e12, fp32=67e12)),
    ("A100", dict(bf16=312e12, fp16=312e12, fp32=19.5e12)),
    ("L40S", dict(bf16=362e12, fp16=362e12, fp32=91.6e12)),
    ("L4", dict(bf16=121e12, fp16=121e12, fp32=30.3e12)),
    ("A10", dict(bf16=125e12, fp16=125e12, fp32=31.2e12)),
    ("V100", dict(fp16=125e12, fp32=15.7e12)),
    ("T4", dict(fp16=65e12, fp32=8.1e12)),
    ("RTX 4090", dict(bf16=165e12, fp16=165e12, fp32=82.6e12)),
    ("RTX 3090", dict(bf16=71e12, fp16=71e12, fp32=35.6e12)),
]


def peak_flops(device: torch.device, dtype: str) -> float | None:
    """Peak FLOP/s of one device for MFU; $TINYSTORIES_PEAK_FLOPS overrides; None when unknown (CPUs)."""
    if os.environ.get("TINYSTORIES_PEAK_FLOPS"):
        return float(os.environ["TINYSTORIES_PEAK_FLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, table in PEAK_FLOPS:
        if key in name:
            return table.get(dtype)
    return None


def resolve_device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={spec!r} but CUDA is not available")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={spec!r} but MPS is not available (Apple silicon and a PyTorch built for it)")
    return device


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str) -> Dist:
    """Join the torchrun process group when launched by torchrun (nccl on CUDA, gloo on CPU)."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return Dist()
    import torch.distributed as dist

    d = Dist(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    use_cuda = device_spec.startswith("cuda") or (device_spec == "auto" and torch.cuda.is_available())
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return d


def barrier(dist: Dist) -> None:
    if dist.enabled:
        torch.distributed.barrier()


def to_device(batch: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A loader array (numpy, or a pinned tensor with pin_memory=True) on ``device``."""
    tensor = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(batch)
    return tensor.to(device, non_blocking=True)


def autocast_context(device: torch.device, dtype: str) -> AbstractContextManager:
    """Autocast to fp16/bf16 on ``device``, or nothing for fp32."""
    if dtype == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype={"fp16": torch.float16, "bf16": torch.bfloat16}[dtype])


# -- the execution path: what ``impl``/``compile``/``dtype`` = auto mean on this device ------------------------
@dataclass(frozen=True)
class ExecutionPath:
    """How a run computes: autocast dtype, model implementation, torch.compile; and why (one line)."""

    dtype: str  # "fp32" | "fp16" (with the GradScaler) | "bf16"
    impl: str  # "torch" | "fused" | "hybrid" (see tinystories.model.gpt_neo)
    compile: bool
    device: str  # e.g. "cuda:0 sm_90 (NVIDIA H200)", "cpu"
    reason: str

    def describe(self) -> str:
        return (
            f"execution path: {self.dtype}, impl={self.impl}, compile={'on' if self.compile else 'off'} "
            f"on {self.device} ({self.reason})"
        )

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return major, minor


def torch_builds_for(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a PyTorch build compiled for ``arch_list`` (``torch.cuda.get_arch_list()``) runs on this GPU:
    a cubin for sm_XY runs on sm_XZ with Z >= Y, PTX for compute_XY on anything newer (JIT)."""
    major, minor = capability
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        if not number.isdigit():
            continue
        a_major, a_minor = divmod(int(number), 10)
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


def choose_execution(
    device_type: str,
    capability: tuple[int, int] | None,
    *,
    dtype: str,
    impl: str,
    compile: bool | None,
    triton: tuple[bool, str],
    given: Collection[str] = ("dtype", "impl", "compile"),
) -> tuple[str, str, bool, str]:
    """``(dtype, impl, compile, reason)`` for the requested values (``"auto"``/None = choose). Pure: the device
    is described by its type and CUDA compute capability, Triton by ``kernels_available()``. Raises
    :class:`ConfigError` for an explicit choice that cannot work on this device. ``given`` names the values the
    user chose (the reason says "as given"); the others are the command's own (said only where auto differs)."""
    triton_ok, triton_why = triton
    cc = f"sm_{capability[0]}{capability[1]}" if capability else device_type
    cap = capability or (0, 0)  # compared only for CUDA devices, which always have one
    auto: tuple[str, str, bool, str]
    if device_type != "cuda":
        auto = ("fp32", "torch", False, f"{device_type}: the plain PyTorch path, eager")
    elif cap >= (8, 0):
        auto = (
            "bf16",
            "fused" if triton_ok else "torch",
            True,
            f"{cc} >= sm_80: bf16 autocast, the fused Triton kernels, torch.compile"
            + ("" if triton_ok else f"; plain path because {triton_why}"),
        )
    elif cap >= (7, 0):
        auto = (
            "fp16",
            "hybrid" if triton_ok else "torch",
            True,
            f"{cc} < sm_80: no bf16 and Triton's tl.dot has no tensor cores there, so fp16 + GradScaler, "
            f"cuBLAS/SDPA matmuls with Triton LayerNorm and cross-entropy, torch.compile"
            + ("" if triton_ok else f"; plain path because {triton_why}"),
        )
    else:  # Triton (and so torch.compile's GPU code) needs sm_70
        auto = ("fp32", "torch", False, f"{cc} < sm_70: fp32, the plain path, eager (Triton needs sm_70)")
    chosen: tuple[str, str, bool] = (
        dtype if dtype != "auto" else auto[0],
        impl if impl != "auto" else auto[1],
        compile if compile is not None else auto[2],
    )
    requested = [
        (k, v, a)
        for k, v, a, req in zip(("dtype", "impl", "compile"), chosen, auto[:3], (dtype, impl, compile))
        if req not in ("auto", None)
    ]
    as_given = [f"{k}={v}" for k, v, _ in requested if k in given]
    commands = [f"{k}={v}" for k, v, a in requested if k not in given and v != a]
    said = ([f"{', '.join(as_given)} as given"] if as_given else []) + (
        [f"{', '.join(commands)} for this command"] if commands else []
    )
    reason = f"{'; '.join(said)}; auto: {auto[3]}" if said else auto[3]
    if chosen[0] == "bf16" and device_type == "cuda" and cap < (8, 0):
        raise ConfigError(
            f"dtype=bf16 needs a GPU of compute capability >= 8.0 (this one is {cc}); use --dtype=fp16 (or auto)"
        )
    if chosen[1] in ("fused", "hybrid") and not triton_ok:
        raise ConfigError(
            f"impl={chosen[1]} needs the Triton kernels, which cannot run here: {triton_why}; "
            f"use --impl=torch (or auto)"
        )
    if chosen[2] and device_type == "cuda" and cap < (7, 0):
        raise ConfigError(
            f"compile=true needs Triton's GPU compiler, which needs compute capability >= 7.0 "
            f"(this GPU is {cc}); use --compile=false (or auto)"
        )
    return chosen[0], chosen[1], chosen[2], reason


def resolve_execution(
    device: torch.device,
    *,
    dtype: str = "auto",
    impl: str = "auto",
    compile: bool | None = None,
    given: Collection[str] = ("dtype", "impl", "compile"),
) -> ExecutionPath:
    """The execution path on ``device`` for the requested values (the trainer, ``sample``, ``eval``, ``sweep``
    all call this, so they take the same path). Stops with a :class:`ConfigError` before anything is
    allocated when an explicit choice cannot work."""
    from tinystories.kernels import kernels_available

    capability = cuda_capability(device)
    name = str(device)
    if capability is not None:
        name = f"{device} sm_{capability[0]}{capability[1]} ({torch.cuda.get_device_name(device)})"
        arch_list = torch.cuda.get_arch_list()
        if torch.version.cuda and arch_list and not torch_builds_for(capability, arch_list):  # (ROCm: gfx names)
            raise ConfigError(
                f"this PyTorch build ({torch.__version__}, CUDA {torch.version.cuda}) has no kernels "
                f"for sm_{capability[0]}{capability[1]} (it has {' '.join(arch_list)}); "
                f"install a build that does (CUDA 12.x builds still include sm_70)"
            )
    chosen = choose_execution(
        device.type, capability, dtype=dtype, impl=impl, compile=compile, triton=kernels_available(), given=given
    )
    return ExecutionPath(*chosen[:3], device=name, reason=chosen[3])

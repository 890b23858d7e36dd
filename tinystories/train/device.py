"""Where a run executes: the device, the precision, the torchrun process group, and the peak FLOP/s for MFU."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from tinystories.train.config import ConfigError

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
    return device


def resolve_dtype(spec: str, device: torch.device) -> str:
    if spec == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if spec == "fp16" and device.type != "cuda":
        raise ConfigError("dtype=fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    return spec


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


def loader_state_for_rank(state: dict, dist: Dist, checkpoint: str) -> dict:
    """The training loader's state of a checkpoint, for this rank.

    Rank 0 saves its loader's state; every rank has delivered the same number of batches, so the others
    continue from the same position with their own rank. Resuming with another number of processes
    would change which windows each rank reads (not bit-exact), so it is refused."""
    if state.get("world_size", 1) != dist.world_size:
        raise ConfigError(f"--resume: {checkpoint} was trained by {state.get('world_size', 1)} process(es) "
                          f"(nnodes x nproc_per_node), this launch has {dist.world_size}; resume it with "
                          f"{state.get('world_size', 1)}")
    return {**state, "rank": dist.rank}


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

"""Where a stage runs: device choice, DistributedDataParallel set-up under ``torchrun``, checkpoints.

Launch several GPUs with ``torchrun --nproc_per_node=N -m segmix.cli train-cls ...``: every process
reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the environment, uses NCCL on CUDA (gloo on CPU),
and only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist

from .io import atomic_path

__all__ = ["Runtime", "setup_runtime", "is_main_process", "atomic_torch_save", "load_checkpoint",
           "rng_state", "set_rng_state"]


def is_main_process() -> bool:
    """True outside ``torchrun`` and on its rank 0 (readable before the process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, value: float, weight: float) -> float:
        """Weighted mean of ``value`` over all processes (``weight``: e.g. the sample count)."""
        if not self.distributed:
            return value
        pair = torch.tensor([value * weight, weight], dtype=torch.float64, device=self.device)
        dist.all_reduce(pair)
        return float(pair[0] / pair[1])

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def setup_runtime(device: str = "auto") -> Runtime:
    """Pick the device (``auto``: CUDA when available) and join ``torchrun``'s process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    chosen = torch.device(device)
    if chosen.type == "cuda":
        if chosen.index is None:  # "cuda": this process's GPU (torchrun's local rank)
            chosen = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        if chosen.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(chosen)!r} requested but this machine has"
                             f" {torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(chosen)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return Runtime(chosen, rank, world_size)


def rng_state() -> Dict[str, Any]:
    state: Dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(path: Path, payload: Dict[str, Any]) -> None:
    """``torch.save`` to a temp file, then rename: a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, map_location: Optional[torch.device] = None) -> Dict[str, Any]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    return torch.load(path, map_location=map_location or "cpu", weights_only=False)

"""Where a stage runs: device choice, DistributedDataParallel set-up under ``torchrun``, checkpoints.

Launch several GPUs with ``torchrun --nproc_per_node=N -m segmix.cli train-cls ...``: every process
reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the environment, uses NCCL on CUDA (gloo on CPU),
and only rank 0 writes files.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional

import torch
import torch.distributed as dist

from .errors import SegmixError
from .io import atomic_path

__all__ = ["Runtime", "Launch", "launch", "setup_runtime", "is_main_process", "atomic_torch_save",
           "load_checkpoint", "load_torch_file", "UnsafeFileError", "DeviceError", "DEVICES",
           "check_device", "rng_state", "set_rng_state"]


class UnsafeFileError(SegmixError, ValueError):
    """A ``.pt`` file that is damaged, not a PyTorch file, or holds more than tensors and plain
    values (a pickle that could run code: never loaded)."""


class Launch(NamedTuple):
    """This process's place among ``torchrun``'s (rank 0 of 1 outside it)."""

    rank: int
    world_size: int
    local_rank: int


def launch() -> Launch:
    """``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as ``torchrun`` sets them (the one place they are
    read; readable before the process group exists)."""
    return Launch(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                  int(os.environ.get("LOCAL_RANK", "0")))


def is_main_process() -> bool:
    """True outside ``torchrun`` and on its rank 0 (readable before the process group exists)."""
    return launch().rank == 0


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


class DeviceError(SegmixError, ValueError):
    """A device that is not a device name, or that this machine does not have."""


DEVICES = ("auto", "cpu", "cuda", "cuda:N")


def check_device(device: str, key: str = "device") -> None:
    """Refuse a ``device`` setting (config key ``key``) that is not one of :data:`DEVICES`, or names
    a CUDA device this machine lacks; the error names the key, the value and what there is."""
    device = str(device)
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:")
                                                      and device[5:].isdigit()):
        raise DeviceError(f"{key} must be one of {', '.join(DEVICES)}, got {device!r}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"{key}: {device!r} requested but CUDA is not available on this"
                              " machine (use auto or cpu)")
        count = torch.cuda.device_count()
        if ":" in device and int(device[5:]) >= count:
            raise DeviceError(f"{key}: {device!r} requested but this machine has {count} CUDA"
                              f" device(s) (cuda:0 to cuda:{count - 1})")


def setup_runtime(device: str = "auto") -> Runtime:
    """Pick the device (``auto``: CUDA when available) and join ``torchrun``'s process group."""
    rank, world_size, local_rank = launch()
    check_device(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(device)
    if chosen.type == "cuda":
        if chosen.index is None:  # "cuda": this process's GPU (torchrun's local rank)
            chosen = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
            check_device(str(chosen))
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


def load_torch_file(path: Path, what: str = "file",
                    map_location: Optional[torch.device | str] = None) -> Any:
    """The contents of a ``torch.save`` file, loaded with ``weights_only=True``: tensors, numbers,
    strings and containers of them only, so a planted pickle cannot run code. A file that holds
    anything else, or is damaged, is refused with one line naming it (:class:`UnsafeFileError`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error):  # an object the weights-only unpickler refuses
            raise UnsafeFileError(
                f"{what} {path} holds objects other than tensors and plain values; segmix never"
                " unpickles them (a file from an untrusted source could run code). If an older"
                " segmix wrote it, start again with --overwrite") from None
        reason = _unpickler_reason(error)
    except (EOFError, RuntimeError, ValueError, OSError) as error:
        reason = _first_line(error)
    raise UnsafeFileError(f"{what} {path} is damaged or not a PyTorch file ({reason})")


def _unpickler_reason(error: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler found wrong, without its advice to unpickle anyway."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        return f"UnpicklingError: {detail[0] if detail else ''}"[:200]
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


def load_checkpoint(path: Path, map_location: Optional[torch.device] = None) -> Dict[str, Any]:
    """A training checkpoint (see :func:`load_torch_file`); one that is not a dict is refused."""
    state = load_torch_file(path, "checkpoint", map_location)
    if not isinstance(state, dict):
        raise UnsafeFileError(f"checkpoint {path} is not a segmix checkpoint (a"
                              f" {type(state).__name__}, not a dict)")
    return state

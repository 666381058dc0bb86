"""Export a trained model for deployment (TorchScript, ONNX) and check the export against the eager
model on real tiles.

The exported graph takes what an image reader gives after one division: float32 RGB in [0, 1],
``[N, 3, H, W]`` at the model's training size, any batch size; the normalisation is inside the
graph. It returns the model's logits: ``[N, K]`` for a classifier (softmax or sigmoid as
``config.json``'s ``loss`` says), ``[N, K + 1, H, W]`` for a segmenter (0 = background).
ONNX needs the optional extra ``onnx`` (``pip install "segmix-wsss[onnx]"``).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Callable, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..data import resized
from ..errors import SegmixError
from ..io import atomic_path

__all__ = ["FORMATS", "ExportError", "NormalisedModel", "check_format", "export_model",
           "load_exported", "reference_tiles"]

FORMATS = ("torchscript", "onnx")
SUFFIXES = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


class ExportError(SegmixError, RuntimeError):
    """An export that cannot be made here, or whose outputs differ from the eager model's."""


class NormalisedModel(nn.Module):
    """``network`` behind its input normalisation: takes RGB in [0, 1]."""

    def __init__(self, network: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network((images - self.mean) / self.std)


def check_format(name: str) -> None:
    """Refuse an unknown format, and ``onnx`` when its packages are missing (naming the extra)."""
    if name not in FORMATS:
        raise ExportError(f"unknown export format {name!r}; valid: {', '.join(FORMATS)}")
    if name == "onnx":
        missing = []
        for package in ONNX_PACKAGES:
            try:
                __import__(package)
            except ImportError:
                missing.append(package)
        if missing:
            raise ExportError(f"ONNX export needs {', '.join(missing)}: install the extra with"
                              ' pip install "segmix-wsss[onnx]"')


def export_model(model: NormalisedModel, example: torch.Tensor, fmt: str, path: Path) -> Path:
    """Write ``model`` (eval mode, CPU) traced on ``example`` ``[N, 3, H, W]`` in format ``fmt`` to
    ``path`` (written whole or not at all); the batch size stays free."""
    check_format(fmt)
    model = model.eval().cpu()
    with torch.no_grad(), atomic_path(path) as tmp:
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(model, example), str(tmp))
        else:
            batch = torch.export.Dim("batch", min=1, max=4096)
            with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
                program = torch.onnx.export(model, (example,), input_names=["images"],
                                            output_names=["logits"], dynamo=True,
                                            dynamic_shapes=({0: batch},))
            program.save(str(tmp))
    return Path(path)


def load_exported(path: Path, fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exported model at ``path`` as a function from images to logits (on the CPU)."""
    if fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu")

        def run(images: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return module(images)

        return run
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


def reference_tiles(size: Tuple[int, int], count: int = 8) -> np.ndarray:
    """Up to 16 real tissue tiles of ``size`` (height, width), uint8 RGB ``[N, H, W, 3]``: 256 px
    windows on a 4 x 4 grid over the immunohistochemistry image that ships with scikit-image
    (512 x 512 px), resized."""
    from skimage import data as skdata

    if not 1 <= count <= 16:
        raise ValueError(f"count must be in [1, 16], got {count}")
    image = skdata.immunohistochemistry()
    side = min(image.shape[:2]) // 2
    starts = np.linspace(0, min(image.shape[:2]) - side, 4).astype(int)
    corners = [(y, x) for y in starts for x in starts][:count]
    return np.stack([resized(image[y:y + side, x:x + side], size) for y, x in corners])

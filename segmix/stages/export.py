"""``segmix export``: a trained classifier or segmenter as TorchScript or ONNX, checked on real tiles.

``model`` is a model folder (``<stage>/model/`` of a training run) or a ``.pt`` model file. The
export (:mod:`segmix.models.export`: float32 RGB in [0, 1] in, logits out, normalisation inside,
batch size free, the training tile size) is run beside the eager model on ``export.check_count``
real tiles: the images of ``export.check_images`` (a folder), or tiles of the immunohistochemistry
image that ships with scikit-image. The largest difference of their logits is printed; above
``export.tolerance`` the export is removed and the run fails.

Outputs: ``model.torchscript.pt`` or ``model.onnx``, and ``export.json`` (marks it finished: the
format, the file, the parity check, the input and output layout, and the model's ``config.json``
facts: classes, palette, size, normalisation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

from ..config import ConfigError, check_number
from ..data import read_rgb
from ..data.readers import IMAGE_SUFFIXES, image_files
from ..models.export import (
    FORMATS,
    SUFFIXES,
    ExportError,
    NormalisedModel,
    check_format,
    export_model,
    load_exported,
    reference_tiles,
)
from ..io import write_json
from ..data import resized
from ..models.pretrained import load_pretrained

__all__ = ["DEFAULTS", "DONE_FILE", "run", "validate"]

DONE_FILE = "export.json"

DEFAULTS: Dict[str, Any] = {
    "output_dir": "runs/export",
    "model": None,  # a model folder (e.g. runs/demo/segmenter/model) or a .pt model file
    "export": {
        "format": "onnx",        # onnx | torchscript
        "check_images": None,    # a folder of images for the parity check (null: built-in tiles)
        "check_count": 8,        # how many tiles the parity check runs
        "tolerance": 1e-4,       # largest |exported - eager| logit difference accepted
    },
}


def validate(config: Dict[str, Any]) -> None:
    """Check every value this stage reads (see :mod:`segmix.stages`)."""
    if not config["model"]:
        raise ConfigError("model is not set: give a model folder (e.g. runs/demo/segmenter/model)"
                          " or a .pt model file, with --model or --set model=PATH")
    settings = config["export"]
    if settings["format"] not in FORMATS:
        raise ConfigError(f"export.format must be one of {', '.join(FORMATS)}, got"
                          f" {settings['format']!r}")
    try:
        check_format(settings["format"])
    except ExportError as error:
        raise ConfigError(f"export.format: {error}") from error
    check_number("export.check_count", settings["check_count"], integer=True)
    if not settings["check_images"] and settings["check_count"] > 16:
        raise ConfigError(f"export.check_count: the built-in tiles are 16, got"
                          f" {settings['check_count']}; set export.check_images for more")
    check_number("export.tolerance", settings["tolerance"])
    folder = settings["check_images"]
    if folder and not Path(folder).is_dir():
        raise ConfigError(f"export.check_images: {folder} is not a folder")


def _check_tiles(settings: Dict[str, Any], size) -> np.ndarray:
    count = int(settings["check_count"])
    if not settings["check_images"]:
        return reference_tiles(size, count)
    folder = Path(settings["check_images"])
    paths = image_files(folder)[:count]
    if not paths:
        raise ConfigError(f"export.check_images: {folder} holds no images"
                          f" ({', '.join(IMAGE_SUFFIXES)})")
    return np.stack([resized(read_rgb(path), size) for path in paths])


def run(config: Dict[str, Any], output_dir: Path, *, resume: bool = False,
        overwrite: bool = False) -> Dict[str, Any]:
    """Export ``config['model']`` and check it; returns the summary written to ``export.json``."""
    validate(config)
    settings, fmt = config["export"], config["export"]["format"]
    model = load_pretrained(Path(config["model"]))
    tiles = _check_tiles(settings, model.image_size)
    images = torch.from_numpy(tiles).permute(0, 3, 1, 2).float().div(255).contiguous()
    wrapped = NormalisedModel(model.network, model.mean, model.std).eval()
    with torch.no_grad():
        eager = wrapped(images)
    path = export_model(wrapped, images[:1], fmt, Path(output_dir) / f"model{SUFFIXES[fmt]}")
    exported = load_exported(path, fmt)(images)
    difference = float((exported.float() - eager).abs().max())
    scale = float(eager.abs().max())
    print(f"{fmt} export of the {model.kind} {config['model']}: max |exported - eager| ="
          f" {difference:.3g} over {len(tiles)} tiles (logits up to {scale:.3g})", flush=True)
    if difference > float(settings["tolerance"]):
        path.unlink()
        raise ExportError(f"the {fmt} export differs from the eager model by {difference:.3g} >"
                          f" export.tolerance {settings['tolerance']}; removed {path}")
    height, width = model.image_size
    outputs = f"[N, {len(model.classes)}]" if model.kind == "classifier" else \
        f"[N, {len(model.classes) + 1}, {height}, {width}] (0 = background)"
    summary = {
        "format": fmt, "file": path.name, "source": str(config["model"]), "kind": model.kind,
        "max_abs_difference": difference, "max_abs_logit": scale, "check_tiles": len(tiles),
        "check_images": settings["check_images"] or "skimage.data.immunohistochemistry",
        "input": f"images: float32 RGB in [0, 1], [N, 3, {height}, {width}], normalised inside",
        "output": f"logits: {outputs}", "model": model.info}
    write_json(Path(output_dir) / DONE_FILE, summary)
    print(f"wrote {path}", flush=True)
    return summary

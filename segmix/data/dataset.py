"""Torch dataset over :class:`Sample`\\ s, albumentations pipelines from the config, and the glue
that turns a ``data`` config section into a ready dataset for one split."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import Dataset

from ..config import ConfigError, check_number
from ..labels import MaskConvention
from ..shuffle import size_pair
from .images import read_label_mask, read_rgb
from .readers import (
    BCSS_CLASSES,
    FORMATS,
    LUAD_CLASSES,
    read_class_folders,
    read_csv,
    read_filename_labels,
    verify_files,
)
from .samples import DatasetError, ReadResult, Sample, resolve_problems

__all__ = ["DATA_DEFAULTS", "TileDataset", "build_transform", "read_split", "count_masks",
           "dataset_classes",
           "image_size_of", "mask_convention", "model_transform", "unique_names", "unique_stems",
           "validate_data"]

# The ``data`` config section every stage shares (see docs/classification.md).
DATA_DEFAULTS: Dict[str, Any] = {
    "format": "csv",
    "classes": [],
    "image_size": 224,
    "mpp": None,  # microns per pixel of the tiles (kept with trained models; optional)
    "train": {"path": None, "split": "train", "masks": None},
    "val": {"path": None, "split": "val", "masks": None},
    "mask": {"convention": "binary", "background_value": 0, "first_class_value": 1,
             "ignore_value": 255},
    "on_bad_file": "raise",
    "verify_files": True,
}


def image_size_of(value: Any) -> Tuple[int, int]:
    """``224`` or ``[h, w]`` -> ``(h, w)``; anything else is a :class:`ConfigError`."""
    try:
        return size_pair(value, "data.image_size")
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from error


def build_transform(steps: Sequence[Mapping[str, Any]], image_size: Tuple[int, int],
                    mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    """Resize -> the configured albumentations steps -> normalise -> tensor.

    Each step is ``{name: <albumentations class>, <its arguments>}``; one random draw is applied to
    the image and its mask alike.
    """
    transforms: List[A.BasicTransform] = [A.Resize(*image_size)]
    for step in steps or []:
        if not isinstance(step, Mapping) or "name" not in step:
            raise ConfigError(f"augmentation step {step!r} must be a mapping with a 'name'")
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in step.items() if k != "name"}
        name = step["name"]
        cls = getattr(A, str(name), None)
        if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
            close = difflib.get_close_matches(str(name), [n for n in dir(A) if n[:1].isupper()], 5)
            raise ConfigError(f"unknown albumentations transform {name!r}; did you mean {close}?")
        try:
            transforms.append(cls(**kwargs))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"augmentation {name} with {kwargs}: {error}") from error
    transforms += [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(transforms)


class TileDataset(Dataset):
    """Items are dicts: ``image`` float ``[3, H, W]``, ``target`` multi-hot float ``[K]``,
    ``index``, and ``mask`` long ``[H, W]`` (0 background, 1..K, 255 ignore) when masks are read."""

    def __init__(self, samples: Sequence[Sample], num_classes: int, transform: A.Compose,
                 mask_convention: Optional[MaskConvention] = None) -> None:
        self.samples = list(samples)
        self.num_classes = num_classes
        self.transform = transform
        self.mask_convention = mask_convention
        if mask_convention is not None:
            missing = [str(s.image) for s in self.samples if s.mask is None]
            if missing:
                raise DatasetError(
                    f"{len(missing)} sample(s) have no mask, e.g. {missing[:3]}; masks are needed"
                    " here (evaluation or a supervised run)")

    def __len__(self) -> int:
        return len(self.samples)

    def target(self, index: int) -> torch.Tensor:
        target = torch.zeros(self.num_classes)
        target[list(self.samples[index].labels)] = 1.0
        return target

    def __getitem__(self, index: int) -> Dict[str, Any]:
        sample = self.samples[index]
        image = read_rgb(sample.image)
        item: Dict[str, Any] = {"index": index, "target": self.target(index)}
        if self.mask_convention is None:
            item["image"] = self.transform(image=image)["image"]
            return item
        mask = read_label_mask(sample.mask, sample.labels, self.num_classes, self.mask_convention,
                               image.shape)
        out = self.transform(image=image, mask=mask)
        item["image"] = out["image"]
        item["mask"] = torch.as_tensor(np.asarray(out["mask"]), dtype=torch.long)
        return item


def dataset_classes(data: Mapping[str, Any]) -> List[str]:
    """The image-level classes of a ``data`` config (LUAD / BCSS default to their own)."""
    classes = list(data.get("classes") or [])
    if not classes and data["format"] == "luad":
        classes = list(LUAD_CLASSES)
    if not classes and data["format"] == "bcss":
        classes = list(BCSS_CLASSES)
    if not classes:
        raise ConfigError("data.classes must list the image-level classes (background excluded)")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"data.classes has duplicates: {classes}")
    if any(str(c).casefold() == "background" for c in classes):
        raise ConfigError("data.classes must not contain 'background': it is segmentation class 0,"
                         " never an image-level class")
    return [str(c) for c in classes]


def read_split(data: Mapping[str, Any], split: str, *, progress: bool = True) -> List[Sample]:
    """The samples of ``data[split]`` (``{path, split, masks}``), checked, problems resolved."""
    fmt = data["format"]
    if fmt not in FORMATS:
        raise ConfigError(f"unknown data.format {fmt!r}; valid: {', '.join(FORMATS)}")
    spec = data.get(split)
    if not spec or not spec.get("path"):
        raise ConfigError(f"data.{split}.path is not set")
    classes = dataset_classes(data)
    path = Path(spec["path"])
    masks = Path(spec["masks"]) if spec.get("masks") else None
    if fmt == "csv":
        result: ReadResult = read_csv(path, classes, spec.get("split"))
    elif fmt in ("luad", "bcss"):
        result = read_filename_labels(path, classes, masks)
    else:
        result = read_class_folders(path, classes, masks)
    if data.get("verify_files", True):
        result = verify_files(result, progress=progress)
    where = f"data.{split} ({path}{', split ' + spec['split'] if spec.get('split') else ''})"
    return resolve_problems(result, where, data.get("on_bad_file", "raise"))


def count_masks(data: Mapping[str, Any], split: str) -> Tuple[int, int]:
    """How many tiles ``data[split]`` lists, and how many of them name a ground-truth mask (read
    from the list alone, no file opened)."""
    samples = read_split({**data, "verify_files": False}, split, progress=False)
    return len(samples), sum(1 for sample in samples if sample.mask)


def model_transform(info: Mapping[str, Any]) -> A.Compose:
    """The eval transform of a saved model (its file's ``info``): resize to the size it was trained
    at and normalise with its mean and std."""
    return build_transform([], image_size_of(info["image_size"]), info["mean"], info["std"])


def validate_data(data: Mapping[str, Any], required: Sequence[str] = ()) -> None:
    """Check a ``data`` section without reading the dataset: format, classes, image size, mask
    convention, ``on_bad_file``, and that the splits in ``required`` have a path (whether the
    files exist is the readers' question: they name every missing file)."""
    if data["format"] not in FORMATS:
        raise ConfigError(f"data.format must be one of {', '.join(FORMATS)}, got {data['format']!r}")
    dataset_classes(data)
    image_size_of(data["image_size"])
    if data["mpp"] is not None:
        check_number("data.mpp", data["mpp"])
    mask_convention(data)
    if data["on_bad_file"] not in ("raise", "skip"):
        raise ConfigError(f"data.on_bad_file must be 'raise' or 'skip', got {data['on_bad_file']!r}")
    for split in required:
        if not (data.get(split) or {}).get("path"):
            raise ConfigError(f"data.{split}.path is not set (the {split} tiles are needed)")


def mask_convention(data: Mapping[str, Any]) -> MaskConvention:
    """The ``data.mask`` section as a :class:`MaskConvention`."""
    try:
        return MaskConvention(**data["mask"])
    except (TypeError, ValueError) as error:
        raise ConfigError(f"data.mask: {error}") from error


def unique_names(samples: Sequence[Sample]) -> List[str]:
    """File stems used to name per-tile outputs; duplicates are an error naming them."""
    return unique_stems([s.image for s in samples])


def unique_stems(paths: Sequence[Path]) -> List[str]:
    """The file stems of ``paths``, which name per-image outputs; duplicates are an error."""
    seen: Dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise DatasetError(f"two images share the name {path.stem!r} ({seen[path.stem]} and"
                               f" {path}); per-image outputs are named by file stem, so rename one")
        seen[path.stem] = path
    return list(seen)

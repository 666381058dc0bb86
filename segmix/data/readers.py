"""Dataset readers: each turns a layout on disk into :class:`Sample`\\ s plus a list of problems.

* ``csv``: a CSV with columns ``image,label`` and optionally ``mask`` and ``split`` (paths relative
  to the CSV; ``label`` a class name or several joined by ``;``), as ``shared/data/ebhi-seg``;
* ``luad``: LUAD-HistoSeg file names ``name-[1 0 0 1].png`` (classes TE, NEC, LYM, TAS);
* ``bcss``: BCSS-WSSS file names ``name[1101].png`` (classes TUM, STR, LYM, NEC);
* ``folders``: one folder per class, ``root/<class name>/<tile>``.

Nothing is dropped silently: a missing or unreadable file, an unknown class or an empty label is
reported with the file (and CSV line) it comes from.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tqdm import tqdm

from .images import ImageReadError, check_image
from .samples import Problem, ReadResult, Sample

__all__ = [
    "FORMATS",
    "IMAGE_SUFFIXES",
    "image_files",
    "LUAD_CLASSES",
    "BCSS_CLASSES",
    "read_csv",
    "read_filename_labels",
    "read_class_folders",
    "parse_filename_label",
    "verify_files",
]

FORMATS = ("csv", "luad", "bcss", "folders")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LUAD_CLASSES = ("TE", "NEC", "LYM", "TAS")
BCSS_CLASSES = ("TUM", "STR", "LYM", "NEC")
_BRACKET_LABEL = re.compile(r"\[\s*([01](?:[\s,]*[01])*)\s*\]")


def _class_lookup(classes: Sequence[str]) -> Callable[[str], Optional[int]]:
    exact = {name: i for i, name in enumerate(classes)}
    folded: Dict[str, List[int]] = {}
    for i, name in enumerate(classes):
        folded.setdefault(name.casefold(), []).append(i)

    def lookup(name: str) -> Optional[int]:
        if name in exact:
            return exact[name]
        matches = folded.get(name.casefold(), [])
        return matches[0] if len(matches) == 1 else None

    return lookup


def image_files(folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> List[Path]:
    """The files of ``folder`` (not recursive) whose suffix is one of ``suffixes``, sorted; hidden
    files (segmix's temporaries among them) are skipped."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))


def read_csv(csv_path: Path, classes: Sequence[str], split: Optional[str] = None) -> ReadResult:
    """Read a labels CSV; keep the rows of ``split`` when given (needs a ``split`` column)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        return ReadResult([], [Problem(str(csv_path), "CSV file not found")])
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in ("image", "label") if c not in columns]
        if split is not None and "split" not in columns:
            missing.append("split")
        if missing:
            return ReadResult([], [Problem(str(csv_path), f"missing column(s) {missing}; columns"
                                           f" are {columns} (expected image,label[,mask][,split])")])
        rows = list(reader)
    lookup = _class_lookup(classes)
    base = csv_path.parent
    result = ReadResult([])
    for line, row in enumerate(rows, start=2):
        if split is not None and (row.get("split") or "").strip() != split:
            continue
        where = f"{csv_path} line {line}"
        image_field = (row.get("image") or "").strip()
        if not image_field:
            result.problems.append(Problem(where, "empty image path"))
            continue
        names = [n.strip() for n in (row.get("label") or "").split(";") if n.strip()]
        if not names:
            result.problems.append(Problem(where, f"label {row.get('label')!r} parses to no class"))
            continue
        indices = [lookup(name) for name in names]
        unknown = [name for name, index in zip(names, indices) if index is None]
        if unknown:
            result.problems.append(Problem(
                where, f"unknown class name(s) {unknown}; configured classes: {list(classes)}"))
            continue
        mask_field = (row.get("mask") or "").strip()
        result.samples.append(Sample(
            image=base / image_field,
            labels=tuple(sorted(set(indices))),  # type: ignore[arg-type]
            mask=base / mask_field if mask_field else None,
            listed_at=where,
        ))
    return result


def parse_filename_label(name: str, num_classes: int) -> Tuple[int, ...]:
    """Classes of a file name's last ``[1 0 0 1]`` / ``[1101]`` group; ``ValueError`` if none."""
    matches = _BRACKET_LABEL.findall(name)
    if not matches:
        raise ValueError(f"no [0/1 ...] label in the file name {name!r}")
    digits = re.findall(r"[01]", matches[-1])
    if len(digits) != num_classes:
        raise ValueError(
            f"file-name label [{matches[-1]}] has {len(digits)} entries, expected {num_classes}"
        )
    labels = tuple(i for i, d in enumerate(digits) if d == "1")
    if not labels:
        raise ValueError(f"file-name label [{matches[-1]}] parses to no class")
    return labels


def _find_mask(mask_dir: Path, image: Path) -> Optional[Path]:
    for candidate in (mask_dir / image.name, mask_dir / f"{image.stem}.png"):
        if candidate.is_file():
            return candidate
    return None


def read_filename_labels(image_dir: Path, classes: Sequence[str],
                         mask_dir: Optional[Path] = None) -> ReadResult:
    """LUAD-HistoSeg / BCSS-WSSS: labels in the file names; masks of the same name in ``mask_dir``."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        return ReadResult([], [Problem(str(image_dir), "image folder not found")])
    if mask_dir is not None and not Path(mask_dir).is_dir():
        return ReadResult([], [Problem(str(mask_dir), "mask folder not found")])
    result = ReadResult([])
    for image in image_files(image_dir):
        try:
            labels = parse_filename_label(image.stem, len(classes))
        except ValueError as error:
            result.problems.append(Problem(str(image), str(error)))
            continue
        mask = None
        if mask_dir is not None:
            mask = _find_mask(Path(mask_dir), image)
            if mask is None:
                result.problems.append(Problem(str(image), f"missing mask in {mask_dir}"))
                continue
        result.samples.append(Sample(image=image, labels=labels, mask=mask))
    return result


def read_class_folders(root: Path, classes: Sequence[str],
                       mask_root: Optional[Path] = None) -> ReadResult:
    """``root/<class>/<tile>``; masks (optional) at ``mask_root/<class>/<tile stem>.png``."""
    root = Path(root)
    if not root.is_dir():
        return ReadResult([], [Problem(str(root), "dataset folder not found")])
    lookup = _class_lookup(classes)
    result = ReadResult([])
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        index = lookup(folder.name)
        if index is None:
            result.problems.append(Problem(
                str(folder), f"folder is not a configured class; classes: {list(classes)}"))
            continue
        for image in image_files(folder):
            mask = None
            if mask_root is not None:
                mask = _find_mask(Path(mask_root) / folder.name, image)
                if mask is None:
                    result.problems.append(Problem(str(image), f"missing mask in {mask_root}"))
                    continue
            result.samples.append(Sample(image=image, labels=(index,), mask=mask))
    return result


def verify_files(result: ReadResult, *, check_masks: bool = True, progress: bool = True) -> ReadResult:
    """Decode every image (and mask) fully; unreadable, truncated or missing files become problems."""
    good: List[Sample] = []
    problems = list(result.problems)
    for sample in tqdm(result.samples, desc="checking files", unit="file", disable=not progress,
                       leave=False):
        paths = [sample.image] + ([sample.mask] if check_masks and sample.mask else [])
        try:
            for path in paths:
                check_image(path)
        except ImageReadError as error:
            where = f" (listed at {sample.listed_at})" if sample.listed_at else ""
            problems.append(Problem(str(path), str(error).split(": ", 1)[-1] + where))
            continue
        good.append(sample)
    return ReadResult(good, problems)


"""``segmix tile``: whole-slide images -> a tile folder and the CSV ``segmix run`` trains on.

``slides`` is a CSV (``slide,label[,split]``; paths relative to the CSV; several labels joined by
``;``) or a folder of class subfolders (``slides/<class>/<slide>``). Each slide is opened with
OpenSlide (:mod:`segmix.slides.slide`, the extra ``wsi``), its tissue found on a thumbnail
(:func:`pseudo_masks.tissue.thumbnail_tissue_mask`), and tiles of ``tile.size`` px at ``tile.mpp``
microns per pixel, on a grid with ``tile.overlap`` px shared, are written where at least
``tile.min_tissue`` of the tile is tissue. Slides without a split are divided by slide
(``split.val_fraction``, seeded), never by tile, so no patient's tissue is on both sides.

Outputs: ``tiles/<slide>/<slide>_x<X>_y<Y>.png`` (X, Y: level-0 position), ``tissue/<slide>.png``
(the thumbnail with the tissue found, to check), ``labels.csv`` (``image,label,split,slide``),
``slides.csv`` (per slide: size, mpp, level read, tissue share, tiles), ``data.yaml`` (the ``data``
section for ``segmix run --config``: classes, image size, mpp, the CSV) and ``summary.json``
(marks the run finished). Resumable: a slide whose ``tiles/<slide>/tiles.csv`` exists is done; an
interrupted one is redone, skipping its finished tiles.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import yaml
from tqdm import tqdm

from pseudo_masks.tissue import tissue_fraction

from ..artifacts import LABELS_CSV, SUMMARY_FILE, TILE_DATA_FILE
from ..config import ConfigError, check_number, check_path
from ..data import resized, unique_stems, write_rgb
from ..data.readers import image_files
from ..io import atomic_write_text, read_csv_rows, write_csv, write_json
from ..sharding import check_shard, current_shard, join, run_share
from ..slides.slide import SLIDE_SUFFIXES, Slide, tissue_picture

__all__ = ["DEFAULTS", "DONE_FILE", "RESUMABLE_CHANGES", "run", "validate", "list_slides"]

DONE_FILE = SUMMARY_FILE
RESUMABLE_CHANGES = {"slide_mpp"}

DEFAULTS: Dict[str, Any] = {
    "output_dir": "runs/tiles",
    "slides": None,       # a CSV slide,label[,split] or a folder of class subfolders
    "slide_mpp": None,    # microns per pixel of level 0 for slides whose metadata lacks it
    "shard": None,        # i/n or slurm: this process's share of the slides (docs/slides.md)
    "tile": {"mpp": 0.5, "size": 224, "overlap": 0, "min_tissue": 0.5},
    "split": {"val_fraction": 0.2, "seed": 0},
    "tissue": {"thumbnail_mpp": 16.0, "min_saturation": 0.05},
}


def validate(config: Dict[str, Any]) -> None:
    """Check every value this stage reads (see :mod:`segmix.stages`)."""
    check_shard(config["shard"])
    check_path("slides", config["slides"], "a CSV slide,label[,split] or a folder of class"
               " subfolders holding the slides")
    tile = config["tile"]
    check_number("tile.mpp", tile["mpp"])
    check_number("tile.size", tile["size"], integer=True)
    check_number("tile.overlap", tile["overlap"], integer=True, positive=False)
    if tile["overlap"] >= tile["size"]:
        raise ConfigError(f"tile.overlap must be below tile.size ({tile['size']}), got"
                          f" {tile['overlap']}")
    if not 0 <= tile["min_tissue"] <= 1:
        raise ConfigError(f"tile.min_tissue must be in [0, 1], got {tile['min_tissue']!r}")
    if not 0 <= config["split"]["val_fraction"] < 1:
        raise ConfigError(f"split.val_fraction must be in [0, 1), got"
                          f" {config['split']['val_fraction']!r}")
    check_number("tissue.thumbnail_mpp", config["tissue"]["thumbnail_mpp"])
    if config["slide_mpp"] is not None:
        check_number("slide_mpp", config["slide_mpp"])


def list_slides(source: Path) -> List[Tuple[Path, List[str], Optional[str]]]:
    """``(slide, labels, split or None)`` of a CSV or of a folder of class subfolders."""
    source = Path(source)
    if source.is_file():
        with open(source, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in ("slide", "label") if c not in (reader.fieldnames or [])]
            if missing:
                raise ConfigError(f"{source}: missing column(s) {missing}; columns are"
                                  f" {reader.fieldnames} (expected slide,label[,split])")
            rows = []
            for line, row in enumerate(reader, start=2):
                labels = [n.strip() for n in (row["label"] or "").split(";") if n.strip()]
                if not (row["slide"] or "").strip() or not labels:
                    raise ConfigError(f"{source} line {line}: a slide path and a label are needed")
                split = (row.get("split") or "").strip() or None
                if split not in (None, "train", "val"):
                    raise ConfigError(f"{source} line {line}: split must be train or val, got {split!r}")
                rows.append((source.parent / row["slide"].strip(), labels, split))
        return rows
    folders = sorted(p for p in source.iterdir() if p.is_dir())
    rows = [(path, [folder.name], None) for folder in folders
            for path in image_files(folder, SLIDE_SUFFIXES)]
    if not rows:
        raise ConfigError(f"slides: {source} holds no class subfolders with slides"
                          f" ({', '.join(SLIDE_SUFFIXES)}); or give a CSV slide,label")
    return rows


def _splits(slides: List[Tuple[Path, List[str], Optional[str]]], settings: Dict[str, Any]) -> List[str]:
    """Each slide's split: its own, or val for a seeded ``val_fraction`` of the others."""
    open_ = [i for i, (_, _, split) in enumerate(slides) if split is None]
    order = np.random.default_rng(int(settings["seed"])).permutation(open_).tolist()
    count = math.ceil(len(order) * float(settings["val_fraction"])) if len(order) > 1 else 0
    val = set(order[:count])
    return [split or ("val" if i in val else "train") for i, (_, _, split) in enumerate(slides)]


def _tile_slide(slide: Slide, stem: str, folder: Path, config: Dict[str, Any],
                picture: Path) -> Tuple[List[Tuple[str, int, int]], Dict[str, Any]]:
    """Write the tissue tiles of one slide into ``folder``; returns ``(file, x, y)`` of each and
    the slide's row of ``slides.csv``."""
    tile, tissue_cfg = config["tile"], config["tissue"]
    mpp, size = float(tile["mpp"]), int(tile["size"])
    thumb_mpp = max(float(tissue_cfg["thumbnail_mpp"]), slide.mpp)
    thumbnail, tissue = slide.tissue(thumb_mpp, float(tissue_cfg["min_saturation"]))
    write_rgb(picture, tissue_picture(thumbnail, tissue))
    scale = slide.mpp / thumb_mpp  # thumbnail px per level-0 px
    window = size * mpp / slide.mpp  # a tile's side in level-0 px
    step = (size - int(tile["overlap"])) * mpp / slide.mpp
    width, height = slide.dimensions
    boxes = [(round(x), round(y)) for y in _grid_float(height, window, step)
             for x in _grid_float(width, window, step)]
    keep = [(x, y) for x, y in boxes
            if tissue_fraction(tissue, (x, y, window, window), scale) >= float(tile["min_tissue"])]
    written = []
    for x, y in tqdm(keep, desc=f"tiles {stem}", unit="tile", leave=False):
        name = f"{stem}_x{x}_y{y}.png"
        path = folder / name
        if not path.is_file():
            image = slide.read(x, y, round(window), round(window), mpp)
            if image.shape[:2] != (size, size):
                image = resized(image, (size, size))
            write_rgb(path, image)
        written.append((name, x, y))
    row = {"slide": str(slide.path), "width": width, "height": height, "mpp": slide.mpp,
           "level": slide.level_for(mpp), "tissue_share": float(tissue.mean()),
           "tiles": len(written)}
    return written, row


def _grid_float(length: int, window: float, step: float) -> List[float]:
    """Starts of the windows (level-0 px) that fit in ``length`` every ``step``; tiles past the
    slide's edge are not cut (unlike the sliding window, which covers the whole image)."""
    if length <= window:
        return [0.0]
    return [i * step for i in range(int((length - window) // step) + 1)]


def run(config: Dict[str, Any], output_dir: Path, *, resume: bool = False,
        overwrite: bool = False) -> Dict[str, Any]:
    """Tile every slide of this process's share (:mod:`segmix.sharding`); returns the summary
    written to ``summary.json`` once every share is done."""
    validate(config)
    shard = current_shard(config["shard"])
    join(shard)
    slides = list_slides(Path(config["slides"]))
    stems = unique_stems([path for path, _, _ in slides])  # tiles are named by slide
    splits = _splits(slides, config["split"])
    items = list(zip(slides, stems, splits))

    def compute(item: Tuple[Tuple[Path, List[str], Optional[str]], str, str], bar: Any) -> bool:
        (path, labels, _), stem, split = item
        done = output_dir / "tiles" / stem / "tiles.csv"
        if done.is_file() and not overwrite:
            return False
        with Slide(path, config["slide_mpp"]) as slide:
            tiles, slide_row = _tile_slide(slide, stem, done.parent, config,
                                           output_dir / "tissue" / f"{stem}.png")
        write_csv(done.with_name("slide.csv"), [{**slide_row, "label": ";".join(labels),
                                                 "split": split}])
        write_csv(done, [{"file": f, "x": x, "y": y} for f, x, y in tiles])
        return True

    report = run_share(items, compute, shard, output_dir, desc="slides", unit="slide")
    if report is None:
        return {"shard": shard.name, "merged": False}
    rows, slide_rows, empty = [], [], []
    for (path, labels, _), stem, split in items:
        done = output_dir / "tiles" / stem / "tiles.csv"
        tiles = [row["file"] for row in read_csv_rows(done)]
        slide_rows.append(read_csv_rows(done.with_name("slide.csv"))[0])
        if not tiles:
            empty.append(str(path))
        rows += [{"image": f"tiles/{stem}/{name}", "label": ";".join(labels), "split": split,
                  "slide": stem} for name in tiles]
    write_csv(output_dir / LABELS_CSV, rows)
    write_csv(output_dir / "slides.csv", slide_rows)
    classes = sorted({label for _, labels, _ in slides for label in labels})
    data = {"data": {"format": "csv", "classes": classes, "image_size": int(config["tile"]["size"]),
                     "mpp": float(config["tile"]["mpp"]),
                     "train": {"path": str((output_dir / LABELS_CSV).resolve()), "split": "train"},
                     "val": {"path": str((output_dir / LABELS_CSV).resolve()), "split": "val"}}}
    if "val" not in splits:
        data["data"]["val"] = {"path": None}
    atomic_write_text(output_dir / TILE_DATA_FILE, yaml.safe_dump(data, sort_keys=False))
    if empty:
        print(f"warning: no tissue tiles in {len(empty)} slide(s): {empty[:5]} (all glass, or"
              " lower tile.min_tissue / tissue.min_saturation)", flush=True)
    summary = {"slides": len(slides), "tiles": len(rows), "empty_slides": empty,
               "tiles_per_split": {s: sum(r["split"] == s for r in rows) for s in ("train", "val")},
               "seconds": report.seconds, "ranks": report.ranks, "classes": classes}
    write_json(output_dir / DONE_FILE, summary)
    print(f"wrote {len(rows)} tiles of {len(slides)} slides to {output_dir / 'tiles'};"
          f" train on them with: segmix run --config {output_dir / TILE_DATA_FILE}", flush=True)
    return summary

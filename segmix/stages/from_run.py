"""``segmix pseudo-masks --from-run RUN --input CSV``: the CAMs (and foreground maps) of a labelled
CSV made with a finished run's classifier, settings and fitted localiser, and the pseudo-mask
config that makes their masks with the settings the run's sweep chose.

The run's ``cams`` and ``localise`` steps are re-run into the output folder (skipped where done)
through :func:`segmix.stages.pipeline.run_step`: the stage itself runs no other stage.
The input CSV's content hash is kept in ``input.json``: when the CSV at the same path changes,
the tiles whose rows changed are forgotten and what is missing is computed.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any, Dict

from ..artifacts import (
    AXIS_FILE,
    CAM_INDEX_FILE,
    CONFIG_FILE,
    EVIDENCE_FILE,
    INPUT_FINGERPRINT_FILE,
    LOCALISER_FILE,
    SUMMARY_FILE,
    RunLayout,
    cam_index_row,
    foreground_map_path,
    pseudo_mask_path,
)
from ..config import ConfigError, load_config
from ..data import dataset_classes, read_split, unique_names
from ..io import atomic_path, read_csv_rows, read_json, write_json
from ..sharding import current_shard, join, settle
from . import pipeline

__all__ = ["FROM_RUN_STAGES", "from_run_config", "validate_from_run"]

FROM_RUN_STAGES = ("cams", "localise", "pseudo-masks")  # the run's stages whose work is reused


def validate_from_run(config: Dict[str, Any]) -> None:
    """Check ``from_run`` (a run finished up to its pseudo masks, its summary readable) and
    ``input`` (a CSV file) before anything runs."""
    if not (config["from_run"] and config["input"]):
        raise ConfigError("from_run and input go together: --from-run RUN_DIR (a finished `segmix"
                          " run` folder) --input CSV (image,label[,mask])")
    layout, csv_path = RunLayout(Path(config["from_run"])), Path(config["input"])
    needed = [layout.classifier] + [pipeline.stage_folder(name, layout) / CONFIG_FILE
                                    for name in FROM_RUN_STAGES]
    needed.append(layout.pseudo_masks_dir / SUMMARY_FILE)
    missing = [str(path) for path in needed if not path.is_file()]
    if missing:
        raise ConfigError(f"from_run: {layout.root} is not a finished `segmix run` folder up to its"
                          f" pseudo masks (missing {missing})")
    if not csv_path.is_file() or csv_path.suffix.lower() != ".csv":
        raise ConfigError(f"input: {csv_path} is not a CSV file (columns image,label[,mask])")
    _chosen_settings(layout)


def _chosen_settings(layout: RunLayout) -> Dict[str, Any]:
    """The pseudo-mask stage's ``summary.json`` of a finished run (the settings its sweep chose)."""
    path = layout.pseudo_masks_dir / SUMMARY_FILE
    try:
        chosen = read_json(path)
    except (ValueError, OSError) as error:  # JSONDecodeError is a ValueError
        raise ConfigError(f"from_run: {path} cannot be read ({type(error).__name__}: {error});"
                          " run the pseudo-masks stage of that run again") from error
    if not isinstance(chosen, dict) or not isinstance(chosen.get("settings"), dict):
        raise ConfigError(f"from_run: {path} is not a pseudo-masks summary (no settings)")
    return chosen


def from_run_config(config: Dict[str, Any], output_dir: Path, overwrite: bool) -> Dict[str, Any]:
    """Compute the CAMs (and foreground maps) of ``config['input']`` with the run's classifier,
    settings and fitted localiser, under ``output_dir``; return the pseudo-mask config that makes
    their masks with the settings the run's sweep chose."""
    layout = RunLayout(Path(config["from_run"]))
    saved = {name: load_config(pipeline.stage_folder(name, layout) / CONFIG_FILE,
                               pipeline.stage_defaults(name))
             for name in FROM_RUN_STAGES}
    run_data = saved["pseudo-masks"]["data"]
    given = config["data"]
    if given["classes"] and (list(given["classes"]) != list(run_data["classes"])
                             or given["image_size"] != run_data["image_size"]):
        raise ConfigError(f"the run {layout.root} was built for classes {run_data['classes']} at"
                          f" image_size {run_data['image_size']}; this config has classes"
                          f" {given['classes']} at image_size {given['image_size']}")
    data = {**run_data, "format": "csv", "on_bad_file": given["on_bad_file"],
            "val": {"path": str(config["input"]), "split": None, "masks": None}}
    chosen = _chosen_settings(layout)
    print(f"pseudo masks for {config['input']} with the run {layout.root}", flush=True)
    cams_dir, fitted_dir = output_dir / "cams", output_dir / "localiser"
    record, fingerprint = output_dir / INPUT_FINGERPRINT_FILE, _fingerprint(Path(config["input"]))
    shard = current_shard(config["shard"])
    changed = not overwrite and read_json(record) != fingerprint
    if changed and (cams_dir / CAM_INDEX_FILE).is_file() and shard.count > 1 and not shard.torchrun:
        raise ConfigError(f"{config['input']} changed since the last run into {output_dir}: the"
                          " shares of a job array cannot forget its old tiles together; run once"
                          " without shard to bring the folder up to date, or use a new"
                          " --output-dir")
    if shard.index == 0:  # one process forgets the tiles of rows that changed
        if changed:
            _forget_changed_tiles(data, output_dir, cams_dir, fitted_dir)
        write_json(record, fingerprint)
    join(shard)  # under torchrun: the others wait until it has
    pipeline.run_step("cams", {**saved["cams"], "classifier": str(layout.classifier),
                               "data": data, "splits": ["val"], "output_dir": str(cams_dir),
                               "shard": config["shard"]}, overwrite)
    settle(shard, cams_dir / CAM_INDEX_FILE, "the CAMs of every share")
    localiser_dir = None
    if chosen.get("localiser_dir"):
        localiser_dir = fitted_dir
        for name in (LOCALISER_FILE, EVIDENCE_FILE, AXIS_FILE):  # the fitted localiser, reused as it is
            fitted = layout.localiser_dir / name
            if fitted.is_file() and (overwrite or not (localiser_dir / name).is_file()):
                with atomic_path(localiser_dir / name) as copy:  # other shares may be reading it
                    shutil.copy2(fitted, copy)
        pipeline.run_step("localise", {**saved["localise"], "classifier": str(layout.classifier),
                                       "data": {**data, "train": run_data["train"]},
                                       "splits": ["val"], "output_dir": str(localiser_dir),
                                       "shard": config["shard"]}, False)
        settle(shard, localiser_dir / SUMMARY_FILE, "the foreground maps of every share")
    return {**saved["pseudo-masks"], "output_dir": str(output_dir), "data": data,
            "cams_dir": str(cams_dir),
            "localiser_dir": str(localiser_dir) if localiser_dir else None, "splits": ["val"],
            "masks": chosen["settings"], "sweep": {**saved["pseudo-masks"]["sweep"], "enabled": False},
            "overlays": config["overlays"], "from_run": None, "input": None}


def _fingerprint(csv_path: Path) -> Dict[str, str]:
    """The input CSV's path and content hash (``input.json``): a changed input is noticed."""
    return {"input": str(csv_path), "sha256": hashlib.sha256(csv_path.read_bytes()).hexdigest()}


def _forget_changed_tiles(data: Dict[str, Any], output_dir: Path, cams_dir: Path,
                          localiser_dir: Path) -> None:
    """After the input CSV changed, forget what no longer matches it: the per-tile files of rows
    that were removed or whose image or labels changed, and the marks that say a step is done;
    the steps then compute what is missing."""
    index = cams_dir / CAM_INDEX_FILE
    if not index.is_file():
        return
    samples = read_split(data, "val", progress=False)
    classes = dataset_classes(data)
    now = {row["cams"]: (row["image"], row["labels"])  # what a tile's CAM depends on
           for row in (cam_index_row("val", sample, name, classes)
                       for sample, name in zip(samples, unique_names(samples)))}
    forgotten = 0
    for row in read_csv_rows(index):
        if (row["image"], row["labels"]) != now.get(row["cams"]):
            name = Path(row["cams"]).stem
            for path in (cams_dir / row["cams"], foreground_map_path(localiser_dir, "val", name),
                         pseudo_mask_path(output_dir, "val", name)):
                path.unlink(missing_ok=True)
            forgotten += 1
    for done in (index, localiser_dir / SUMMARY_FILE, output_dir / SUMMARY_FILE):
        done.unlink(missing_ok=True)
    print(f"{data['val']['path']} changed since the last run into {output_dir}: {forgotten}"
          " tile(s) forgotten, the missing ones are computed", flush=True)

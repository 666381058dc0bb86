"""The README's path for a user's own tiles: a copy of configs/ebhi.yaml, pointed at a CSV with
labels only, runs every stage on the default path (the feature-axis localiser decides foreground,
the class scores' histograms the threshold) and writes the quality files for a person to check."""

import json
from pathlib import Path

import pytest
import yaml

from segmix.cli import main
from segmix.config import ConfigError
from segmix.stages.foreground_weight import checked_weight, resolve_foreground_weight

from synthetic import write_csv_dataset
from test_pipeline import TINY_MODELS
from test_threshold_without_masks import labels_only

ROOT = Path(__file__).resolve().parents[1]


def test_a_copy_of_the_ebhi_config_runs_the_default_path_on_labels_only(tmp_path, capsys):
    csv_path = labels_only(write_csv_dataset(tmp_path / "tiles", per_class=8, size=32))
    mine = yaml.safe_load((ROOT / "configs" / "ebhi.yaml").read_text())  # "copy configs/ebhi.yaml,
    mine["data"]["classes"] = ["A", "B", "C"]                              # set data.classes,
    mine["data"]["train"]["path"] = mine["data"]["val"]["path"] = str(csv_path)  # the paths
    mine["output_dir"] = str(tmp_path / "runs" / "mydata")                 # and output_dir"
    config = tmp_path / "mydata.yaml"
    config.write_text(yaml.safe_dump(mine))
    small = TINY_MODELS + ["localiser.smoothing=3", "localiser.naming_tiles=6"]
    assert main(["run", "--config", str(config), *[a for s in small for a in ("--set", s)]]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "runs" / "mydata"
    assert json.loads((out / "localiser" / "summary.json").read_text())["method"] == "axis"
    assert "masks.foreground_weight (auto): 1.0 (the axis localiser's maps" in printed
    pseudo = json.loads((out / "pseudo-masks" / "summary.json").read_text())
    assert pseudo["sweep"]["criterion"] == "histogram" and pseudo["settings"]["foreground_weight"] == 1.0
    said = {"otsu": "chosen by the score histogram (no masks",
            "expected_miou": "chosen by the expected mIoU (no masks"}[pseudo["sweep"]["rule"]]
    assert said in printed
    assert pseudo["settings"]["max_hole"] == 0.02 and "val" in pseudo["quality"]["median"]
    estimate = pseudo["quality"]["estimated_mIoU"]["val"]
    assert 0 < estimate["low"] <= estimate["estimate"] <= estimate["high"] <= 1
    assert estimate["estimate"] == pytest.approx((estimate["low"] + estimate["high"]) / 2)
    assert f"val: mIoU estimated without masks {estimate['estimate']:.3f}" in printed
    for name in ("tiles_by_quality.csv", "worst_tiles.png"):
        assert (out / "pseudo-masks" / name).is_file()
    assert len(list((out / "predictions" / "masks").glob("*.png"))) == 6
    segmenter = yaml.safe_load((out / "segmenter" / "config.yaml").read_text())
    assert segmenter["synthesis"]["probability"] == 0.5  # the default path trains with synthesis
    assert json.loads((out / "summary.json").read_text())["metrics"]["segmenter"] is None


def test_an_unset_foreground_weight_follows_the_localiser_and_auto_says_the_same(tmp_path, capsys):
    localiser = tmp_path / "localiser"
    localiser.mkdir()
    config = {"masks": {"foreground_weight": None}, "localiser_dir": str(localiser)}
    with pytest.raises(ConfigError, match="holds no finished `segmix localise` run"):
        resolve_foreground_weight(config)
    for method, weight in (("axis", 1.0), ("none", 0.0)):
        (localiser / "summary.json").write_text(json.dumps({"method": method}))
        for unset in (None, "auto"):
            resolved = resolve_foreground_weight({**config, "masks": {"foreground_weight": unset}})
            assert resolved["masks"]["foreground_weight"] == weight
    assert resolve_foreground_weight({"masks": {"foreground_weight": "auto"}, "localiser_dir": None}
                                     )["masks"]["foreground_weight"] == 0.0
    assert resolve_foreground_weight({**config, "masks": {"foreground_weight": 0.5}}) == \
        {**config, "masks": {"foreground_weight": 0.5}}  # a number is kept as it is
    assert checked_weight({"foreground_weight": "auto"})["foreground_weight"] == 0.0
    with pytest.raises(ConfigError, match="must be a number in \\[0, 1\\], or null / auto"):
        checked_weight({"foreground_weight": "half"})

"""benchmarks/tissue_rules.py on synthetic tiles: each rule's tissue, read from saved softmax maps
and a localiser's maps, is scored one class per tile against the true masks."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segmix.artifacts import (
    foreground_map_path,
    prediction_probabilities_path,
    write_foreground_map,
)
from segmix.data import DatasetError
from segmix.io import atomic_write_npz
from synthetic import write_csv_dataset


def test_each_rule_draws_its_own_tissue(tmp_path, capsys, benchmark_script):
    rules = benchmark_script("tissue_rules")
    csv_path = write_csv_dataset(tmp_path, per_class=4, size=32)
    predictions, localiser = tmp_path / "predicted", tmp_path / "localiser"
    for line in csv_path.read_text().splitlines()[1:]:
        image, mask, label, split = line.split(",")
        if split != "val":
            continue
        truth = np.array(Image.open(tmp_path / mask)) > 0
        softmax = np.zeros((4, *truth.shape), np.float32)
        softmax[0] = np.where(truth, 0.3, 0.8)  # background: 0.3 on the tissue, 0.8 off it
        softmax[1 + "ABC".index(label)] = 1.0 - softmax[0]
        name = Path(image).stem
        atomic_write_npz(prediction_probabilities_path(predictions, name), probabilities=softmax)
        write_foreground_map(foreground_map_path(localiser, "val", name),
                             np.zeros(truth.shape, np.float32))  # a localiser that sees nothing
    rules.main(["--data", str(csv_path), "--classes", "A,B,C", "--predictions",
                f"final={predictions}", "--localiser", f"final={localiser}",
                "--thresholds", "0.5,0.2", "--map-weights", "1,0.5"])
    cells = {row[1]: row[2:] for row in (line.strip("| ").split(" | ")
                                         for line in capsys.readouterr().out.splitlines()
                                         if line.startswith("| final"))}
    # mIoU, foreground IoU, background, A, B, C
    assert cells["background < 0.5"] == ["**100.0**"] + ["100.0"] * 5  # the segmenter's own rule
    assert cells["map weight 1"] == cells["background < 0.5"]
    no_tissue = cells["background < 0.2"]  # every pixel background: only its IoU stays
    assert no_tissue[1] == "0.0" and no_tissue[3:] == ["0.0"] * 3
    assert abs(float(no_tissue[0].strip("*")) - float(no_tissue[2]) / 4) < 0.06
    # half the segmenter's 0.7 and half the map's 0 stay below half 0.5 and half 0.4: no tissue
    assert cells["map weight 0.5"] == no_tissue


def test_a_missing_softmax_names_the_setting_that_writes_it(tmp_path, benchmark_script):
    rules = benchmark_script("tissue_rules")
    csv_path = write_csv_dataset(tmp_path, per_class=4, size=32)
    with pytest.raises(DatasetError, match=r"predict\.probabilities=true"):
        rules.main(["--data", str(csv_path), "--classes", "A,B,C",
                    "--predictions", f"final={tmp_path / 'empty'}"])

"""benchmarks/gap_readings.py on synthetic tiles: a prediction with the true outline and the wrong
class loses everything to the class, which the true-class reading gives back."""

from pathlib import Path

import numpy as np
from PIL import Image

from synthetic import write_csv_dataset


def test_the_true_class_reading_gives_back_a_wrong_class(tmp_path, capsys,
                                                         benchmark_script):
    gap = benchmark_script("gap_readings")
    csv_path = write_csv_dataset(tmp_path, per_class=4, size=32)
    predictions = tmp_path / "predicted"
    predictions.mkdir()
    for line in csv_path.read_text().splitlines()[1:]:
        image, mask, label, split = line.split(",")
        if split == "val":
            truth = np.array(Image.open(tmp_path / mask)) > 0
            wrong = ("ABC".index(label) + 1) % 3 + 1  # A->B, B->C, C->A (mask values 1..3)
            Image.fromarray((truth * wrong).astype(np.uint8)).save(predictions / Path(image).name)
    gap.main(["--data", str(csv_path), "--classes", "A,B,C", "--predictions",
              f"wrong={predictions}"])
    rows = {line.split(" | ")[1]: line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| wrong")}
    assert "| **25.0** | 100.0 | 100.0 | 0.0 | 0.0 | 0.0 |" in rows["as predicted"]
    assert "| **100.0** |" in rows["true class"]
    assert "| **25.0** |" in rows["true outline"] and "| **25.0** |" in rows["majority class"]


def test_the_outline_errors_are_read_by_distance_from_the_true_outline(benchmark_script):
    gap = benchmark_script("gap_readings")
    truth = np.zeros((8, 8), dtype=bool)
    truth[:, :4] = True
    predicted = truth.copy()
    predicted[:, 4] = True  # one column of background called tissue, next to the true outline
    errors = gap.OutlineErrors()
    errors.update(predicted, truth)
    # columns 2-5 lie 1-2 px from the outline (32 px, 8 wrong), columns 0, 1, 6, 7 3-4 px
    assert errors.row() == ["12.5", "0.0", "25.0 (50)", "0.0 (50)", "0.0 (0)", "0.0 (0)",
                            "0.0 (0)", "0.0 (0)"]

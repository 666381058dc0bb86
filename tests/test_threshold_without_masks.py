"""The pseudo-mask threshold on a dataset without a single mask: the score histogram chooses it,
the run says so, and a sweep that needs masks is refused before anything runs."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pseudo_masks import (
    ScoreHistogram,
    choose_threshold,
    estimate_miou,
    expected_miou,
    two_mode_posterior,
)
from segmix.cli import main

from synthetic import write_csv_dataset


def test_the_histogram_chooses_the_valley_of_two_modes():
    generator = torch.Generator().manual_seed(0)
    low = 0.25 + 0.04 * torch.randn(6000, generator=generator)
    high = 0.7 + 0.04 * torch.randn(4000, generator=generator)
    histogram = ScoreHistogram()
    histogram.add(torch.cat([low, high]).view(100, 100))
    chosen, table = histogram.choose([0.1, 0.2, 0.3, 0.45, 0.6, 0.8])
    assert chosen == 0.45
    by_value = {row["threshold"]: row for row in table}
    assert by_value[0.45]["eta"] > 0.9 > by_value[0.3]["eta"]
    assert by_value[0.45]["foreground_share"] == pytest.approx(0.4, abs=0.01)
    # counted only inside: the outside pixels (all at 0.9) change nothing
    masked = ScoreHistogram()
    scores = torch.cat([low, high, torch.full((5000,), 0.9)])
    inside = torch.cat([torch.ones(10000, dtype=torch.bool), torch.zeros(5000, dtype=torch.bool)])
    masked.add(scores, inside)
    assert np.array_equal(masked.counts, histogram.counts)
    assert masked.outside == 5000
    assert ScoreHistogram().split(0.5) == {"eta": 0.0, "foreground_share": 0.0}


def test_merged_histograms_count_as_one_of_all_their_pixels():
    scores = torch.linspace(0, 1, 200)
    inside = scores > 0.3
    whole, first, second = ScoreHistogram(), ScoreHistogram(), ScoreHistogram()
    whole.add(scores, inside)
    first.add(scores[:120], inside[:120])
    second.add(scores[120:], inside[120:])
    first.merge(second)
    assert np.array_equal(first.counts, whole.counts) and first.outside == whole.outside == 60
    with pytest.raises(ValueError, match="cannot merge a histogram of 16 bins into one of 256"):
        first.merge(ScoreHistogram(16))


def histogram_of(values, outside=0):
    histogram = ScoreHistogram(bins=10)
    histogram.add(torch.tensor(values))
    histogram.outside = float(outside)
    return histogram


def test_expected_miou_reads_the_scores_as_foreground_probabilities():
    # class 1: scores 0.95 (x2) and 0.25; class 2: 0.65 and 0.15; 3 pixels outside the tissue
    one, two = histogram_of([0.95, 0.95, 0.25], outside=2), histogram_of([0.65, 0.15], outside=1)
    # at 0.5: class 1 keeps the two 0.95 pixels: 1.9 / (2 + 0.25); class 2 keeps 0.65:
    # 0.65 / (1 + 0.15); background: (3 + 0.75 + 0.85) / (3 + 2 + 0.1 + 0.35)
    expected = np.mean([1.9 / 2.25, 0.65 / 1.15, 4.6 / 5.45])
    assert expected_miou([one, two], 0.5) == pytest.approx(expected)
    assert expected_miou([one, two, ScoreHistogram(bins=10)], 0.5) == pytest.approx(expected)


def test_the_two_mode_posterior_is_the_normals_of_the_two_sides():
    # below 0.5: 0.15 (x2), 0.25, 0.35 -> mean 0.225, variance 0.006875; above: 0.65, 0.85
    # (x2) -> mean 0.783..., variance 0.008888...
    histogram = histogram_of([0.15, 0.15, 0.25, 0.35, 0.65, 0.85, 0.85])
    posterior = two_mode_posterior(histogram, 0.5)
    c = histogram.centres
    low = 4 / np.sqrt(0.006875) * np.exp(-(c - 0.225) ** 2 / (2 * 0.006875))
    high = 3 / np.sqrt(0.08 / 9) * np.exp(-(c - 2.35 / 3) ** 2 / (2 * 0.08 / 9))
    assert posterior == pytest.approx(high / (low + high))
    assert posterior[1] < 1e-6 and posterior[8] > 1 - 1e-6  # sure where the scores are
    # a side without spread or without a pixel: the step at the threshold
    assert list(two_mode_posterior(histogram_of([0.15, 0.65, 0.85]), 0.5)) == [0] * 5 + [1] * 5
    assert list(two_mode_posterior(histogram_of([0.65, 0.85]), 0.5)) == [0] * 5 + [1] * 5


def test_the_mIoU_estimate_lies_between_the_scores_as_probabilities_and_the_two_modes():
    one = histogram_of([0.15, 0.15, 0.25, 0.35, 0.85, 0.85], outside=3)
    two = histogram_of([0.15, 0.25, 0.65, 0.85], outside=1)
    pooled = histogram_of([0.15, 0.15, 0.25, 0.35, 0.85, 0.85, 0.15, 0.25, 0.65, 0.85], outside=4)
    estimate = estimate_miou([one, two], 0.5)
    assert estimate["low"] == pytest.approx(expected_miou([one, two], 0.5))
    assert estimate["high"] == pytest.approx(
        expected_miou([one, two], 0.5, two_mode_posterior(pooled, 0.5)))
    assert estimate["low"] < estimate["high"]
    assert estimate["estimate"] == pytest.approx((estimate["low"] + estimate["high"]) / 2)
    # scores sure of every pixel: both readings give the same, perfect, split
    sure = histogram_of([0.05, 0.05, 0.95], outside=2)
    sure_estimate = estimate_miou([sure], 0.5)
    assert sure_estimate["high"] == pytest.approx(1.0)
    assert sure_estimate["low"] == pytest.approx(np.mean([0.95 / 1.1, 3.9 / 4.05]))


def test_the_threshold_rule_uses_otsu_on_a_clean_split_and_the_expected_miou_otherwise():
    generator = torch.Generator().manual_seed(0)
    values = [0.2, 0.3, 0.4, 0.5, 0.6]
    clean = ScoreHistogram()
    clean.add(torch.cat([0.15 + 0.03 * torch.randn(5000, generator=generator),
                         0.75 + 0.03 * torch.randn(5000, generator=generator)]).clamp(0, 1))
    chosen, rule, table = choose_threshold([clean], values)
    assert rule == "otsu" and max(row["eta"] for row in table) >= 0.75
    assert chosen == clean.choose(values)[0]
    # one broad hump: no clean split, so the largest expected mIoU of the table
    hump = ScoreHistogram()
    hump.add((0.55 + 0.2 * torch.randn(20000, generator=generator)).clamp(0, 1))
    chosen, rule, table = choose_threshold([hump], values)
    assert rule == "expected_miou" and max(row["eta"] for row in table) < 0.75
    assert chosen == max(table, key=lambda row: row["expected_mIoU"])["threshold"]
    assert [row["expected_mIoU"] for row in table] == [expected_miou([hump], t) for t in values]
    # the same hump, clean_split lowered under its eta: Otsu's choice
    assert choose_threshold([hump], values, clean_split=0.5)[:2] == (hump.choose(values)[0], "otsu")


def labels_only(csv_path):
    """A copy of the dataset's CSV without its mask column, as a new dataset arrives."""
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    path = csv_path.with_name("labels_only.csv")
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["image", "label", "split"])
        writer.writeheader()
        writer.writerows({key: row[key] for key in ("image", "label", "split")} for row in rows)
    return path


def settings_of(csv_path, *extra):
    settings = ["data.classes=[A, B, C]", f"data.train.path={csv_path}",
                f"data.val.path={csv_path}", "data.image_size=32", *extra]
    return [a for s in settings for a in ("--set", s)]


@pytest.fixture(scope="module")
def cams(tmp_path_factory):
    root = tmp_path_factory.mktemp("no-masks")
    csv_path = labels_only(write_csv_dataset(root / "tiles", per_class=4, size=32))
    classifier = root / "classifier"
    assert main(["train-cls", "--output-dir", str(classifier), *settings_of(
        csv_path, "model.name=test_efficientnet", "model.weights=null", "train.epochs=1",
        "train.batch_size=6", "train.num_workers=0",
        "augment.curriculum.patch_sizes=[16, 8]")]) == 0
    cams_dir = root / "cams"
    assert main(["cams", "--output-dir", str(cams_dir), *settings_of(
        csv_path, f"classifier={classifier / 'classifier.pt'}", "splits=[train, val]",
        "cam.num_workers=0")]) == 0
    return csv_path, cams_dir


def test_without_masks_the_sweep_chooses_from_the_histogram_and_says_so(cams, tmp_path, capsys):
    csv_path, cams_dir = cams
    out = tmp_path / "masks"
    values = [0.1, 0.3, 0.5, 0.7]
    assert main(["pseudo-masks", "--output-dir", str(out), *settings_of(
        csv_path, f"cams_dir={cams_dir}", "splits=[train, val]", "masks.tissue_prior=true",
        f"sweep={{enabled: true, key: threshold, values: {values}, split: val}}")]) == 0
    log = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sweep"]["criterion"] == "histogram"
    with open(out / "sweep.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [float(row["threshold"]) for row in table] == values
    clean = max(float(row["eta"]) for row in table) >= 0.75
    assert summary["sweep"]["rule"] == ("otsu" if clean else "expected_miou")
    assert ("chosen by the score histogram (no masks" if clean
            else "chosen by the expected mIoU (no masks") in log
    best = max(table, key=lambda row: float(row["eta" if clean else "expected_mIoU"]))
    assert summary["sweep"]["chosen"] == float(best["threshold"])
    assert summary["settings"]["threshold"] == summary["sweep"]["chosen"]
    assert len(list((out / "masks" / "val").glob("*.png"))) == 3
    assert summary["metrics"] == {}  # nothing to score against
    # the quality check: every tile's eta at the threshold, least clean first, and their picture
    with open(out / "tiles_by_quality.csv", newline="") as handle:
        quality = [float(row["quality"]) for row in csv.DictReader(handle)]
    assert len(quality) == 12 and quality == sorted(quality) and 0 <= quality[0] <= quality[-1] <= 1
    assert summary["quality"]["worst"][0].split("/")[0] in ("train", "val")
    picture = np.asarray(Image.open(out / "worst_tiles.png"))
    assert picture.shape == (8 * (14 + 32), 3 * 32, 3)  # 8 tiles: caption; tile, mask, score
    with open(out / "masks.csv", newline="") as handle:
        assert all(0 <= float(row["quality"]) <= 1 for row in csv.DictReader(handle))


@pytest.mark.parametrize("setting, message", [
    ("sweep.criterion=masks", "sweep.criterion=masks needs a ground-truth mask for every tile"),
    ("sweep.key=ignore_margin", "can choose masks.threshold only"),
])
def test_a_sweep_that_needs_masks_is_refused_before_anything_runs(cams, tmp_path, capsys, setting,
                                                                  message):
    csv_path, cams_dir = cams
    out = tmp_path / "masks"
    assert main(["pseudo-masks", "--output-dir", str(out), *settings_of(
        csv_path, f"cams_dir={cams_dir}", "sweep.enabled=true", "sweep.values=[0.1, 0.2]",
        setting)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_segmix_run_refuses_a_sweep_that_needs_masks_in_its_first_second(cams, tmp_path, capsys):
    csv_path, _ = cams
    out = tmp_path / "run"
    assert main(["run", "--output-dir", str(out), *settings_of(
        csv_path, "model.name=test_efficientnet", "model.weights=null",
        "sweep={enabled: true, key: foreground_weight, values: [0.0, 0.5], split: val}",
        "localiser.method=prototypes")]) == 2
    assert "can choose masks.threshold only" in capsys.readouterr().err
    assert not out.exists()

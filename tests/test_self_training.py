"""Self-training: the segmenter's foreground (any class) fused with the localiser's map, a round
of pseudo masks and a segmenter on them, resumable, and the round handed on."""

import json

import pytest
import torch

from pseudo_masks import segmenter_foreground, self_training_map
from segmix.cli import main
from segmix.models.pretrained import Segmenter
from segmix.stages.self_train import keep_round

from interrupt import run_killed_after_first_epoch
from synthetic import write_csv_dataset
from test_pipeline import TINY_MODELS, cli


def test_the_foreground_is_any_class_and_fuses_with_the_localiser():
    # 3 classes; pixel 0: background 0.5, class 1 0.3, class 2 0.2; pixel 1: class 3 0.9, even on a
    # tile labelled class 1 only: the segmenter says where, the tile's labels say which class
    probabilities = torch.tensor([[0.5, 0.05], [0.3, 0.03], [0.2, 0.02], [0.0, 0.9]]).view(4, 1, 2)
    foreground = segmenter_foreground(probabilities)
    assert foreground.flatten().tolist() == pytest.approx([0.5, 0.95])
    localiser = torch.tensor([[1.0, 0.0]])
    assert self_training_map(probabilities, localiser, 0.25).flatten().tolist() == \
        pytest.approx([0.25 * 0.5 + 0.75, 0.25 * 0.95])
    assert torch.equal(self_training_map(probabilities, None, 0.25), foreground)
    with pytest.raises(ValueError, match=r"\[K \+ 1, H, W\]"):
        segmenter_foreground(probabilities[:1])
    with pytest.raises(ValueError, match="the localiser map is"):
        self_training_map(probabilities, torch.zeros(2, 2), 0.5)
    with pytest.raises(ValueError, match="weight"):
        self_training_map(probabilities, localiser, 1.5)


def test_the_round_handed_on_is_the_best_on_ground_truth_else_the_last():
    rows = [{"round": 0, "segmenter_val_mIoU": 0.4}, {"round": 1, "segmenter_val_mIoU": 0.5},
            {"round": 2, "segmenter_val_mIoU": 0.45}]
    assert keep_round(rows, on_truth=True)[0]["round"] == 1
    assert keep_round(rows, on_truth=False)[0]["round"] == 2
    assert "no val masks" in keep_round(rows, on_truth=False)[1]
    rows[1]["segmenter_val_mIoU"] = None
    assert keep_round(rows, on_truth=True)[0]["round"] == 2


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("self-training")
    csv_path = write_csv_dataset(root / "tiles", per_class=8, size=32)
    out = root / "run"
    settings = [*TINY_MODELS, "data.classes=[A, B, C]", f"data.train.path={csv_path}",
                f"data.val.path={csv_path}", "seg_train.epochs=2", "localiser.smoothing=3",
                "localiser.naming_tiles=6"]
    assert cli("run", out, settings) == 0
    return out


def test_without_rounds_the_run_hands_on_its_first_segmenter(finished_run):
    out = finished_run
    handed = out / "self-training" / "segmenter.pt"
    assert handed.read_bytes() == (out / "segmenter" / "segmenter.pt").read_bytes()
    assert (out / "self-training" / "model" / "model.safetensors").read_bytes() == (
        out / "segmenter" / "model" / "model.safetensors").read_bytes()
    # the folder handed on carries the run's tile classifier
    assert (out / "self-training" / "model" / "classifier" / "model.safetensors").read_bytes() == (
        out / "classifier" / "model" / "model.safetensors").read_bytes()
    handed_on = Segmenter.from_pretrained(out / "self-training" / "model")
    assert handed_on.classifier is not None and handed_on.classifier.classes == ["A", "B", "C"]
    predict = (out / "predictions" / "config.yaml").read_text()
    assert f"segmenter_path: {handed}" in predict
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["self_training"]["kept_round"] == 0


def test_a_finished_run_refused_names_the_one_stage_route(finished_run, capsys):
    assert main(["run", "--config", str(finished_run / "config.yaml"), "--set",
                 "self_training.rounds=1"]) == 1
    error = capsys.readouterr().err
    assert "this run is finished" in error
    assert f"segmix self-train --config {finished_run}/self-training/config.yaml" in error


def test_a_round_trains_on_fused_maps_resumes_and_hands_on_the_best(finished_run, tmp_path,
                                                                     monkeypatch, capsys):
    run, out = finished_run, tmp_path / "self-training"
    settings = [f"segmenter_path={run / 'segmenter' / 'segmenter.pt'}",
                f"pseudo_masks_dir={run / 'pseudo-masks'}", "self_training.rounds=1",
                "self_training.weight=0.5"]
    # killed after the round's segmenter finished its first epoch; the same command continues
    run_killed_after_first_epoch(monkeypatch, lambda: cli("self-train", out, settings))
    maps = sorted((out / "round-1" / "maps" / "maps" / "train").glob("*.png"))
    assert len(maps) == 18
    stamps = {path: path.stat().st_mtime_ns for path in maps}
    capsys.readouterr()
    assert cli("self-train", out, settings) == 0
    printed = capsys.readouterr().out
    assert "resuming after epoch 0" in printed  # the first epoch is kept
    assert {path: path.stat().st_mtime_ns for path in maps} == stamps  # not computed again
    pseudo = json.loads((out / "round-1" / "pseudo-masks" / "summary.json").read_text())
    assert pseudo["localiser_dir"] == str(out / "round-1" / "maps")
    assert pseudo["settings"]["foreground_weight"] == 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    rows = metrics["rounds"]
    assert [row["round"] for row in rows] == [0, 1]
    assert all(0 <= row["pseudo_masks_val_mIoU"] <= 1 and 0 <= row["segmenter_val_mIoU"] <= 1
               for row in rows)
    best = max(rows, key=lambda row: row["segmenter_val_mIoU"])
    assert metrics["kept_round"] == best["round"] and "ground truth" in metrics["kept_by"]
    assert (out / "segmenter.pt").read_bytes() == open(best["segmenter"], "rb").read()
    assert (out / "rounds.csv").is_file()


def test_a_missing_tile_classifier_is_refused_before_a_round_trains(finished_run, tmp_path, capsys):
    run, out = finished_run, tmp_path / "self-training"
    settings = [f"segmenter_path={run / 'segmenter' / 'segmenter.pt'}",
                f"pseudo_masks_dir={run / 'pseudo-masks'}", "self_training.rounds=1",
                f"classifier_path={tmp_path / 'no-classifier.pt'}"]
    assert cli("self-train", out, settings) != 0
    assert "no-classifier.pt" in capsys.readouterr().err
    assert not (out / "round-1").exists()

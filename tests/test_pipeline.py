"""``segmix run`` and ``segmix demo`` end to end on tiny synthetic data: outputs, scores, resume."""

import json

import numpy as np
import pytest
from PIL import Image

from segmix import api
from segmix.cli import main
from segmix.data import read_mask_png
from segmix.stages.demo import constant_mask_miou
from segmix.data.synthetic import TISSUES, draw_tile

from interrupt import run_killed_after_first_epoch
from synthetic import write_csv_dataset

TINY_MODELS = [
    "data.image_size=32", "model.name=test_efficientnet", "model.weights=null",
    "augment.curriculum.patch_sizes=[16, 8]", "augment.curriculum.fix_ratios=[0.5, 0.25]",
    "train.epochs=2", "train.batch_size=8", "train.num_workers=0",
    "cam.target_layers=null", "cam.num_workers=0", "cam.shuffle_tta.patch_size=8",
    "segmenter.encoder=tu-test_efficientnet", "segmenter.encoder_weights=null",
    "seg_augment.curriculum.patch_sizes=[16, 8]", "seg_augment.curriculum.fix_ratios=[0.5, 0.25]",
    "seg_train.epochs=1", "seg_train.batch_size=8", "seg_train.num_workers=0",
]
TINY_DEMO = TINY_MODELS + ["synthetic.size=32", "synthetic.train_tiles=24", "synthetic.val_tiles=8"]
STAGE_FOLDERS = ("classifier", "cams", "localiser", "pseudo-masks", "segmenter", "self-training",
                 "predictions", "evaluation")


def cli(command, out, settings, *flags):
    return main([command, "--output-dir", str(out), *[a for s in settings for a in ("--set", s)],
                 *flags])


def test_synthetic_tiles_hold_their_labelled_classes_on_a_white_background():
    rng = np.random.default_rng(0)
    image, mask = draw_tile(rng, 96, [0, 2])
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    shares = np.bincount(mask.ravel(), minlength=4) / mask.size
    assert shares[1] >= 0.08 and shares[3] >= 0.08 and shares[2] == 0
    grey = image.astype(float).mean(axis=2)
    assert grey[mask == 0].mean() > 220 and grey[mask > 0].mean() < 200


def test_constant_mask_miou_is_the_largest_class_share_over_the_class_count():
    masks = [np.array([[0, 0, 1, 1]]), np.array([[1, 1, 255, 2]])]
    # pixels: background 2, class 1 four, class 2 one (ignore left out) -> 4/7 over 3 classes
    assert constant_mask_miou(masks, 2) == pytest.approx(4 / 7 / 3)


def test_demo_runs_every_stage_resumes_and_skips_finished_stages(tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    # killed in the classifier's first epoch; the same command continues the run
    run_killed_after_first_epoch(monkeypatch, lambda: cli("demo", out, TINY_DEMO))
    assert not (out / "summary.json").exists()
    capsys.readouterr()
    assert cli("demo", out, TINY_DEMO) == 0
    printed = capsys.readouterr().out
    assert "resuming after epoch 0" in printed and "best constant mask" in printed
    # its config.yaml names the dataset it wrote, so `segmix run` can run it again
    again = api.resolve_config("run", out / "config.yaml", output_dir=tmp_path / "again")
    assert again["data"]["train"]["path"] == str(out / "data" / "labels.csv")

    summary = json.loads((out / "summary.json").read_text())
    metrics = summary["metrics"]
    assert set(metrics["pseudo_masks"]) == {"train", "val"}
    assert 0 <= metrics["pseudo_masks"]["val"]["mIoU"] <= 1
    assert 0 <= metrics["segmenter"]["mIoU"] <= 1 and set(metrics["segmenter"]["iou"]) == {
        "background", *TISSUES}
    assert 0 < summary["references"]["constant_mask_val_mIoU"] < 0.5
    assert all(summary["seconds"][name] is not None for name in summary["stages"])
    for folder in STAGE_FOLDERS:
        assert (out / folder / "config.yaml").is_file(), folder
    assert (out / "segmenter" / "segmenter.pt").is_file()
    for stage in ("classifier", "segmenter"):  # training curves and a model folder to hand on
        curves = np.asarray(Image.open(out / stage / "metrics.png").convert("L"))
        assert curves.shape == (380, 1000) and curves.std() > 10
        folder = json.loads((out / stage / "model" / "config.json").read_text())
        assert folder["segmix_model"] == stage and folder["classes"] == list(TISSUES)
    predictions = sorted((out / "predictions" / "masks").glob("tile_*.png"))
    assert len(predictions) == 8 and read_mask_png(predictions[0]).shape == (32, 32)
    evaluation = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert evaluation["tiles"] == 8
    assert evaluation["with_background"]["mIoU"] == pytest.approx(metrics["segmenter"]["mIoU"])
    # third reading: the model's foreground with the classifier's top class per tile
    assert 0 <= evaluation["classifier_label"]["mIoU"] <= 1
    assert metrics["segmenter"]["mIoU_classifier_label"] == evaluation["classifier_label"]["mIoU"]

    assert cli("demo", out, TINY_DEMO) == 1  # finished
    assert "this run is finished" in capsys.readouterr().err

    # lose the last stages: finished stages are skipped, the rest is redone
    for name in ("summary.json", "segmenter/segmenter.pt", "evaluation/metrics.json"):
        (out / name).unlink()
    assert cli("demo", out, TINY_DEMO + ["seg_train.lr=0.1"]) == 1  # not with other settings
    assert "seg_train.lr: 0.001 -> 0.1" in capsys.readouterr().err
    assert cli("demo", out, TINY_DEMO) == 0
    printed = capsys.readouterr().out
    assert "[1/8] train-cls" in printed and "skipped, done (classifier.pt exists)" in printed
    assert "skipped, done (summary.json exists)" in printed  # predictions
    # skipped stages report the time recorded when they finished
    again = json.loads((out / "summary.json").read_text())["seconds"]
    assert again["train-cls"] == summary["seconds"]["train-cls"] > 0
    assert "wrote " + str(out / "segmenter" / "segmenter.pt") in printed


def test_run_on_a_csv_dataset_whose_val_split_has_no_masks(tmp_path, capsys):
    csv_path = write_csv_dataset(tmp_path / "tiles", per_class=8, size=32)
    unlabelled = tmp_path / "tiles" / "val_only.csv"
    rows = [line for line in csv_path.read_text().splitlines()[1:] if line.endswith(",val")]
    unlabelled.write_text("image,label,split\n" + "\n".join(
        f"{r.split(',')[0]},{r.split(',')[2]},val" for r in rows) + "\n")
    config = tmp_path / "pipeline.yaml"
    # a config written for single stages may hold their paths: `segmix run` sets its own
    config.write_text(f"classifier: elsewhere.pt\nsplits: [val]\ndata:\n  classes: [A, B, C]\n"
                      f"  train: {{path: {csv_path}}}\n  val: {{path: {unlabelled}}}\n")
    out = tmp_path / "run"
    assert main(["run", "--config", str(config), "--output-dir", str(out),
                 *[a for s in TINY_MODELS for a in ("--set", s)]]) == 0
    printed = capsys.readouterr().out
    assert "[8/8] evaluate" in printed and "no ground-truth masks" in printed
    assert len(list((out / "predictions" / "masks").glob("*.png"))) == 6
    assert (out / "classifier" / "classifier.pt").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["segmenter"] is None and summary["seconds"]["evaluate"] is None
    assert "train" in summary["metrics"]["pseudo_masks"]
    mask = np.asarray(Image.open(out / "pseudo-masks" / "masks" / "train" / "A_0.png"))
    assert mask.shape == (32, 32)


@pytest.mark.parametrize("localiser, fitted", [
    (["localiser.method=prototypes", "localiser.prototypes=3", "localiser.segments=40"],
     "prototypes.pt"),
    (["localiser.method=axis", "localiser.smoothing=3", "localiser.naming_tiles=6"], "axis.pt"),
])
def test_pseudo_masks_for_new_tiles_from_a_finished_run(tmp_path, capsys, localiser, fitted):
    csv_path = write_csv_dataset(tmp_path / "tiles", per_class=8, size=32)
    run = tmp_path / "run"
    settings = ["data.classes=[A, B, C]", f"data.train.path={csv_path}",
                f"data.val.path={csv_path}", *TINY_MODELS, *localiser, "masks.foreground_weight=1.0",
                "sweep.enabled=true", "sweep.values=[0.2, 0.5]"]
    assert cli("run", run, settings) == 0
    # the val tiles again, as a user's labelled CSV without a split column
    val_rows = [line.split(",") for line in csv_path.read_text().splitlines()[1:]
                if line.endswith(",val")]
    new = csv_path.parent / "new.csv"
    new.write_text("image,label,mask\n" + "".join(f"{r[0]},{r[2]},{r[1]}\n" for r in val_rows))
    out = tmp_path / "new-masks"
    assert main(["pseudo-masks", "--from-run", str(run), "--input", str(new),
                 "--output-dir", str(out)]) == 0

    summary = json.loads((out / "summary.json").read_text())
    chosen = json.loads((run / "pseudo-masks" / "summary.json").read_text())
    assert summary["settings"] == chosen["settings"] and summary["from_run"] == str(run)
    assert chosen["localiser_dir"]  # the run's masks used its foreground maps...
    assert (out / "localiser" / fitted).read_bytes() == \
        (run / "localiser" / fitted).read_bytes()  # ...and its fitted localiser is reused
    for row in val_rows:  # the same tiles get the masks the run made for them
        name = row[0].split("/")[-1].removesuffix(".png")
        np.testing.assert_array_equal(
            read_mask_png(out / "masks" / "val" / f"{name}.png"),
            read_mask_png(run / "pseudo-masks" / "masks" / "val" / f"{name}.png"))
    metrics = json.loads((out / "metrics.json").read_text())["val"]
    theirs = json.loads((run / "pseudo-masks" / "metrics.json").read_text())["val"]
    assert metrics["tiles_scored"] == 6
    assert metrics["with_background"] == theirs["with_background"]  # same masks, same scores

    # interrupted before its summary; meanwhile the CSV at the same path gains rows and one
    # tile's label changes: the re-run notices (content fingerprint) and computes what is missing
    (out / "summary.json").unlink()
    train_rows = [line.split(",") for line in csv_path.read_text().splitlines()[1:]
                  if line.endswith(",train")][:3]
    relabelled = val_rows[0][0].split("/")[-1].removesuffix(".png")
    old_label = val_rows[0][2]
    val_rows[0][2] = "B" if old_label != "B" else "C"
    new.write_text("image,label,mask\n" + "".join(f"{r[0]},{r[2]},{r[1]}\n"
                                                   for r in val_rows + train_rows))
    capsys.readouterr()
    assert main(["pseudo-masks", "--from-run", str(run), "--input", str(new),
                 "--output-dir", str(out)]) == 0
    assert "1 tile(s) forgotten" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["val"]["tiles_scored"] == 9
    with open(out / "masks.csv") as handle:
        assert len(handle.read().splitlines()) == 1 + 9
    relabelled_mask = read_mask_png(out / "masks" / "val" / f"{relabelled}.png")
    assert (relabelled_mask == 1 + ["A", "B", "C"].index(old_label)).sum() == 0  # its new label

    # a missing image is skipped when asked, as the error message suggests
    skip = csv_path.parent / "skip.csv"
    skip.write_text(new.read_text() + "missing.png,A,\n")
    assert main(["pseudo-masks", "--from-run", str(run), "--input", str(skip),
                 "--output-dir", str(tmp_path / "skip")]) == 1
    assert "data.on_bad_file=skip" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="skipped 1 bad file"):
        assert main(["pseudo-masks", "--from-run", str(run), "--input", str(skip),
                     "--output-dir", str(tmp_path / "skip"), "--set", "data.on_bad_file=skip"]) == 0

    # a damaged summary of the run is named before any CAM is computed
    summary_file = run / "pseudo-masks" / "summary.json"
    kept = summary_file.read_bytes()
    summary_file.write_text("{")
    capsys.readouterr()
    assert main(["pseudo-masks", "--from-run", str(run), "--input", str(new),
                 "--output-dir", str(tmp_path / "damaged")]) == 2
    error = capsys.readouterr().err
    assert f"{summary_file} cannot be read (JSONDecodeError" in error and "Traceback" not in error
    assert not (tmp_path / "damaged" / "cams").exists()
    summary_file.write_bytes(kept)

    # bad input names the problem
    capsys.readouterr()
    wrong = csv_path.parent / "wrong.csv"
    wrong.write_text(f"image,label\n{val_rows[0][0]},A\n{val_rows[1][0]},Lymphocytes\n")
    assert main(["pseudo-masks", "--from-run", str(run), "--input", str(wrong),
                 "--output-dir", str(tmp_path / "wrong")]) == 1
    error = capsys.readouterr().err
    assert "wrong.csv line 3" in error and "unknown class name(s) ['Lymphocytes']" in error
    assert main(["pseudo-masks", "--from-run", str(run), "--input", str(new), "--output-dir",
                 str(tmp_path / "other"), "--set", "data.classes=[A, B]"]) == 1
    assert "was built for classes ['A', 'B', 'C'] at image_size 32; this config has classes" \
           " ['A', 'B']" in capsys.readouterr().err
    assert main(["pseudo-masks", "--from-run", str(tmp_path / "tiles"), "--input", str(new),
                 "--output-dir", str(tmp_path / "x")]) == 2
    assert "is not a finished `segmix run` folder" in capsys.readouterr().err
    assert main(["pseudo-masks", "--input", str(new), "--output-dir", str(tmp_path / "y")]) == 2
    assert "from_run and input go together" in capsys.readouterr().err

"""Stages 2-3 and evaluation through the CLI on tiny synthetic data: outputs, resume, overwrite."""

import csv
import json

import numpy as np
import pytest
import torch

from segmix.artifacts import read_cam_file as load_cam_file
from segmix.cli import main
from segmix.data import read_mask_png

from interrupt import run_killed_after_first_epoch
from synthetic import write_csv_dataset


def data_settings(csv_path):
    return ["data.classes=[A, B, C]", f"data.train.path={csv_path}", f"data.val.path={csv_path}",
            "data.image_size=32"]


def cli(command, out, settings, *flags):
    return main([command, "--output-dir", str(out), *[a for s in settings for a in ("--set", s)],
                 *flags])


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    csv_path = write_csv_dataset(root / "tiles", per_class=8, size=32)
    out = root / "classifier"
    settings = data_settings(csv_path) + [
        "model.name=test_efficientnet", "model.weights=null", "train.epochs=1",
        "train.batch_size=6", "train.num_workers=0", "augment.curriculum.patch_sizes=[16, 8]"]
    assert cli("train-cls", out, settings) == 0
    return csv_path, out / "classifier.pt"


def test_cams_pseudo_masks_and_evaluate(classifier, tmp_path, capsys):
    csv_path, model = classifier
    cams = tmp_path / "cams"
    cam_settings = data_settings(csv_path) + [
        f"classifier={model}", "splits=[train, val]", "cam.method=gradcam", "cam.num_workers=0",
        "cam.batch_size=4", "cam.flips=[horizontal]",
        "cam.shuffle_tta={enabled: true, patch_size: 8, draws: 2, fix_ratio: 0.0, mode: batch,"
        " group_size: null}"]
    assert cli("cams", cams, cam_settings) == 0
    with open(cams / "index.csv", newline="") as handle:
        index = list(csv.DictReader(handle))
    assert len(index) == 24 and {r["split"] for r in index} == {"train", "val"}
    arrays = load_cam_file(cams / index[0]["cams"])
    assert arrays["cams"].shape == (3, 32, 32) and arrays["cams"].dtype == np.float16
    assert arrays["labels"].tolist() == [1, 0, 0] and arrays["probabilities"].shape == (3,)

    masks = tmp_path / "masks"
    mask_settings = data_settings(csv_path) + [
        f"cams_dir={cams}", "splits=[val]", "overlays=true",
        "sweep={enabled: true, key: threshold, values: [0.1, 0.5], split: val,"
        " protocol: with_background, metric: mIoU}"]
    assert cli("pseudo-masks", masks, mask_settings) == 0
    summary = json.loads((masks / "summary.json").read_text())
    assert summary["sweep"]["chosen"] in (0.1, 0.5) and len(summary["sweep"]["table"]) == 2
    assert summary["settings"]["threshold"] == summary["sweep"]["chosen"]
    written = sorted((masks / "masks" / "val").glob("*.png"))
    assert len(written) == 6 and len(list((masks / "overlays" / "val").glob("*.png"))) == 6
    mask = read_mask_png(written[0])
    assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 1, 2, 3, 255}
    metrics = json.loads((masks / "metrics.json").read_text())
    assert set(metrics["val"]) >= {"with_background", "ignore_background"}
    assert json.loads((masks / "masks" / "legend.json").read_text())["1"]["name"] == "A"

    evaluation = tmp_path / "evaluation"
    assert cli("evaluate", evaluation, data_settings(csv_path) + [
        f"predictions={masks / 'masks' / 'val'}", "split=val"]) == 0
    scored = json.loads((evaluation / "metrics.json").read_text())
    assert scored["with_background"]["mIoU"] == pytest.approx(metrics["val"]["with_background"]["mIoU"])
    assert scored["tiles"] == 6

    # a finished run is not overwritten; an interrupted one writes only what is missing
    assert cli("pseudo-masks", masks, mask_settings) == 1
    assert "this run is finished" in capsys.readouterr().err
    (masks / "summary.json").unlink()
    kept, removed = written[1], written[0]
    removed.unlink()
    before = kept.stat().st_mtime_ns
    assert cli("pseudo-masks", masks, mask_settings) == 0
    assert removed.exists() and kept.stat().st_mtime_ns == before
    assert cli("pseudo-masks", masks, mask_settings, "--overwrite") == 0
    assert kept.stat().st_mtime_ns != before
    # other settings in the same (unfinished) folder are refused
    (masks / "summary.json").unlink()
    assert cli("pseudo-masks", masks, mask_settings + ["masks.threshold=0.9"]) == 1
    assert "holds a run with other settings" in capsys.readouterr().err


def test_stage_errors_are_clear(classifier, tmp_path, capsys):
    csv_path, model = classifier
    assert cli("cams", tmp_path / "c", data_settings(csv_path)[:-1] + [
        "data.classes=[A, B, X]", f"classifier={model}"]) == 1
    assert "was trained on classes ['A', 'B', 'C']" in capsys.readouterr().err
    assert cli("pseudo-masks", tmp_path / "p", data_settings(csv_path) + [
        f"cams_dir={tmp_path / 'none'}"]) == 1
    assert "run `segmix cams` first" in capsys.readouterr().err
    assert cli("evaluate", tmp_path / "e", data_settings(csv_path) + [
        f"predictions={tmp_path}"]) == 1
    assert "predictions are missing" in capsys.readouterr().err


def test_localise_and_pseudo_masks_from_its_foreground_maps(classifier, tmp_path, capsys):
    csv_path, model = classifier
    localiser = tmp_path / "localiser"
    settings = data_settings(csv_path) + [
        f"classifier={model}", "splits=[train, val]", "localiser.method=prototypes",
        "localiser.prototypes=3", "localiser.segments=40", "localiser.fit_tiles=null",
        "localiser.batch_size=8"]
    assert cli("localise", localiser, settings) == 0
    log = capsys.readouterr().out
    assert "prototypes by score (class specificity" in log and "wrote 24 foreground maps" in log
    maps = sorted((localiser / "maps" / "val").glob("*.png"))
    assert len(maps) == 6 and len(list((localiser / "maps" / "train").glob("*.png"))) == 18
    foreground = read_mask_png(maps[0])
    assert foreground.shape == (32, 32) and foreground.max() <= 255
    with open(localiser / "prototypes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 3 and {"score", "area_share", "haematoxylin"} <= set(rows[0])
    assert (localiser / "prototypes.png").is_file() and (localiser / "prototypes.pt").is_file()
    # each class's blob is its own colour, the noisy white around it the same for all classes
    blob_colour = [row for row in rows if float(row["saturation"]) > 0.3]
    assert blob_colour and min(float(r["score"]) for r in blob_colour) > max(
        float(r["score"]) for r in rows if float(r["saturation"]) <= 0.3)
    by_classifier = tmp_path / "by-classifier"
    assert cli("localise", by_classifier, settings + ["localiser.naming=classifier",
                                                      "splits=[val]"]) == 0
    assert "drop of the class probability" in capsys.readouterr().out
    assert len(list((by_classifier / "maps" / "val").glob("*.png"))) == 6

    # an interrupted run reuses the prototypes and writes only the missing maps
    (localiser / "summary.json").unlink()
    maps[0].unlink()
    assert cli("localise", localiser, settings) == 0
    log = capsys.readouterr().out
    assert "reusing" in log and "wrote 1 foreground maps" in log
    # prototypes built with other settings are not silently reused
    (localiser / "summary.json").unlink()
    (localiser / "config.yaml").unlink()
    assert cli("localise", localiser, settings + ["localiser.prototypes=4"]) == 1
    assert "was built for classes ['A', 'B', 'C'] with" in capsys.readouterr().err

    cams = tmp_path / "cams"
    assert cli("cams", cams, data_settings(csv_path) + [
        f"classifier={model}", "splits=[val]", "cam.num_workers=0"]) == 0
    masks = tmp_path / "masks"
    mask_settings = data_settings(csv_path) + [f"cams_dir={cams}", "splits=[val]",
                                               "masks.foreground_weight=1.0", "masks.threshold=0.5"]
    assert cli("pseudo-masks", masks, mask_settings) == 2
    assert "needs localiser_dir" in capsys.readouterr().err
    assert cli("pseudo-masks", masks, mask_settings + [f"localiser_dir={localiser}"]) == 0
    for path in maps[1:]:  # foreground where the map is above the threshold, the tile's class
        mask, values = read_mask_png(masks / "masks" / "val" / path.name), read_mask_png(path)
        assert np.array_equal(mask > 0, values > 0.5 * 255)
    assert json.loads((masks / "summary.json").read_text())["localiser_dir"] == str(localiser)


def assert_resumes_and_refuses_other_settings(localiser, settings, maps, capsys, fitting_log,
                                              other_setting, named):
    """An interrupted `localise` reuses the fitted localiser (its log has no ``fitting_log``) and
    writes only the missing maps, the same; one fitted with ``other_setting`` is refused, the
    saved setting ``named``."""
    before = read_mask_png(maps[1])
    (localiser / "summary.json").unlink()
    maps[0].unlink()
    assert cli("localise", localiser, settings) == 0
    log = capsys.readouterr().out
    assert "reusing" in log and "wrote 1 foreground maps" in log and fitting_log not in log
    assert np.array_equal(read_mask_png(maps[1]), before)
    (localiser / "summary.json").unlink()
    (localiser / "config.yaml").unlink()
    assert cli("localise", localiser, settings + [other_setting]) == 1
    assert named in capsys.readouterr().err


def test_localise_by_evidence_removal(classifier, tmp_path, capsys):
    csv_path, model = classifier
    localiser = tmp_path / "evidence"
    settings = data_settings(csv_path) + [
        f"classifier={model}", "splits=[val]", "localiser.method=evidence", "localiser.epochs=2",
        "localiser.batch_size=8", "localiser.patch_size=8", "localiser.fit_tiles=null"]
    assert cli("localise", localiser, settings) == 0
    log = capsys.readouterr().out
    assert "evidence epoch 2: keep" in log and "wrote 6 foreground maps" in log
    maps = sorted((localiser / "maps" / "val").glob("*.png"))
    assert len(maps) == 6 and read_mask_png(maps[0]).shape == (32, 32)
    with open(localiser / "evidence.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["0", "1"] and {"keep", "remove", "area"} <= set(rows[0])
    assert (localiser / "evidence.png").is_file() and (localiser / "evidence.pt").is_file()
    summary = json.loads((localiser / "summary.json").read_text())
    assert summary["method"] == "evidence" and summary["fill"] == "shuffle"

    assert_resumes_and_refuses_other_settings(localiser, settings, maps, capsys, "evidence epoch",
                                              "localiser.area_weight=2", "'area_weight': 2")
    # a mask that collapses to nothing is named, with what to change
    with pytest.warns(UserWarning, match="collapsed to nothing.*localiser.area_weight=333"):
        assert cli("localise", tmp_path / "empty", settings + ["localiser.area_weight=1000",
                                                              "localiser.lr=0.1"]) == 0
    # each method's fills; the shuffle fill needs two tiles per batch
    bad = tmp_path / "bad"
    assert cli("localise", bad, settings + ["localiser.fill=median"]) == 2
    assert "localiser.fill must be one of shuffle, blur with method evidence" in capsys.readouterr().err
    assert cli("localise", bad, settings + ["localiser.batch_size=1"]) == 2
    assert "batch_size must be at least 2" in capsys.readouterr().err
    assert cli("localise", bad, settings + ["localiser.patch_size=7"]) == 1
    assert "localiser.patch_size 7 must divide the classifier's input size 32x32" in \
        capsys.readouterr().err


def test_localise_by_the_feature_axis(classifier, tmp_path, capsys):
    csv_path, model = classifier
    localiser = tmp_path / "axis"
    settings = data_settings(csv_path) + [
        f"classifier={model}", "splits=[val]", "localiser.method=axis", "localiser.smoothing=3",
        "localiser.batch_size=8", "localiser.fit_tiles=null", "localiser.naming_tiles=6"]
    assert cli("localise", localiser, settings) == 0
    log = capsys.readouterr().out
    assert "feature axis named by the classifier" in log and "of 6 tiles agree" in log
    maps = sorted((localiser / "maps" / "val").glob("*.png"))
    assert len(maps) == 6 and read_mask_png(maps[0]).shape == (32, 32)
    assert (localiser / "axis.png").is_file() and (localiser / "axis.pt").is_file()
    summary = json.loads((localiser / "summary.json").read_text())
    assert summary["method"] == "axis" and summary["features"] == "classifier"
    assert 0 <= summary["naming"]["tiles_agreeing"] <= 1 and summary["naming"]["side_evidence"] >= 0
    assert any(read_mask_png(path).std() > 0 for path in maps)  # the maps vary inside tiles

    assert_resumes_and_refuses_other_settings(localiser, settings, maps, capsys, "named by",
                                              "localiser.smoothing=1", "'smoothing': 3")
    # so is an axis fitted at another input size, with both sizes named
    saved = torch.load(localiser / "axis.pt", weights_only=True)
    saved["settings"]["image_size"] = [64, 64]
    torch.save(saved, localiser / "axis.pt")
    (localiser / "config.yaml").unlink(missing_ok=True)
    assert cli("localise", localiser, settings) == 1
    error = capsys.readouterr().err
    assert "'image_size': [64, 64]" in error and "'image_size': [32, 32]" in error
    # and one fitted on another classifier's features (a fingerprint of its weights)
    fitted_on = saved["settings"]["classifier_weights"]
    saved["settings"].update(image_size=[32, 32], classifier_weights="another")
    torch.save(saved, localiser / "axis.pt")
    (localiser / "config.yaml").unlink(missing_ok=True)
    assert cli("localise", localiser, settings) == 1
    error = capsys.readouterr().err
    assert "'classifier_weights': 'another'" in error and f"'classifier_weights': '{fitted_on}'" in error
    # the ImageNet backbone: the offline EfficientNet-Lite0 at the classifier's input size
    assert cli("localise", tmp_path / "imagenet", settings + [
        "localiser.features=imagenet", "localiser.feature_layers=[blocks.2, blocks.4]"]) == 0
    assert len(list((tmp_path / "imagenet" / "maps" / "val").glob("*.png"))) == 6
    # the sign named with other tiles' patches as the fill (the shuffle kernel), 6 tiles in
    # batches of 4 (chunks of 3 and 3: none alone)
    shuffled = tmp_path / "shuffle"
    assert cli("localise", shuffled, settings + ["localiser.fill=shuffle", "localiser.patch_size=8",
                                                 "localiser.batch_size=4"]) == 0
    assert "of 6 tiles agree" in capsys.readouterr().out
    assert torch.load(shuffled / "axis.pt", weights_only=True)["settings"] == {
        **saved["settings"], "fill": "shuffle", "patch_size": 8, "image_size": [32, 32],
        "classifier_weights": fitted_on}
    # bad settings are named
    bad = tmp_path / "bad"
    assert cli("localise", bad, settings + ["localiser.smoothing=4"]) == 2
    assert "localiser.smoothing must be odd" in capsys.readouterr().err
    assert cli("localise", bad, settings + ["localiser.features=uni"]) == 2
    assert "localiser.features must be one of classifier, imagenet" in capsys.readouterr().err
    assert cli("localise", bad, settings + ["localiser.fill=median"]) == 2
    assert "localiser.fill must be one of blur, shuffle with method axis" in capsys.readouterr().err
    assert cli("localise", bad, settings + ["localiser.fill=shuffle", "localiser.naming_tiles=1"]) == 2
    assert "localiser.naming_tiles must be at least 2" in capsys.readouterr().err
    assert cli("localise", bad, settings + ["localiser.fill=shuffle", "localiser.patch_size=5"]) == 1
    assert "localiser.patch_size 5 must divide the classifier's input size 32x32" in \
        capsys.readouterr().err
    assert cli("localise", bad, settings + ["localiser.feature_layers=[blocks.9]"]) == 1
    assert "localiser.feature_layers ['blocks.9'] are not modules of the backbone" in \
        capsys.readouterr().err


@pytest.fixture(scope="module")
def pseudo_masks(classifier, tmp_path_factory):
    """CAMs and pseudo masks of both splits from the module's classifier."""
    csv_path, model = classifier
    root = tmp_path_factory.mktemp("stages")
    cams, masks = root / "cams", root / "pseudo"
    assert cli("cams", cams, data_settings(csv_path) + [
        f"classifier={model}", "splits=[train, val]", "cam.num_workers=0"]) == 0
    assert cli("pseudo-masks", masks, data_settings(csv_path) + [
        f"cams_dir={cams}", "splits=[train, val]", "masks.threshold=0.2"]) == 0
    return csv_path, masks


def seg_settings(csv_path, masks, *extra):
    return data_settings(csv_path) + [
        f"pseudo_masks_dir={masks}", "segmenter.encoder=tu-test_efficientnet",
        "segmenter.encoder_weights=null", "seg_train.epochs=2", "seg_train.batch_size=4",
        "seg_train.num_workers=0", "seg_augment.curriculum.patch_sizes=[16, 8]", *extra]


def test_train_seg_on_pseudo_masks_with_ground_truth_validation(pseudo_masks, tmp_path, capsys):
    import torch

    from segmix.models.factory import load_segmenter

    csv_path, masks = pseudo_masks
    out = tmp_path / "segmenter"
    assert cli("train-seg", out, seg_settings(csv_path, masks)) == 0
    assert "validating on ground truth" in capsys.readouterr().out
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and 0 <= float(rows[-1]["val_mIoU"]) <= 1
    assert rows[0]["shuffle_patch_size"] == "16"
    model, info = load_segmenter(out / "segmenter.pt")
    assert info["classes"] == ["A", "B", "C"] and info["validated_on"] == "ground truth"
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 4, 32, 32)


def test_train_seg_resumes_exactly_and_validates_on_pseudo_masks(pseudo_masks, tmp_path,
                                                                 monkeypatch, capsys):
    import torch

    csv_path, masks = pseudo_masks
    settings = seg_settings(csv_path, masks, "validate_on=pseudo_masks", "seg_augment.name=cutmix")
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert cli("train-seg", straight, settings) == 0
    assert "validating on pseudo masks" in capsys.readouterr().out
    run_killed_after_first_epoch(monkeypatch, lambda: cli("train-seg", interrupted, settings))
    assert cli("train-seg", interrupted, settings, "--resume") == 0
    a = torch.load(straight / "segmenter.pt", weights_only=True)["state_dict"]
    b = torch.load(interrupted / "segmenter.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_seg_with_class_balanced_synthesis_resumes_exactly(pseudo_masks, tmp_path,
                                                                  monkeypatch, capsys):
    import torch

    csv_path, masks = pseudo_masks
    settings = seg_settings(csv_path, masks, "synthesis={probability: 1.0, power: 1.0}")
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert cli("train-seg", straight, settings) == 0
    with open(straight / "metrics.csv", newline="") as handle:
        assert [row["paste_on"] for row in csv.DictReader(handle)] == ["True", "True"]
    run_killed_after_first_epoch(monkeypatch, lambda: cli("train-seg", interrupted, settings))
    assert cli("train-seg", interrupted, settings, "--resume") == 0
    a = torch.load(straight / "segmenter.pt", weights_only=True)["state_dict"]
    b = torch.load(interrupted / "segmenter.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = tmp_path / "plain"
    assert cli("train-seg", plain, seg_settings(csv_path, masks)) == 0
    c = torch.load(plain / "segmenter.pt", weights_only=True)["state_dict"]
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the paste changed the training
    assert cli("train-seg", tmp_path / "bad", settings + ["synthesis.probability=2"]) == 2
    assert "synthesis.probability must be in [0, 1], got 2" in capsys.readouterr().err


def test_train_seg_with_class_weights_trains_another_model(tmp_path, capsys):
    import torch

    csv_path = write_csv_dataset(tmp_path / "tiles", per_class=8, size=32)
    rows = csv_path.read_text().splitlines()
    rare = [r for r in rows if r.startswith("images/C_") and r.endswith(",train")]
    csv_path.write_text("\n".join(r for r in rows if r not in rare[1:]) + "\n")  # C: 1 train tile
    settings = seg_settings(csv_path, tmp_path / "no-pseudo-masks", "targets=ground_truth",
                            "seg_train.epochs=1")
    runs = {}
    for power in ("0.0", "1.0"):
        out = tmp_path / f"power-{power}"
        assert cli("train-seg", out, settings + [f"seg_train.class_weight_power={power}"]) == 0
        runs[power] = torch.load(out / "segmenter.pt", weights_only=True)["state_dict"]
        assert f"class_weight_power: {power}" in (out / "config.yaml").read_text()
    # train tiles A 6, B 6, C 1: weights 13 / (3 x count)
    assert ("cross-entropy class weights: background 1.00, A 0.72, B 0.72, C 4.33"
            in capsys.readouterr().out)
    assert not all(torch.equal(runs["0.0"][k], runs["1.0"][k]) for k in runs["0.0"])
    assert cli("train-seg", tmp_path / "bad", settings + ["seg_train.class_weight_power=-1"]) == 2
    assert "seg_train.class_weight_power must be a number >= 0, got -1" in capsys.readouterr().err


def test_train_seg_on_ground_truth_is_the_supervised_upper_bound(pseudo_masks, tmp_path, capsys):
    csv_path, _ = pseudo_masks
    out = tmp_path / "upper"
    settings = seg_settings(csv_path, tmp_path / "no-pseudo-masks", "targets=ground_truth",
                            "seg_train.epochs=1")
    assert cli("train-seg", out, settings) == 0
    assert "with ground truth for 1 epochs" in capsys.readouterr().out
    assert (out / "segmenter.pt").is_file()


def test_evaluate_with_the_classifier_tile_class(pseudo_masks, tmp_path, capsys):
    csv_path, masks = pseudo_masks
    cams = masks.parent / "cams"
    out = tmp_path / "evaluation"
    assert cli("evaluate", out, data_settings(csv_path) + [
        f"predictions={masks / 'masks' / 'val'}", f"tile_classes_from={cams}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # relabelling changes only which class the foreground gets, never foreground vs background
    assert metrics["classifier_label"]["foreground_iou"] == pytest.approx(
        metrics["with_background"]["foreground_iou"])
    assert "classifier_label: mIoU" in capsys.readouterr().out
    assert cli("evaluate", tmp_path / "e2", data_settings(csv_path) + [
        f"predictions={masks / 'masks' / 'val'}", f"tile_classes_from={tmp_path}"]) == 1
    assert "have no CAM file" in capsys.readouterr().err


def test_train_seg_errors(pseudo_masks, tmp_path, capsys):
    csv_path, masks = pseudo_masks
    mixup = seg_settings(csv_path, masks, "seg_augment.name=mixup")
    assert cli("train-seg", tmp_path / "a", mixup) == 2  # refused before anything runs
    assert "no meaning for masks" in capsys.readouterr().err
    assert cli("train-seg", tmp_path / "b", seg_settings(csv_path, tmp_path / "none")) == 1
    assert "pseudo masks are missing" in capsys.readouterr().err

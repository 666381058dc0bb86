"""Sliding-window prediction (exactness, padding, bounded memory) and the ``segmix predict`` stage."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from segmix.cli import main
from segmix.data import read_mask_png
from segmix.models.factory import (ModelError, create_classifier, create_segmenter, model_kind,
                                   save_classifier, save_segmenter)
from segmix.models.folder import ModelFolderError
from segmix.models.fusion import fuse_tile_class, one_class_mask
from segmix.models.pretrained import Classifier, Segmenter
from segmix.models.sliding_window import blend_weights, sliding_window_predict, window_starts

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def normalised(image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def random_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return create_segmenter("Unet", "tu-test_efficientnet", 4, encoder_weights=None).eval()


def test_window_starts_cover_the_length_and_end_flush():
    assert window_starts(100, 128, 96) == [0]
    assert window_starts(300, 128, 96) == [0, 96, 172]
    assert window_starts(256, 128, 128) == [0, 128]
    weights = blend_weights(64, 32)
    assert weights.shape == (64, 32) and weights.max() == 1 and weights.min() >= 1e-3
    assert torch.equal(blend_weights(8, 8, "uniform"), torch.ones(8, 8))


@pytest.mark.parametrize("flips", [[], ["horizontal", "vertical"]])
def test_one_window_equals_whole_image_prediction(unet, flips):
    image = random_image(64, 96)
    mask, probs = sliding_window_predict(unet, image, window=[64, 96], mean=MEAN, std=STD,
                                         flips=flips, probabilities=True)
    with torch.no_grad():
        x = normalised(image)
        logits = sum(unet(x.flip(d) if d else x).flip(d) if d else unet(x)
                     for d in [()] + [(-1,) if f == "horizontal" else (-2,) for f in flips])
        logits = logits[0] / (1 + len(flips))
    assert np.array_equal(mask, logits.argmax(0).numpy())
    assert np.allclose(probs.astype(np.float32), torch.softmax(logits, 0).numpy(), atol=2e-3)


@pytest.mark.parametrize("blend", ["gaussian", "uniform"])
def test_overlapping_windows_of_a_pointwise_model_equal_the_whole_image(blend):
    """A 1x1 convolution gives every window the same logits where they overlap, so any blend of
    them must reproduce the whole-image logits: this checks the band bookkeeping exactly."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 5, 1).eval()
    image = random_image(301, 437, seed=1)
    mask, probs = sliding_window_predict(model, image, window=64, overlap=0.4, mean=MEAN, std=STD,
                                         blend=blend, probabilities=True, batch_size=3)
    with torch.no_grad():
        logits = model(normalised(image))[0]
    assert np.array_equal(mask, logits.argmax(0).numpy())
    assert np.abs(probs.astype(np.float32) - torch.softmax(logits, 0).numpy()).max() < 2e-3


def test_an_image_smaller_than_the_window_is_padded(unet):
    mask, probs = sliding_window_predict(unet, random_image(40, 50), window=64, mean=MEAN, std=STD,
                                         probabilities=True)
    assert mask.shape == (40, 50) and probs.shape == (4, 40, 50)
    assert np.allclose(probs.astype(np.float32).sum(0), 1, atol=1e-2)


def test_bad_arguments_are_named(unet):
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        sliding_window_predict(unet, np.zeros((8, 8), np.uint8), window=64, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="overlap must be in"):
        sliding_window_predict(unet, random_image(8, 8), window=64, mean=MEAN, std=STD, overlap=1)
    with pytest.raises(ValueError, match="unknown flips"):
        sliding_window_predict(unet, random_image(8, 8), window=64, mean=MEAN, std=STD,
                               flips=["diagonal"])
    with pytest.raises(ValueError, match="full-resolution logits"):
        sliding_window_predict(torch.nn.Conv2d(3, 2, 2, stride=2), random_image(64, 64), window=64,
                               mean=MEAN, std=STD)


def test_a_4000_by_3000_image_needs_less_memory_than_its_logit_map():
    """Peak memory while predicting stays far below what blending into full-image float32 maps
    needs (8 logit channels + 1 weight channel x 12 Mpx x 4 bytes = 412 MiB): the band design holds
    one row of windows, not the whole image (about 110 MiB here, allocator slack included)."""
    script = textwrap.dedent("""
        import numpy as np, torch
        from segmix.models.sliding_window import sliding_window_predict
        def status_mib(field):  # VmRSS now, VmHWM peak of this process image (ru_maxrss is not:
            with open("/proc/self/status") as f:  # it keeps the forking parent's peak)
                line = next(l for l in f if l.startswith(field + ":"))
            return int(line.split()[1]) / 1024
        torch.manual_seed(0)
        model = torch.nn.Conv2d(3, 8, 1).eval()
        image = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
        before = status_mib("VmRSS")
        mask, _ = sliding_window_predict(model, image, window=256, mean=(0.5,) * 3, std=(0.25,) * 3,
                                         batch_size=2)
        growth = status_mib("VmHWM") - before
        assert mask.shape == (3000, 4000) and mask.max() < 8
        print(growth)
    """)
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/status")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True)
    growth_mib = float(result.stdout.strip().splitlines()[-1])
    full_maps_mib = 9 * 3000 * 4000 * 4 / 2**20
    assert growth_mib < full_maps_mib / 2, f"peak grew by {growth_mib:.0f} MiB"


# -- the stage ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def segmenter_file(tmp_path_factory, unet):
    path = tmp_path_factory.mktemp("model") / "segmenter.pt"
    save_segmenter(path, unet, arch="Unet", encoder="tu-test_efficientnet", classes=["A", "B", "C"],
                   image_size=(64, 64))
    return path


def write_images(folder, sizes):
    folder.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(random_image(h, w, seed=i)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")


def predict(out, *settings, extra=()):
    return main(["predict", "--output-dir", str(out), *[a for s in settings for a in ("--set", s)],
                 *extra])


def test_predict_folder_outputs_resume_and_refusal(segmenter_file, tmp_path, capsys):
    images = tmp_path / "images"
    write_images(images, [(64, 64), (100, 150), (40, 30)])
    out = tmp_path / "predict"
    settings = [f"segmenter_path={segmenter_file}", f"input={images}", "predict.probabilities=true",
                "predict.flips=[horizontal]"]
    assert predict(out, *settings) == 0
    for i, size in enumerate([(64, 64), (100, 150), (40, 30)]):
        mask = read_mask_png(out / "masks" / f"img{i}.png")
        assert mask.shape == size and mask.max() <= 3
        with np.load(out / "probabilities" / f"img{i}.npz") as data:
            assert data["probabilities"].shape == (4, *size)
            assert data["classes"].tolist() == ["background", "A", "B", "C"]
        assert Image.open(out / "overlays" / f"img{i}.jpg").size == size[::-1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 3 and summary["predicted_now"] == 3
    assert json.loads((out / "masks" / "legend.json").read_text())["3"]["name"] == "C"
    assert (out / "predictions.csv").read_text().count("\n") == 4

    assert predict(out, *settings) == 1  # finished: refuses
    assert "exists: this run is finished" in capsys.readouterr().err
    # an interrupted run (no summary, one mask missing) predicts only what is missing
    (out / "summary.json").unlink()
    (out / "masks" / "img1.png").unlink()
    assert predict(out, *settings) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predicted_now"] == 1 and summary["already_done"] == 2


def test_predict_csv_input_scale_and_bad_files(segmenter_file, tmp_path, capsys):
    images = tmp_path / "images"
    write_images(images, [(64, 64), (96, 80)])
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("image,split\nimages/img0.png,test\nimages/broken.png,test\n"
                        "images/img1.png,test\nimages/img1.png,other\n")
    base = [f"segmenter_path={segmenter_file}", f"input={csv_path}", "input_split=test",
            "predict.scale=0.5", "predict.overlays=false"]
    assert predict(tmp_path / "raise", *base) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "predict.on_bad_file=skip" in err

    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        assert predict(tmp_path / "skip", *base, "predict.on_bad_file=skip") == 0
    summary = json.loads((tmp_path / "skip" / "summary.json").read_text())
    assert summary["images"] == 2 and len(summary["skipped"]) == 1
    assert read_mask_png(tmp_path / "skip" / "masks" / "img1.png").shape == (96, 80)
    assert not (tmp_path / "skip" / "overlays").exists()


def test_predict_input_errors(segmenter_file, tmp_path, capsys):
    model = f"segmenter_path={segmenter_file}"
    assert predict(tmp_path / "a", model) == 2
    assert "set exactly one of input" in capsys.readouterr().err
    assert predict(tmp_path / "b", model, f"input={tmp_path / 'nowhere'}") == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert predict(tmp_path / "c", model, f"input={tmp_path / 'empty'}") == 1
    assert "holds no images" in capsys.readouterr().err
    (tmp_path / "x.csv").write_text("path\na.png\n")
    assert predict(tmp_path / "d", model, f"input={tmp_path / 'x.csv'}") == 1
    assert "missing column(s) ['image']" in capsys.readouterr().err
    write_images(tmp_path / "imgs", [(64, 64)])
    assert predict(tmp_path / "e", model, f"input={tmp_path / 'imgs'}", "predict.overlap=1.5") == 2
    assert "overlap must be in [0, 1)" in capsys.readouterr().err
    assert predict(tmp_path / "f", "segmenter_path=nothing.pt", f"input={tmp_path / 'imgs'}") == 1
    assert "segmentation model file or folder nothing.pt not found" in capsys.readouterr().err


# -- fusion with a tile classifier ------------------------------------------------------------

def test_fusion_keeps_the_segmenters_tissue_and_weighs_its_class_by_the_tile_classifier():
    # background, A, B at three pixels: tissue of A, tissue of B, background
    probs = np.array([[[0.1, 0.2, 0.7]],
                      [[0.6, 0.3, 0.2]],
                      [[0.3, 0.5, 0.1]]], dtype=np.float32)
    assert fuse_tile_class(probs, [0.5, 0.5], 1.0).tolist() == [[1, 2, 0]]
    assert fuse_tile_class(probs, [0.2, 0.9], 0.0).tolist() == [[1, 2, 0]]  # the segmenter alone
    assert fuse_tile_class(probs, [0.2, 0.9], 1.0).tolist() == [[2, 2, 0]]  # 0.12 < 0.27
    assert fuse_tile_class(probs, [0.9, 0.2], 1.0).tolist() == [[1, 1, 0]]  # 0.45 > 0.1
    assert fuse_tile_class(probs, [0.9, 0.6], 1.0).tolist() == [[1, 2, 0]]  # unsure: pixels decide
    # foreground where background < the sum of the classes, though background is the argmax
    assert fuse_tile_class(np.array([[[0.4]], [[0.3]], [[0.3]]]), [0.1, 0.9]).tolist() == [[2]]
    with pytest.raises(ValueError, match=r"class_probabilities \[K\]"):
        fuse_tile_class(probs, [0.5, 0.3, 0.2])
    with pytest.raises(ValueError, match="weight must be >= 0"):
        fuse_tile_class(probs, [0.5, 0.5], -1.0)


def test_one_class_mask_paints_the_tissue_with_the_class_of_most_probability():
    # background, A, B at four pixels: A, A, B, background; B has more mass than either A pixel
    probs = np.array([[[0.1, 0.3, 0.0, 0.8]],
                      [[0.5, 0.4, 0.1, 0.1]],
                      [[0.4, 0.3, 0.9, 0.1]]], dtype=np.float32)
    assert fuse_tile_class(probs, [0.5, 0.5], 0.0).tolist() == [[1, 1, 2, 0]]  # pixel by pixel
    assert one_class_mask(probs).tolist() == [[2, 2, 2, 0]]  # mass A 0.9 < B 1.6, by majority A
    assert one_class_mask(probs, [0.7, 0.3]).tolist() == [[1, 1, 1, 0]]  # 0.36*0.7 > 0.64*0.3
    assert one_class_mask(probs, [0.7, 0.3], 0.0).tolist() == [[2, 2, 2, 0]]  # the segmenter alone
    assert one_class_mask(np.array([[[0.9]], [[0.05]], [[0.05]]])).tolist() == [[0]]
    with pytest.raises(ValueError, match=r"class_probabilities \[K\]"):
        one_class_mask(probs, [0.5, 0.3, 0.2])
    with pytest.raises(ValueError, match="weight must be >= 0"):
        one_class_mask(probs, [0.5, 0.5], -1.0)
    # a foreground drawn by another rule: the first two pixels only (mass A 0.9 > B 0.7)
    assert one_class_mask(probs, foreground=np.array([[True, True, False, False]])).tolist() == \
        [[1, 1, 0, 0]]
    with pytest.raises(ValueError, match="must match the probabilities' pixels"):
        one_class_mask(probs, foreground=np.ones((2, 2), bool))


def test_predict_one_class_gives_each_image_one_class_of_its_own_probabilities(segmenter_file,
                                                                              tmp_path, capsys):
    images = tmp_path / "images"
    write_images(images, [(64, 64), (80, 96)])
    base = [f"segmenter_path={segmenter_file}", f"input={images}", "predict.probabilities=true"]
    assert predict(tmp_path / "pixels", *base) == 0
    assert predict(tmp_path / "one", *base, "predict.one_class=true") == 0
    several = 0
    for i in range(2):
        with np.load(tmp_path / "pixels" / "probabilities" / f"img{i}.npz") as data:
            probs = data["probabilities"].astype(np.float32)
        pixels = read_mask_png(tmp_path / "pixels" / "masks" / f"img{i}.png")
        one = read_mask_png(tmp_path / "one" / "masks" / f"img{i}.png")
        assert np.array_equal(one, one_class_mask(probs))
        assert len(np.unique(one[one > 0])) == 1
        several += len(np.unique(pixels[pixels > 0])) > 1
    assert several  # the reading changed something
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["one_class"] is True
    assert predict(tmp_path / "slides", *base[:2], "predict.one_class=true",
                   "predict.slides=true") == 2
    assert "a whole slide holds many" in capsys.readouterr().err


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory):
    def save(classes):
        torch.manual_seed(1)
        model = create_classifier("test_efficientnet", len(classes)).eval()
        with torch.no_grad():  # sure of B, which the segmenter names in a few pixels only
            model.get_classifier().bias.copy_(torch.tensor([-4.0, 4.0, -4.0]))
        path = tmp_path_factory.mktemp("classifier") / "classifier.pt"
        save_classifier(path, model, name="test_efficientnet", classes=classes, image_size=(64, 64))
        return path
    return save


def test_predict_with_a_tile_classifier_fuses_its_class(segmenter_file, classifier_file, tmp_path,
                                                        capsys):
    images = tmp_path / "images"
    write_images(images, [(64, 64), (80, 96)])
    base = [f"segmenter_path={segmenter_file}", f"input={images}", "predict.probabilities=true"]
    classifier = f"classifier_path={classifier_file(['A', 'B', 'C'])}"
    assert predict(tmp_path / "alone", *base, classifier, "predict.classifier_weight=0") == 0
    assert predict(tmp_path / "tile", *base, classifier, "predict.classifier_weight=1000") == 0
    tile_probs = Classifier.from_pretrained(classifier_file(["A", "B", "C"])).predict(
        [np.asarray(Image.open(images / f"img{i}.png")) for i in range(2)])
    for i in range(2):
        with np.load(tmp_path / "alone" / "probabilities" / f"img{i}.npz") as data:
            probs = data["probabilities"].astype(np.float32)
        foreground = probs[0] < probs[1:].sum(0)
        alone = read_mask_png(tmp_path / "alone" / "masks" / f"img{i}.png")
        assert np.array_equal(alone, np.where(foreground, probs[1:].argmax(0) + 1, 0))
        tile = read_mask_png(tmp_path / "tile" / "masks" / f"img{i}.png")
        assert tile_probs[i].argmax() == 1 and (alone[foreground] != 2).any()
        assert np.array_equal(tile, np.where(foreground, 2, 0))
    summary = json.loads((tmp_path / "tile" / "summary.json").read_text())
    assert summary["classifier"].endswith("classifier.pt") and summary["classifier_weight"] == 1000

    other = f"classifier_path={classifier_file(['A', 'B', 'D'])}"
    assert predict(tmp_path / "other", *base, other) == 1
    assert "'D'" in capsys.readouterr().err
    assert predict(tmp_path / "slides", f"segmenter_path={segmenter_file}", f"input={images}",
                   classifier, "predict.slides=true") == 2
    assert "a whole slide holds many" in capsys.readouterr().err


def test_a_segmenter_folder_carries_its_tile_classifier(segmenter_file, classifier_file, tmp_path,
                                                        capsys):
    images = tmp_path / "images"
    write_images(images, [(64, 64), (80, 96)])
    segmenter = Segmenter.from_pretrained(segmenter_file)
    assert segmenter.classifier is None
    with pytest.raises(ModelError, match="carries none"):
        segmenter.predict(np.zeros((64, 64, 3), np.uint8), classifier_weight=1.0)
    segmenter.save_pretrained(tmp_path / "alone")
    segmenter.classifier = Classifier.from_pretrained(classifier_file(["A", "B", "C"]))
    bundle = segmenter.save_pretrained(tmp_path / "bundle")
    assert (bundle / "classifier" / "model.safetensors").is_file()
    assert model_kind(bundle) == "segmenter"

    loaded = Segmenter.from_pretrained(bundle)
    assert loaded.classifier is not None and loaded.classifier.classes == ["A", "B", "C"]
    for key, value in segmenter.classifier.network.state_dict().items():
        assert torch.equal(loaded.classifier.network.state_dict()[key], value)
    # the folder given as the classifier gives the masks of the classifier's own file
    file_settings = [f"segmenter_path={segmenter_file}", f"input={images}",
                     f"classifier_path={classifier_file(['A', 'B', 'C'])}"]
    assert predict(tmp_path / "by-file", *file_settings) == 0
    assert predict(tmp_path / "by-folder", f"segmenter_path={bundle}", f"input={images}",
                   f"classifier_path={bundle}") == 0
    assert predict(tmp_path / "segmenter-only", f"segmenter_path={bundle}",
                   f"input={images}") == 0
    for i in range(2):
        name = f"masks/img{i}.png"
        by_file = read_mask_png(tmp_path / "by-file" / name)
        assert np.array_equal(by_file, read_mask_png(tmp_path / "by-folder" / name))
        image = np.asarray(Image.open(images / f"img{i}.png"))
        assert np.array_equal(by_file, loaded.predict(image, classifier_weight=1.0).mask)
        # without classifier_path the folder's segmenter alone predicts
        alone = read_mask_png(tmp_path / "segmenter-only" / name)
        assert np.array_equal(alone, loaded.predict(image).mask)
        assert not np.array_equal(alone, by_file)

    assert predict(tmp_path / "none", f"segmenter_path={bundle}", f"input={images}",
                   f"classifier_path={tmp_path / 'alone'}") == 1
    assert "carries no tile classifier" in capsys.readouterr().err
    segmenter.classifier = Classifier.from_pretrained(classifier_file(["A", "B", "D"]))
    with pytest.raises(ModelFolderError, match="cannot carry a tile classifier of classes"):
        segmenter.save_pretrained(tmp_path / "mismatch")
    assert not (tmp_path / "mismatch").exists()

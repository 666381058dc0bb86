"""Model folders: save_pretrained / from_pretrained round trips, old .pt files, refusals, --model."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from segmix.api import Classifier, Segmenter, load_pretrained
from segmix.cli import main
from segmix.models.export import reference_tiles
from segmix.models.folder import ModelFolderError
from segmix.models.factory import (
    ModelError,
    create_classifier,
    create_segmenter,
    save_classifier,
    save_segmenter,
)

CLASSES = ["tumour", "stroma"]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A classifier and a segmenter saved as the training stages save them (.pt files)."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    classifier = create_classifier("test_efficientnet", len(CLASSES))
    save_classifier(root / "classifier.pt", classifier, name="test_efficientnet", classes=CLASSES,
                    image_size=(64, 64), extra={"loss": "ce", "mpp": 0.5})
    segmenter = create_segmenter("Unet", "tu-test_efficientnet", len(CLASSES) + 1)
    save_segmenter(root / "segmenter.pt", segmenter, arch="Unet", encoder="tu-test_efficientnet",
                   classes=CLASSES, image_size=(64, 64), extra={"mpp": 0.5})
    return root / "classifier.pt", root / "segmenter.pt"


def test_classifier_folder_round_trip(model_files, tmp_path):
    original = Classifier.from_pretrained(model_files[0])  # an old .pt keeps loading
    folder = original.save_pretrained(tmp_path / "classifier")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["segmix_model"] == "classifier" and config["classes"] == CLASSES
    assert config["image_size"] == [64, 64] and config["mpp"] == 0.5 and config["loss"] == "ce"
    loaded = Classifier.from_pretrained(folder, classes=CLASSES)
    tiles = reference_tiles((64, 64), 4)
    probabilities = loaded.predict(tiles)
    assert probabilities.shape == (4, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)  # softmax: loss ce
    np.testing.assert_array_equal(probabilities, original.predict(tiles))
    assert loaded.mean == original.mean and loaded.mpp == 0.5


def test_segmenter_folder_round_trip(model_files, tmp_path):
    original = Segmenter.from_pretrained(model_files[1])
    folder = original.save_pretrained(tmp_path / "segmenter")
    config = json.loads((folder / "config.json").read_text())
    assert config["segmix_model"] == "segmenter" and config["encoder"] == "tu-test_efficientnet"
    assert list(config["palette"]) == ["background", *CLASSES]
    assert config["palette"]["background"] == [0, 0, 0]
    loaded = load_pretrained(folder)
    assert isinstance(loaded, Segmenter)
    image = np.concatenate(list(reference_tiles((64, 64), 3)), axis=1)  # 64 x 192: three windows
    first, second = original.predict(image, probabilities=True), loaded.predict(image, probabilities=True)
    np.testing.assert_array_equal(first.mask, second.mask)
    np.testing.assert_array_equal(first.probabilities, second.probabilities)
    assert first.mask.shape == (64, 192) and first.probabilities.shape == (3, 64, 192)
    # saving over an existing folder replaces it whole
    assert loaded.save_pretrained(folder) == folder
    assert sorted(p.name for p in folder.parent.iterdir()) == ["segmenter"]


def test_folders_that_do_not_fit_are_refused(model_files, tmp_path):
    folder = Classifier.from_pretrained(model_files[0]).save_pretrained(tmp_path / "c")
    with pytest.raises(ModelError, match=r"trained on classes \['tumour', 'stroma'\], not"
                                         r" \['tumour', 'normal'\]"):
        Classifier.from_pretrained(folder, classes=["tumour", "normal"])
    with pytest.raises(ModelFolderError, match="holds a classifier, not a segmenter"):
        Segmenter.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelFolderError, match=r"not a complete segmix model folder: \['model.safetensors'\]"):
        Classifier.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="classifier file or folder .*nowhere not found"):
        Classifier.from_pretrained(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    (broken / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ModelFolderError, match="does not describe a segmix model"):
        Classifier.from_pretrained(broken)
    (broken / "config.json").write_text(json.dumps({"segmix_model": "classifier", "arch": "x",
                                                    "classes": CLASSES}))
    with pytest.raises(ModelFolderError, match="model.safetensors cannot be read"):
        Classifier.from_pretrained(broken)


def test_cams_refuse_a_classifier_folder_of_other_classes(model_files, tmp_path, capsys):
    from synthetic import write_csv_dataset

    folder = Classifier.from_pretrained(model_files[0]).save_pretrained(tmp_path / "c")
    csv_path = write_csv_dataset(tmp_path / "tiles", per_class=2, size=32)
    status = main(["cams", "--output-dir", str(tmp_path / "cams"), "--set", f"classifier={folder}",
                   "--set", "data.classes=[A, B, C]", "--set", f"data.train.path={csv_path}",
                   "--set", "splits=[train]"])
    assert status == 1
    assert "trained on classes ['tumour', 'stroma'], not ['A', 'B', 'C']" in capsys.readouterr().err


def test_predict_takes_a_model_folder(model_files, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i, tile in enumerate(reference_tiles((64, 64), 2)):
        Image.fromarray(tile).save(images / f"tile{i}.png")
    folder = Segmenter.from_pretrained(model_files[1]).save_pretrained(tmp_path / "segmenter")
    assert main(["predict", "--model", str(folder), "--set", f"input={images}",
                 "--output-dir", str(tmp_path / "from-folder")]) == 0
    assert main(["predict", "--set", f"segmenter_path={model_files[1]}", "--set", f"input={images}",
                 "--output-dir", str(tmp_path / "from-file")]) == 0
    for i in range(2):
        masks = [np.array(Image.open(tmp_path / run / "masks" / f"tile{i}.png"))
                 for run in ("from-folder", "from-file")]
        np.testing.assert_array_equal(*masks)


def test_damaged_model_folders_are_refused_by_name(model_files, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    folder = Segmenter.from_pretrained(model_files[1]).save_pretrained(tmp_path / "segmenter")
    for name in ("config.json", "model.safetensors"):  # a folder to hand on: readable by others
        assert (folder / name).stat().st_mode & 0o044 == 0o044
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(reference_tiles((64, 64), 1)[0]).save(images / "tile.png")
    weights = load_file(str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    first = next(key for key, value in weights.items() if value.is_floating_point())

    def refused(message):
        status = main(["predict", "--model", str(folder), "--set", f"input={images}",
                       "--output-dir", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert status == 1 and message in err and "Traceback" not in err, err

    save_file({**weights, first: torch.full_like(weights[first], float("nan"))},
              str(folder / "model.safetensors"))
    refused(f"weight {first!r} holds NaN or infinite values")
    save_file(weights, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({**config, "std": [0, 0, 0]}))
    refused("std must be three positive numbers")
    (folder / "config.json").write_text(json.dumps({**config, "classes": ["a", "b", "c", "d"]}))
    refused("the weights do not fit the model its config describes (Unet, 4 classes)")

"""segmix export: TorchScript and ONNX match the eager model on real tiles; refusals are clear."""

import json
import sys

import numpy as np
import pytest
import torch

from segmix.api import Classifier, Segmenter, export
from segmix.cli import main
from segmix.config import ConfigError
from segmix.models.export import ExportError, NormalisedModel, load_exported, reference_tiles
from segmix.models.factory import (
    OFFLINE_LITE0,
    create_classifier,
    create_segmenter,
    save_classifier,
)
from segmix.models.factory import save_segmenter

CLASSES = ["tumour", "stroma", "necrosis"]


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    """A classifier and a segmenter on the offline ImageNet EfficientNet-Lite0 weights (real
    activations on real tiles), saved as model folders."""
    root = tmp_path_factory.mktemp("export-models")
    torch.manual_seed(0)
    classifier = create_classifier("tf_efficientnet_lite0", len(CLASSES), weights=OFFLINE_LITE0)
    save_classifier(root / "c.pt", classifier, name="tf_efficientnet_lite0", classes=CLASSES,
                    image_size=(96, 96), extra={"loss": "bce"})
    segmenter = create_segmenter("Unet", "tu-tf_efficientnet_lite0", len(CLASSES) + 1,
                                 encoder_weights=OFFLINE_LITE0)
    save_segmenter(root / "s.pt", segmenter, arch="Unet", encoder="tu-tf_efficientnet_lite0",
                   classes=CLASSES, image_size=(96, 96))
    return {"classifier": Classifier.from_pretrained(root / "c.pt").save_pretrained(root / "c"),
            "segmenter": Segmenter.from_pretrained(root / "s.pt").save_pretrained(root / "s")}


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("kind", ["classifier", "segmenter"])
def test_export_matches_the_eager_model_on_real_tiles(model_folders, tmp_path, kind, fmt):
    result = export(model=model_folders[kind], output_dir=tmp_path / "out", export={"format": fmt})
    summary = json.loads((tmp_path / "out" / "export.json").read_text())
    assert summary == result.metrics
    assert summary["kind"] == kind and summary["check_tiles"] == 8
    assert summary["max_abs_difference"] <= 1e-4 and summary["max_abs_logit"] > 1

    # independently of the stage: the file on disk against the eager model, another batch size
    model = Classifier.from_pretrained(model_folders[kind]) if kind == "classifier" else \
        Segmenter.from_pretrained(model_folders[kind])
    tiles = reference_tiles((96, 96), 16)[8:11]  # tiles the check did not use
    images = torch.from_numpy(tiles).permute(0, 3, 1, 2).float().div(255).contiguous()
    with torch.no_grad():
        eager = NormalisedModel(model.network, model.mean, model.std)(images)
    exported = load_exported(result.files[summary["file"]], fmt)(images)
    assert exported.shape == eager.shape == ((3, 3) if kind == "classifier" else (3, 4, 96, 96))
    assert float((exported - eager).abs().max()) <= 1e-4
    if kind == "classifier":  # the normalisation is inside: same probabilities as the API's
        np.testing.assert_allclose(torch.sigmoid(exported).numpy(), model.predict(tiles), atol=1e-4)


def test_an_export_above_the_tolerance_is_removed(model_folders, tmp_path, capsys):
    status = main(["export", "--model", str(model_folders["segmenter"]), "--output-dir",
                   str(tmp_path / "out"), "--format", "onnx",
                   "--set", "export.tolerance=1e-12", "--set", "export.check_count=2"])
    assert status == 1
    error = capsys.readouterr().err
    assert "the onnx export differs from the eager model by" in error and "> export.tolerance" in error
    assert not (tmp_path / "out" / "model.onnx").exists()
    assert not (tmp_path / "out" / "export.json").exists()


def test_export_refusals_name_the_fix(model_folders, tmp_path, monkeypatch, capsys):
    assert main(["export", "--output-dir", str(tmp_path / "a")]) == 2
    assert "model is not set" in capsys.readouterr().err
    assert main(["export", "--model", str(model_folders["classifier"]), "--output-dir",
                 str(tmp_path / "b"), "--format", "tflite"]) == 2
    assert "export.format must be one of torchscript, onnx, got 'tflite'" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "nothing"), "--output-dir",
                 str(tmp_path / "c")]) == 1
    assert "model file or folder" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r'needs onnxscript: install the extra with pip install'
                                          r' "segmix-wsss\[onnx\]"'):
        export(model=model_folders["classifier"], output_dir=tmp_path / "d")
    with pytest.raises(ExportError, match="unknown export format"):
        from segmix.models.export import check_format
        check_format("keras")

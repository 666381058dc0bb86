"""Classifier factory, offline ImageNet weights, local weights files, classifier files."""

import pytest
import timm
import torch
import torch.nn.functional as F
from skimage import data

from segmix.models.factory import (
    OFFLINE_LITE0,
    weights_fingerprint,
    create_classifier,
    load_classifier,
    load_weights,
    normalization_of,
    save_classifier,
)


def test_offline_lite0_weights_classify_a_real_photo():
    model = create_classifier("tf_efficientnet_lite0", 1000, weights=OFFLINE_LITE0).eval()
    mean, std = normalization_of(model)
    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float()[None] / 255
    image = F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
    image = (image - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        probabilities = model(image).softmax(dim=1)[0]
    assert int(probabilities.argmax()) == 285  # ImageNet "Egyptian cat"
    assert float(probabilities[285]) == pytest.approx(0.79, abs=0.02)


def test_offline_weights_with_a_new_head_load_the_whole_backbone():
    model = create_classifier("tf_efficientnet_lite0", 6, weights=OFFLINE_LITE0)
    reference = create_classifier("tf_efficientnet_lite0", 1000, weights=OFFLINE_LITE0)
    own, ref = model.state_dict(), reference.state_dict()
    backbone = [k for k in own if not k.startswith("classifier.")]
    assert len(backbone) == 294
    assert all(torch.equal(own[k], ref[k]) for k in backbone)
    assert model.get_classifier().out_features == 6


def test_unknown_model_lists_close_names():
    with pytest.raises(ValueError, match="unknown model 'efficientnet_lite'; closest timm models: .*efficientnet_lite0"):
        create_classifier("efficientnet_lite", 3)


def test_offline_weights_only_fit_lite0():
    with pytest.raises(ValueError, match="fit only 'tf_efficientnet_lite0'"):
        create_classifier("resnet18", 3, weights=OFFLINE_LITE0)
    with pytest.raises(ValueError, match="not both"):
        create_classifier("tf_efficientnet_lite0", 3, pretrained=True, weights=OFFLINE_LITE0)


def test_local_weights_file_round_trip(tmp_path):
    torch.manual_seed(0)
    source = create_classifier("test_efficientnet", 3)
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    same_head = create_classifier("test_efficientnet", 3, weights=str(path))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(),
                                                  same_head.state_dict().values()))
    new_head = create_classifier("test_efficientnet", 5, weights=str(path))
    loaded, kept = load_weights(new_head, str(path))
    assert kept == ["classifier.bias", "classifier.weight"]
    assert loaded == len(source.state_dict()) - 2


def test_wrong_weights_file_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), path)
    with pytest.raises(ValueError, match="do not fit"):
        create_classifier("test_efficientnet", 3, weights=str(path))
    with pytest.raises(FileNotFoundError, match="weights file .*missing.pth not found"):
        create_classifier("test_efficientnet", 3, weights=str(tmp_path / "missing.pth"))


def test_failed_download_explains_the_offline_option(monkeypatch):
    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            raise OSError("Network is unreachable")
        return original(*args, **kwargs)

    original = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="could not fetch pretrained weights.*model.weights"):
        create_classifier("tf_efficientnet_lite0", 3, pretrained=True)


def test_classifier_file_round_trip(tmp_path):
    model = create_classifier("test_efficientnet", 2).eval()
    save_classifier(tmp_path / "c.pt", model, name="test_efficientnet", classes=["a", "b"],
                    image_size=(32, 32))
    loaded, info = load_classifier(tmp_path / "c.pt")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.eval()(x), model(x))
    assert info["classes"] == ["a", "b"] and info["image_size"] == [32, 32]
    torch.save({"x": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a segmix classifier file"):
        load_classifier(tmp_path / "bad.pt")


def test_segmenter_with_the_offline_encoder_loads_every_encoder_tensor():
    from segmix.models.factory import create_segmenter, efficientnet_lite0_state_dict

    model = create_segmenter("Unet", "tu-tf_efficientnet_lite0", 7, encoder_weights=OFFLINE_LITE0)
    encoder = model.encoder.model.state_dict()
    reference = efficientnet_lite0_state_dict()
    assert len(encoder) == 288
    assert all(torch.equal(encoder[k], reference[k]) for k in encoder)
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 7, 64, 64)


def test_segmenter_errors(tmp_path):
    from segmix.models.factory import create_segmenter

    with pytest.raises(ValueError, match="unknown segmentation architecture 'UNet3'"):
        create_segmenter("UNet3", "resnet18", 3)
    with pytest.raises(ValueError, match="unknown timm encoder 'tu-efficientnet_lit0'"):
        create_segmenter("Unet", "tu-efficientnet_lit0", 3)
    with pytest.raises(ValueError, match="fit only encoder 'tu-tf_efficientnet_lite0'"):
        create_segmenter("Unet", "resnet18", 3, encoder_weights=OFFLINE_LITE0)
    path = tmp_path / "encoder.pth"
    torch.save({"conv_stem.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="do not fit tu-tf_efficientnet_lite0"):
        create_segmenter("Unet", "tu-tf_efficientnet_lite0", 3, encoder_weights=str(path))


def test_the_weights_fingerprint_changes_with_any_value_and_only_then():
    model = create_classifier("test_efficientnet", 3)
    same = create_classifier("test_efficientnet", 3)
    same.load_state_dict(model.state_dict())
    assert weights_fingerprint(model) == weights_fingerprint(same)
    with torch.no_grad():
        next(same.parameters()).view(-1)[0] += 1e-3
    assert weights_fingerprint(model) != weights_fingerprint(same)

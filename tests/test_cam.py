"""CAM methods: shapes, raw values on a hand-built model, equality with the grad-cam package,
hooks and modes, shuffle TTA's exact inversion."""

import warnings

import numpy as np
import pytest
import timm
import torch
from torch import nn

from cam import (
    CAM,
    GradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    ShuffleTTA,
    cams_with_tta,
    create_cam,
    normalize_per_class,
)


class PointwiseModel(nn.Module):
    """Features = the input itself; head = global average pool + a known linear layer. Every
    method then has a closed form, and maps are pointwise (a pixel's value depends on it alone)."""

    def __init__(self, weight):
        super().__init__()
        self.features = nn.Identity()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.fill_(0.5)

    def forward_features(self, x):
        return self.features(x)

    def forward_head(self, x):
        return self.fc(x.mean(dim=(-2, -1)))

    def get_classifier(self):
        return self.fc

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


WEIGHT = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, 1.0]])


@pytest.fixture
def images():
    return torch.rand(2, 3, 4, 6, generator=torch.Generator().manual_seed(0))


def test_raw_values_on_a_hand_built_model(images):
    model = PointwiseModel(WEIGHT)
    area = 4 * 6
    linear = torch.einsum("kc,bchw->bkhw", WEIGHT, images)
    assert torch.allclose(CAM(model)(images), linear, atol=1e-6)
    # the gradient of class k w.r.t. A[c, y, x] is W[k, c] / area everywhere
    assert torch.allclose(GradCAM(model)(images), (linear / area).clamp_min(0), atol=1e-6)
    layer = torch.einsum("kc,bchw->bkhw", (WEIGHT / area).clamp_min(0), images).clamp_min(0)
    assert torch.allclose(LayerCAM(model)(images), layer, atol=1e-6)
    g = (WEIGHT / area)[None, :, :, None, None].expand(1, 2, 3, 4, 6)  # [1, K, C, h, w]
    total = images.sum(dim=(-2, -1))[:, None, :, None, None]           # [B, 1, C, 1, 1]
    alpha = torch.where(g != 0, g**2 / (2 * g**2 + total * g**3 + 1e-6), torch.zeros(()))
    weights = (alpha * g.clamp_min(0)).sum(dim=(-2, -1))              # [B, K, C]
    expected = torch.einsum("bkc,bchw->bkhw", weights, images).clamp_min(0)
    assert torch.allclose(GradCAMPlusPlus(model)(images), expected, atol=1e-6)


def test_all_classes_shapes_and_fused_layers():
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=5)
    images = torch.randn(2, 3, 64, 48)
    for name in ("cam", "gradcam", "gradcam++", "layercam"):
        layers = None if name == "cam" else ["blocks.1", "conv_head"]
        maps = create_cam(name, model, layers)(images)
        assert maps.shape == (2, 5, 64, 48) and maps.dtype == torch.float32
        assert torch.isfinite(maps).all()
    per_layer, logits = GradCAM(model, ["blocks.1", "conv_head"]).layer_maps(images)
    assert [m.shape[-2:] for m in per_layer] == [(16, 12), (2, 2)]
    assert logits.shape == (2, 5)


def test_gradcam_equals_the_grad_cam_package():
    from pytorch_grad_cam import GradCAM as ReferenceGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(1)
    model = timm.create_model("test_efficientnet", num_classes=4).eval()
    images = torch.randn(2, 3, 64, 64)
    for layer_name in ("conv_head", "blocks.2"):
        ours = GradCAM(model, [layer_name]).layer_maps(images)[0][0]  # [B, K, h, w]
        layer = model.get_submodule(layer_name)
        with ReferenceGradCAM(model=model, target_layers=[layer]) as reference:
            for k in range(4):
                reference(input_tensor=images, targets=[ClassifierOutputTarget(k)] * 2)
                store = reference.activations_and_grads
                raw = reference.get_cam_image(images, layer, None, store.activations[0].numpy(),
                                              store.gradients[0].numpy(), False)
                expected = np.maximum(raw, 0)  # the package's map before its normalisation
                assert np.abs(ours[:, k].numpy() - expected).max() <= 1e-4 * max(1.0, expected.max())


def test_batched_and_looped_gradients_agree():
    torch.manual_seed(2)
    model = timm.create_model("test_efficientnet", num_classes=3)
    images = torch.randn(2, 3, 64, 64)
    for method in (GradCAM, GradCAMPlusPlus, LayerCAM):
        batched = method(model, ["blocks.1", "conv_head"])(images)
        looped = method(model, ["blocks.1", "conv_head"], batched_gradients=False)(images)
        assert torch.allclose(batched, looped, atol=1e-6)


def test_hooks_removed_and_mode_restored():
    model = timm.create_model("test_efficientnet", num_classes=3)
    images = torch.randn(2, 3, 32, 32)
    for training in (True, False):
        model.train(training)
        GradCAM(model, ["conv_head", "blocks.0"])(images)
        assert all(m.training == training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_eval_mode_makes_maps_independent_of_the_batch():
    torch.manual_seed(3)
    model = timm.create_model("test_efficientnet", num_classes=3).train()
    images = torch.randn(4, 3, 32, 32)
    together = GradCAM(model, ["conv_head"])(images)
    alone = GradCAM(model, ["conv_head"])(images[:1])
    assert torch.allclose(together[:1], alone, atol=1e-5)


def test_bad_arguments():
    model = timm.create_model("test_efficientnet", num_classes=3)
    with pytest.raises(ValueError, match="no layer 'conv_haed'; close names: .*conv_head"):
        GradCAM(model, ["conv_haed"])
    with pytest.raises(ValueError, match="takes no target_layers"):
        CAM(model, ["conv_head"])
    with pytest.raises(ValueError, match="unknown CAM method 'scorecam'"):
        create_cam("scorecam", model)
    with pytest.raises(ValueError, match="unknown fuse"):
        GradCAM(model, fuse="median")
    with pytest.raises(ValueError, match="no forward_features"):
        GradCAM(nn.Sequential(nn.Conv2d(3, 2, 1), nn.Flatten()))


def test_shuffle_tta_inverts_exactly(images):
    model = PointwiseModel(WEIGHT)
    cam = CAM(model)
    plain = cam(images)
    generator = torch.Generator().manual_seed(0)
    for mode in ("batch", "random", "self"):
        tta = cams_with_tta(cam, images, shuffle=ShuffleTTA(patch_size=2, draws=3, mode=mode),
                            generator=generator)
        assert torch.allclose(tta, plain, atol=1e-6)
    flipped = cams_with_tta(cam, images, flips=["horizontal", "vertical"])
    assert torch.allclose(flipped, plain, atol=1e-6)
    scaled = cams_with_tta(cam, images, scales=[1.0, 2.0])
    assert scaled.shape == plain.shape


def test_shuffle_tta_changes_maps_of_a_context_model():
    """With a real network (receptive fields beyond a patch) shuffle TTA gives other maps."""
    torch.manual_seed(4)
    model = timm.create_model("test_efficientnet", num_classes=3)
    images = torch.randn(4, 3, 64, 64)
    cam = GradCAM(model, ["blocks.1"])
    tta = cams_with_tta(cam, images, shuffle=ShuffleTTA(patch_size=16, draws=2),
                        generator=torch.Generator().manual_seed(0))
    assert tta.shape == (4, 3, 64, 64) and not torch.allclose(tta, cam(images))
    with pytest.raises(ValueError, match="unknown flips"):
        cams_with_tta(cam, images, flips=["diagonal"])


def test_normalize_per_class():
    maps = torch.tensor([[[[-1.0, 2.0], [4.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    normed = normalize_per_class(maps)
    assert torch.allclose(normed[0, 0], torch.tensor([[0.0, 0.5], [1.0, 0.0]]), atol=1e-5)
    assert torch.equal(normed[0, 1], torch.zeros(2, 2))


def test_batched_gradients_fall_back_to_a_loop_when_vmap_cannot_batch():
    from pytorch_grad_cam import GradCAM as ReferenceGradCAM

    torch.manual_seed(5)
    model = timm.create_model("test_efficientnet", num_classes=3).eval()
    images = torch.randn(2, 3, 32, 32)
    expected = GradCAM(model, ["conv_head"])(images)
    # the package's gradient hook (a .detach() inside) cannot run under vmap
    with ReferenceGradCAM(model=model, target_layers=[model.conv_head]):
        cam = GradCAM(model, ["conv_head"])
        with pytest.warns(UserWarning, match="batched gradients failed"):
            maps = cam(images)
    assert not cam.batched_gradients
    assert torch.allclose(maps, expected, atol=1e-6)


def test_layer_grids_tell_each_layers_cam_resolution_and_coarse_maps_warn():
    from cam import FINAL_FEATURES, layer_grids
    from segmix.stages.cams import check_resolution

    model = timm.create_model("test_efficientnet", num_classes=3).train()
    grids = layer_grids(model, (64, 64))
    assert model.training  # mode restored
    assert grids["conv_stem"] == (32, 32) and grids[FINAL_FEATURES] == (2, 2)
    assert list(grids).index("blocks.1") < list(grids).index("blocks.2")  # forward order
    with pytest.warns(UserWarning, match=r"final feature map gives 2x2 cells on 64x64 px tiles"
                                         r".* too coarse .*cam.target_layers=\[blocks\.\d\]"):
        assert check_resolution(model, None, (64, 64)) == "final feature map 2x2"
    fine = next(name for name, grid in grids.items() if name.startswith("blocks.") and min(grid) >= 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fine enough layer: no warning
        assert check_resolution(model, [fine], (64, 64)).startswith(fine)

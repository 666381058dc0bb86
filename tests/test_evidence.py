"""The evidence-removal localiser's core: fills, the frozen classifier's features, and a mask head
that learns where a hand-built classifier's evidence lies."""

import pytest
import timm
import torch
from torch import nn

from pseudo_masks.evidence import EvidenceMask, evidence_loss, feature_layers
from pseudo_masks.fill import blur_fill, shuffle_fill


class RedDetector(nn.Module):
    """Class 0 = "red square present": its logit is the mean redness (red minus green) of the
    image; class 1 the opposite. Feature maps at strides 8 and 16 are average-pooled images."""

    feature_info = [{"module": "pool8", "reduction": 8, "num_chs": 3},
                    {"module": "pool16", "reduction": 16, "num_chs": 3}]

    def __init__(self) -> None:
        super().__init__()
        self.pool8, self.pool16 = nn.AvgPool2d(8), nn.AvgPool2d(16)
        self.scale = nn.Parameter(torch.tensor(40.0))

    def forward(self, x):
        self.pool8(x), self.pool16(x)  # the feature maps the mask head reads (hooks)
        redness = torch.relu(x[:, 0] - x[:, 1]).mean(dim=(1, 2))
        logit = self.scale * (redness - 0.02)
        return torch.stack([logit, -logit], dim=1)


def red_square_images(count: int, size: int = 32, square: int = 12, seed: int = 0):
    """Grey noisy images; the first half carry a red square at a random place (class 0)."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.5 + 0.05 * torch.randn(count, 3, size, size, generator=generator)
    where = torch.zeros(count, 1, size, size)
    for i in range(count // 2):
        top, left = torch.randint(0, size - square + 1, (2,), generator=generator).tolist()
        images[i, 0, top:top + square, left:left + square] = 1.0
        images[i, 1:, top:top + square, left:left + square] = 0.1
        where[i, 0, top:top + square, left:left + square] = 1
    targets = torch.zeros(count, 2)
    targets[: count // 2, 0] = 1
    targets[count // 2:, 1] = 1
    return images, targets, where


def test_blur_fill_keeps_a_constant_image_and_smooths_noise():
    constant = torch.full((2, 3, 20, 24), 0.7)
    assert torch.allclose(blur_fill(constant, 4.0), constant, atol=1e-6)
    noise = torch.randn(2, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    blurred = blur_fill(noise, 4.0)  # radius 12 > the 20 px image's 19 allowed: clamped
    assert blurred.shape == noise.shape and blurred.std() < 0.3 * noise.std()
    assert torch.equal(blur_fill(noise, 0.0), noise)


def test_shuffle_fill_takes_every_patch_from_another_image():
    images = torch.stack([torch.full((3, 16, 16), float(i)) for i in range(4)])
    filled = shuffle_fill(images, 8, torch.Generator().manual_seed(0))
    for i in range(4):
        for top in (0, 8):
            for left in (0, 8):
                patch = filled[i, :, top:top + 8, left:left + 8]
                assert patch.unique().numel() == 1 and patch[0, 0, 0] != i
    with pytest.raises(ValueError, match="batch of 2"):
        shuffle_fill(images[:1], 8)


def test_feature_layers_are_the_stride_8_and_16_maps():
    model = timm.create_model("test_efficientnet", num_classes=3)
    assert feature_layers(model) == [("blocks.2", 32), ("blocks.3", 48)]
    with pytest.raises(ValueError, match="no timm feature_info"):
        feature_layers(nn.Linear(2, 2))


def test_the_head_trains_and_saves_alone():
    torch.manual_seed(0)
    classifier = timm.create_model("test_efficientnet", num_classes=3).eval()
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    head = EvidenceMask(classifier)
    images = torch.randn(4, 3, 64, 48)
    masks = head(images)
    assert masks.shape == (4, 1, 64, 48) and 0 <= masks.min() and masks.max() <= 1
    assert not any(key.startswith("classifier") for key in head.state_dict())
    targets = torch.eye(3)[[0, 1, 2, 0]]
    loss, parts = evidence_loss(head, images, targets, torch.ones(4, 1, 64, 48),
                                blur_fill(images, 4.0), prior=torch.full((3,), 1 / 3),
                                softmax=True, area_weight=1.0)
    loss.backward()
    assert set(parts) == {"keep", "remove", "area"} and torch.isfinite(loss)
    assert all(p.grad is not None for p in head.parameters())
    assert all(not p.requires_grad for p in classifier.parameters())
    assert all(torch.equal(before[k], v) for k, v in classifier.state_dict().items())


def test_the_mask_finds_where_the_classifier_sees_its_class():
    """Against a classifier that sees class 0 in red squares, the trained mask covers the squares
    and little else: the objective localises evidence, not colour by hand."""
    torch.manual_seed(0)
    images, targets, where = red_square_images(16)
    head = EvidenceMask(RedDetector())
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(1)
    for _ in range(150):
        loss, _ = evidence_loss(head, images, targets, torch.ones_like(where),
                                shuffle_fill(images, 8, generator), prior=torch.tensor([0.5, 0.5]),
                                softmax=True, area_weight=2.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        masks = head(images[:8])
    inside = masks[where[:8] > 0].mean()
    outside = masks[where[:8] == 0].mean()
    assert inside > 0.8 and inside - outside > 0.4, (float(inside), float(outside))

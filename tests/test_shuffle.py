"""Tests of the patch-shuffle kernel: properties over shapes, dtypes, modes and ratios."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from segmix.shuffle import (
    MODES,
    PatchShuffle,
    apply_params,
    area_weights,
    invert_params,
    mix_labels,
    sample_params,
)

DTYPES = [torch.float32, torch.float16, torch.float64, torch.int64, torch.uint8, torch.bool]


def reference_apply(x, params):
    """Slow, obviously correct loop: output patch (b, n) is input patch params.source[b, n]."""
    batch, n = params.source.shape
    _, gw = params.grid
    ph, pw = params.patch_size
    out = torch.empty_like(x)
    for b in range(batch):
        for pos in range(n):
            sb, sn = divmod(int(params.source[b, pos]), n)
            si, sj = divmod(sn, gw)
            i, j = divmod(pos, gw)
            out[b, ..., i * ph:(i + 1) * ph, j * pw:(j + 1) * pw] = \
                x[sb, ..., si * ph:(si + 1) * ph, sj * pw:(sj + 1) * pw]
    return out


def patches(x, params):
    """All patches of a batch as a sorted list of tuples (the batch's multiset of patches)."""
    ph, pw = params.patch_size
    gh, gw = params.grid
    b = x.shape[0]
    blocks = x.reshape(b, -1, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5).reshape(b * gh * gw, -1)
    return sorted(tuple(row.tolist()) for row in blocks)


def random_tensor(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    return torch.randint(0, 200, shape, generator=g).to(dtype)


@st.composite
def cases(draw):
    mode = draw(st.sampled_from(MODES))
    group_size = draw(st.integers(1, 3)) if mode == "group" else None
    batch = draw(st.integers(1, 6)) if group_size is None else group_size * draw(st.integers(1, 3))
    ph, pw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    gh, gw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    lead = draw(st.sampled_from([(), (1,), (3,), (2, 2)]))
    return dict(
        mode=mode, group_size=group_size, batch=batch, patch=(ph, pw), height=gh * ph,
        width=gw * pw, lead=lead, ratio=draw(st.floats(0, 1)), dtype=draw(st.sampled_from(DTYPES)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def draw_params(case):
    return sample_params(
        case["batch"], case["height"], case["width"], patch_size=case["patch"],
        fix_ratio=case["ratio"], mode=case["mode"], group_size=case["group_size"],
        generator=torch.Generator().manual_seed(case["seed"]),
    )


def make_input(case):
    shape = (case["batch"], *case["lead"], case["height"], case["width"])
    return random_tensor(shape, case["dtype"], case["seed"] + 1)


@given(cases())
def test_apply_matches_reference_and_inverts_exactly(case):
    params = draw_params(case)
    x = make_input(case)
    y = apply_params(x, params)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert torch.equal(y, reference_apply(x, params))
    assert torch.equal(invert_params(y, params), x)
    assert torch.equal(apply_params(invert_params(x, params), params), x)


@given(cases())
def test_multiset_of_patches_is_preserved(case):
    params = draw_params(case)
    x = make_input(case)
    assert patches(apply_params(x, params), params) == patches(x, params)


@given(cases())
def test_source_is_a_permutation_with_mode_semantics(case):
    params = draw_params(case)
    batch, n = params.source.shape
    assert sorted(params.source.flatten().tolist()) == list(range(batch * n))
    assert int(params.fixed.sum()) == int(round(case["ratio"] * n))
    images = torch.arange(batch).view(-1, 1)
    positions = torch.arange(n).view(1, -1)
    src_image, src_pos = params.source_image, params.source % n
    # fixed positions are untouched in every mode
    fixed = params.fixed.view(1, -1).expand(batch, n)
    assert torch.equal(src_image[fixed], images.expand(batch, n)[fixed])
    assert torch.equal(src_pos[fixed], positions.expand(batch, n)[fixed])
    if case["mode"] in ("batch", "group"):  # in place: a patch keeps its absolute location
        assert torch.equal(src_pos, positions.expand(batch, n))
    if case["mode"] == "group":
        g = case["group_size"]
        assert torch.equal(src_image // g, (images // g).expand(batch, n))
    if case["mode"] == "self":
        assert torch.equal(src_image, images.expand(batch, n))
    if case["mode"] in ("random", "self"):  # positions move only among the non-fixed ones
        assert params.fixed[src_pos].eq(params.fixed.view(1, -1)).all()


@given(cases())
def test_fixed_positions_are_untouched(case):
    params = draw_params(case)
    x = make_input(case)
    y = apply_params(x, params)
    ph, pw = params.patch_size
    gh, gw = params.grid
    keep = params.fixed.view(gh, gw).repeat_interleave(ph, 0).repeat_interleave(pw, 1)
    assert torch.equal(y[..., keep], x[..., keep])


@given(cases())
def test_image_and_mask_stay_aligned(case):
    params = draw_params(case)
    images = random_tensor((case["batch"], 3, case["height"], case["width"]), torch.float32,
                           case["seed"])
    masks = (images[:, 0] > 0.3).long() + (images[:, 1] > 0).long()  # [B, H, W] from the pixels
    shuffled_images = apply_params(images, params)
    shuffled_masks = apply_params(masks, params)
    expected = (shuffled_images[:, 0] > 0.3).long() + (shuffled_images[:, 1] > 0).long()
    assert torch.equal(shuffled_masks, expected)


@given(cases(), st.integers(1, 5))
def test_single_label_targets_are_area_fractions(case, num_classes):
    params = draw_params(case)
    labels = torch.randint(0, num_classes, (case["batch"],),
                           generator=torch.Generator().manual_seed(case["seed"]))
    mixed = mix_labels(labels, params, num_classes)
    assert mixed.shape == (case["batch"], num_classes)
    assert torch.allclose(mixed.sum(dim=1), torch.ones(case["batch"]))
    n = params.num_patches
    for b in range(case["batch"]):
        counts = torch.bincount(labels[params.source_image[b]], minlength=num_classes)
        assert torch.allclose(mixed[b], counts.float() / n)
    if case["mode"] == "self":
        assert torch.equal(mixed, torch.nn.functional.one_hot(labels, num_classes).float())


@given(cases(), st.integers(1, 5))
def test_multi_hot_targets_area_and_presence(case, num_classes):
    params = draw_params(case)
    g = torch.Generator().manual_seed(case["seed"])
    labels = (torch.rand(case["batch"], num_classes, generator=g) > 0.5).float()
    area = mix_labels(labels, params, num_classes, mode="area")
    presence = mix_labels(labels, params, num_classes, mode="presence")
    for b in range(case["batch"]):
        sources = labels[params.source_image[b]]  # [N, K]
        assert torch.allclose(area[b], sources.mean(dim=0))
        assert torch.equal(presence[b], (sources.sum(dim=0) > 0).float())
    assert ((area >= 0) & (area <= 1)).all()


def test_batch_of_one_is_identity():
    x = torch.randn(1, 3, 32, 48)
    for mode in ("batch", "group"):
        params = sample_params(1, 32, 48, patch_size=(8, 16), fix_ratio=0.0, mode=mode,
                               group_size=1 if mode == "group" else None)
        assert torch.equal(apply_params(x, params), x)
        assert torch.equal(mix_labels(torch.tensor([2]), params, 3), torch.tensor([[0.0, 0, 1]]))


def test_odd_batch_and_zero_ratio_moves_patches_across_images():
    params = sample_params(5, 64, 64, patch_size=16, fix_ratio=0.0,
                           generator=torch.Generator().manual_seed(3))
    assert not params.fixed.any()
    assert (params.source_image != torch.arange(5).view(-1, 1)).float().mean() > 0.5


def test_deterministic_given_generator_and_no_global_state():
    def draw(seed):
        return sample_params(8, 64, 64, patch_size=16, fix_ratio=0.3, mode="random",
                             generator=torch.Generator().manual_seed(seed)).source

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))
    images, labels = torch.zeros(8, 3, 64, 64), torch.zeros(8, dtype=torch.long)
    state = torch.random.get_rng_state()
    sample_params(8, 64, 64, patch_size=16, fix_ratio=0.3)
    PatchShuffle(16, 0.3, "batch", 4, p=0.5)(images, labels)
    assert torch.equal(state, torch.random.get_rng_state())


def test_non_contiguous_input_and_out_buffer():
    x = torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last)
    params = sample_params(4, 32, 32, patch_size=8, fix_ratio=0.25,
                           generator=torch.Generator().manual_seed(0))
    expected = reference_apply(x.contiguous(), params)
    assert torch.equal(apply_params(x, params), expected)
    out = torch.empty(4, 3, 32, 32)
    assert apply_params(x, params, out=out) is out
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="out must match"):
        apply_params(x, params, out=torch.empty(4, 3, 32, 32, dtype=torch.float64))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(height=225), ValueError, "height 225 is not a multiple of patch height 16"),
        (dict(width=100, patch_size=(16, 32)), ValueError, "width 100 is not a multiple of patch width 32"),
        (dict(fix_ratio=1.5), ValueError, r"fix_ratio must be in \[0, 1\]"),
        (dict(fix_ratio=-0.1), ValueError, r"fix_ratio must be in \[0, 1\]"),
        (dict(mode="swap"), ValueError, "unknown shuffle mode 'swap'; valid modes: batch, group"),
        (dict(mode="group"), ValueError, "needs group_size"),
        (dict(mode="group", group_size=3), ValueError, "group_size 3 does not divide the batch size 8"),
        (dict(patch_size=0), ValueError, "patch_size must be positive"),
        (dict(patch_size=(16, 16, 16)), TypeError, "patch_size must be an int or a"),
        (dict(batch_size=0), ValueError, "batch_size must be a positive int"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, message):
    args = dict(batch_size=8, height=224, width=224, patch_size=16, fix_ratio=0.5, mode="batch")
    args.update(kwargs)
    with pytest.raises(error, match=message):
        sample_params(args.pop("batch_size"), args.pop("height"), args.pop("width"), **args)


def test_bad_tensors_and_labels_raise_clear_errors():
    params = sample_params(4, 32, 32, patch_size=16, fix_ratio=0.5)
    with pytest.raises(ValueError, match=r"batch/height/width \(4, 32, 16\)"):
        apply_params(torch.zeros(4, 3, 32, 16), params)
    with pytest.raises(ValueError, match=r"\[B, \.\.\., H, W\]"):
        apply_params(torch.zeros(32, 32), params)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        apply_params([[0.0]], params)
    with pytest.raises(ValueError, match=r"shape \[B, K\] = \[4, 3\], got \(4, 2\)"):
        mix_labels(torch.zeros(4, 2), params, 3)
    with pytest.raises(ValueError, match="labels have 3 entries for a batch of 4"):
        mix_labels(torch.zeros(3, dtype=torch.long), params, 3)
    with pytest.raises(TypeError, match="must be integers"):
        mix_labels(torch.zeros(4), params, 3)
    with pytest.raises(ValueError, match=r"class indices must be in \[0, 3\)"):
        mix_labels(torch.tensor([0, 1, 2, 3]), params, 3)
    with pytest.raises(ValueError, match="class indices \\[B\\] or multi-hot"):
        mix_labels(torch.zeros(4, 3, 1), params, 3)
    with pytest.raises(ValueError, match="unknown label mode"):
        mix_labels(torch.zeros(4, dtype=torch.long), params, 3, mode="max")


def test_patch_shuffle_op_images_labels_masks():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 48, 64, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    masks = torch.randint(0, 3, (6, 48, 64), generator=g)
    op = PatchShuffle((16, 32), 0.25, "random", num_classes=3)
    out_images, targets, out_masks, params = op(images, labels, masks, generator=g)
    assert torch.equal(out_images, apply_params(images, params))
    assert torch.equal(out_masks, apply_params(masks, params))
    assert torch.allclose(targets, mix_labels(labels, params, 3))
    # a [B, 1, H, W] mask works too
    _, _, channel_masks, params = op(images, labels, masks[:, None], generator=g)
    assert torch.equal(channel_masks, apply_params(masks[:, None], params))


def test_patch_shuffle_switches_and_settable_attributes():
    images = torch.randn(4, 3, 32, 32)
    labels = torch.tensor([0, 1, 1, 0])
    op = PatchShuffle(16, 0.5, "batch", num_classes=2)
    op.enabled = False
    result = op(images, labels)
    assert result.images is images and result.params is None
    assert torch.equal(result.labels, torch.nn.functional.one_hot(labels, 2).float())
    op.enabled, op.p = True, 0.0
    assert op(images, labels).params is None
    op.p = 1.0
    op.patch_size, op.fix_ratio = 8, 0.0
    assert op(images, labels).params.patch_size == (8, 8)
    with pytest.raises(ValueError, match=r"fix_ratio must be in \[0, 1\]"):
        op.fix_ratio = 2.0
    with pytest.raises(ValueError, match=r"p must be a probability"):
        op.p = 1.5
    with pytest.raises(ValueError, match="masks have batch/height/width"):
        op(images, labels, torch.zeros(4, 16, 32, dtype=torch.long))
    with pytest.raises(ValueError, match=r"images must be a \[B, C, H, W\] tensor"):
        op(images[0], labels)


def test_area_targets_never_exceed_one():
    # regression: nine shares of 1/9 summed in float32 gave 1.0000001
    params = sample_params(6, 3, 3, patch_size=1, fix_ratio=0.125, mode="group", group_size=3,
                           generator=torch.Generator().manual_seed(1966))
    labels = torch.tensor([[1.0, 0.0]] * 6)
    area = mix_labels(labels, params, 2)
    assert torch.equal(area, labels)
    for seed in range(50):
        params = sample_params(7, 9, 9, patch_size=3, fix_ratio=0.0,
                               generator=torch.Generator().manual_seed(seed))
        assert mix_labels(torch.ones(7, 3), params, 3).max() <= 1.0


def test_area_weights_rows_sum_to_one():
    params = sample_params(6, 32, 32, patch_size=8, fix_ratio=0.2, mode="random")
    assert torch.allclose(area_weights(params).sum(dim=1), torch.ones(6))


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
def test_cuda_matches_cpu(mode):
    x = torch.randn(8, 5, 64, 96)
    params = sample_params(8, 64, 96, patch_size=(16, 32), fix_ratio=0.3, mode=mode,
                           group_size=2, generator=torch.Generator().manual_seed(1))
    on_gpu = params.to("cuda")
    y = apply_params(x.cuda(), on_gpu)
    assert y.device.type == "cuda"
    assert torch.equal(y.cpu(), apply_params(x, params))
    assert torch.equal(invert_params(y, on_gpu).cpu(), x)
    labels = torch.arange(8).cuda() % 3
    assert torch.allclose(mix_labels(labels, on_gpu, 3).cpu(), mix_labels(labels.cpu(), params, 3))
    op = PatchShuffle(16, 0.5, mode, num_classes=3, group_size=2)
    result = op(x.cuda(), labels, torch.zeros(8, 64, 96, device="cuda"))
    assert result.params.device.type == "cuda" and result.labels.device.type == "cuda"


@pytest.mark.parametrize("mode", MODES)
def test_patch_gather_equals_row_gather(mode):
    """The whole-patch gather CUDA uses gives the CPU's row gather, value for value."""
    from segmix.shuffle.apply import _patch_view

    x = torch.randn(4, 2, 3, 32, 48)
    params = sample_params(4, 32, 48, patch_size=(8, 16), fix_ratio=0.25, mode=mode,
                           group_size=2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(_patch_view(x, params, 6).reshape(x.shape), apply_params(x, params))

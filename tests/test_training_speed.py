"""The speed settings of the training loop: bf16 autocast with depthwise convolutions in float32,
channels-last, torch.compile; each keeps training correct (the numbers are in docs/benchmarks.md)."""

import copy

import pytest
import torch
from timm.layers import Conv2dSame
from torch import nn

from segmix.cli import main
from segmix.models.precision import autocast_dtype, depthwise_convs_in_float32, same_padding

from synthetic import write_csv_dataset


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pointwise = nn.Conv2d(3, 8, 1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)  # grouped, not depthwise

    def forward(self, x):
        return self.grouped(self.depthwise(self.pointwise(x)))


def test_depthwise_convolutions_run_in_float32_under_bf16_autocast():
    torch.manual_seed(0)
    block, reference = Block(), Block()
    reference.load_state_dict(block.state_dict())
    keys = list(block.state_dict())
    assert depthwise_convs_in_float32(block) == 1 and list(block.state_dict()) == keys
    x = torch.randn(2, 3, 8, 8)
    seen = {}
    block.depthwise.register_forward_hook(lambda m, i, o: seen.update(dtype=o.dtype, out=o))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
        hidden = reference.pointwise(x)
    # computed in float32 from the bf16 input, handed on in the input's precision (bf16)
    expected = reference.depthwise(hidden.float()).to(torch.bfloat16)
    assert seen["dtype"] == torch.bfloat16 and torch.equal(seen["out"], expected)
    out.float().sum().backward()
    assert block.depthwise.weight.grad is not None and block.depthwise.weight.grad.dtype == torch.float32
    with torch.no_grad():  # outside autocast nothing changes
        assert torch.equal(block(x), reference(x))


@pytest.mark.parametrize("size", [(9, 8), (8, 7)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_tensorflow_same_depthwise_convolution_pads_and_casts_in_one_step(size, layout):
    """timm's Conv2dSame (tf_efficientnet_*) pads unevenly before convolving; the float32 path
    gives the same values and gradients as timm's own forward on the float32 input."""
    torch.manual_seed(0)
    conv = Conv2dSame(6, 6, 3, stride=2, groups=6)
    reference = copy.deepcopy(conv)
    assert depthwise_convs_in_float32(conv) == 1
    x = torch.randn(2, 6, *size).to(memory_format=layout).bfloat16().requires_grad_()
    x_ref = x.detach().float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    expected = reference(x_ref)
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape == (2, 6, (size[0] + 1) // 2, (size[1] + 1) // 2)
    assert torch.equal(out, expected.to(torch.bfloat16))
    grad = torch.randn(out.shape)
    out.backward(grad.bfloat16())
    expected.backward(grad.bfloat16().float())
    assert x.grad.dtype == torch.bfloat16 and torch.equal(x.grad, x_ref.grad.bfloat16())
    assert x.grad.is_contiguous(memory_format=layout)
    assert torch.allclose(conv.weight.grad, reference.weight.grad)


def test_same_padding_puts_the_odd_pixel_after():
    assert same_padding(224, 3, 2, 1) == (0, 1)  # 112 outputs
    assert same_padding(225, 3, 2, 1) == (1, 1)
    assert same_padding(14, 5, 1, 1) == (2, 2)
    assert same_padding(7, 1, 1, 1) == (0, 0)


def test_amp_means_fp16_on_cuda_bf16_on_a_cpu_with_native_bf16_else_float32():
    assert autocast_dtype(torch.device("cpu"), False) is None
    assert autocast_dtype(torch.device("cuda"), True) == torch.float16
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert autocast_dtype(torch.device("cpu"), True) == (torch.bfloat16 if native else None)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_csv_dataset(tmp_path_factory.mktemp("tiles"), per_class=4, size=32)


def settings(csv_path, *extra):
    values = ["data.classes=[A, B, C]", f"data.train.path={csv_path}", f"data.val.path={csv_path}",
              "data.image_size=32", "model.name=test_efficientnet", "model.weights=null",
              "train.epochs=1", "train.batch_size=4", "train.num_workers=0",
              "augment.curriculum.patch_sizes=[16, 8]", *extra]
    return [part for value in values for part in ("--set", value)]


@pytest.mark.parametrize("speed", [
    ["train.amp=false", "train.channels_last=false"],  # float32, contiguous: the old settings
    ["train.compile=true"],
], ids=["float32-contiguous", "compiled"])
def test_training_runs_with_each_speed_setting(dataset, tmp_path, capsys, speed):
    out = tmp_path / "run"
    assert main(["train-cls", "--output-dir", str(out), *settings(dataset, *speed)]) == 0
    log = capsys.readouterr().out
    assert ("float32)" in log) if "train.amp=false" in speed else ("compiled" in log)
    assert (out / "classifier.pt").is_file()

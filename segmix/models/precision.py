"""Mixed precision for training: which autocast type ``amp`` means on a device, and depthwise
convolutions computed in float32 under bfloat16 autocast (docs/benchmarks.md, "Training
throughput")."""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from torch import nn

__all__ = ["autocast_dtype", "depthwise_convs_in_float32", "same_padding"]


def autocast_dtype(device: torch.device, amp: bool) -> Optional[torch.dtype]:
    """The mixed-precision type ``amp`` means on ``device``: float16 on CUDA, bfloat16 on a CPU whose
    oneDNN has native bf16 (AMX, AVX-512 BF16; emulated bf16 would be slower than float32), else
    ``None`` (float32)."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and torch.backends.mkldnn.is_available() \
            and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


def depthwise_convs_in_float32(model: nn.Module) -> int:
    """Compute every depthwise convolution of ``model`` in float32, even under bfloat16 autocast,
    returning its output in its input's precision; returns how many. oneDNN's bf16 depthwise
    kernels (forward + backward) take 1.5-3x the time of its float32 ones on this project's CPU,
    while its bf16 dense convolutions are the fast part (benchmarks/train_speed.py). A
    TensorFlow-"same" convolution (timm's ``Conv2dSame``, as in ``tf_efficientnet_*``) pads and
    casts its input in one copy instead of two. Weights and state dict are unchanged."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.groups > 1 \
                and module.groups == module.in_channels == module.out_channels:
            if isinstance(module, Conv2dSame):
                module.forward = _same_conv_in_float32(module)
            else:
                module.forward = _float32_forward(module.forward)
            count += 1
    return count


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> Tuple[int, int]:
    """(before, after) zero padding of TensorFlow's "SAME" convolution along one axis of ``size``
    pixels: ``ceil(size / stride)`` outputs, the odd pixel of padding after."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _float32_forward(forward: Callable[[torch.Tensor], torch.Tensor]):
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return forward(x.float()).to(x.dtype)
    return run


def _same_conv_in_float32(conv: nn.Conv2d):
    def run(x: torch.Tensor) -> torch.Tensor:
        pads = (*same_padding(x.shape[-2], conv.kernel_size[0], conv.stride[0], conv.dilation[0]),
                *same_padding(x.shape[-1], conv.kernel_size[1], conv.stride[1], conv.dilation[1]))
        with torch.autocast(x.device.type, enabled=False):
            padded = _PadInFloat32.apply(x, pads)
            out = F.conv2d(padded, conv.weight, conv.bias, conv.stride, 0, conv.dilation,
                           conv.groups)
        return out.to(x.dtype)
    return run


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and not x.is_contiguous() \
        and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


class _PadInFloat32(torch.autograd.Function):
    """Zero padding ``(top, bottom, left, right)`` and a cast to float32 in one copy (forward), and
    the cropped gradient cast back in one copy (backward); only the border is zeroed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, pads: Tuple[int, int, int, int]) -> torch.Tensor:
        top, bottom, left, right = pads
        height, width = x.shape[-2:]
        out = torch.empty((*x.shape[:-2], height + top + bottom, width + left + right),
                          dtype=torch.float32, device=x.device, memory_format=_layout(x))
        out[..., :top, :].zero_()
        out[..., top + height:, :].zero_()
        out[..., top:top + height, :left].zero_()
        out[..., top:top + height, left + width:].zero_()
        out[..., top:top + height, left:left + width].copy_(x)
        ctx.crop, ctx.dtype = (top, height, left, width), x.dtype
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        top, height, left, width = ctx.crop
        inner = grad[..., top:top + height, left:left + width]
        return inner.to(ctx.dtype, memory_format=_layout(grad)), None

"""The CAM pipeline shared by every method: hooks, forward, all-class gradients, fusion.

A method overrides one function, :meth:`BaseCAM.combine`, which turns one layer's activations
``[B, C, h, w]`` (and, for gradient methods, the gradients of every class score ``[B, K, C, h, w]``)
into raw maps ``[B, K, h, w]``. Everything else is here:

* target layers by name (``model.get_submodule``), several layers fused after upsampling;
  without target layers, the final feature map of a timm-style model
  (``forward_features`` -> ``forward_head``), where the backward pass only crosses the head;
* **all K classes from one forward pass**: the gradients of the K class scores come from a single
  batched ``torch.autograd.grad(..., is_grads_batched=True)`` call (vmap over the classes);
* hooks are removed by a context manager and the model's train/eval mode is restored afterwards.

Maps are **raw** (not normalised per image), so maps of different images and classes stay
comparable; :func:`normalize_per_class` scales them when a consumer needs ``[0, 1]``.
"""

from __future__ import annotations

import difflib
import warnings
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BaseCAM", "normalize_per_class", "model_mode", "layer_grids", "FUSIONS",
           "FINAL_FEATURES"]

FUSIONS = ("mean", "max")
FINAL_FEATURES = "final feature map"  # what target_layers=None explains (forward_features)


def normalize_per_class(cams: Tensor, eps: float = 1e-6) -> Tensor:
    """Scale each map ``[B, K, H, W]`` to ``[0, 1]``: negatives clipped, divided by its maximum."""
    positive = cams.clamp_min(0)
    peak = positive.amax(dim=(-2, -1), keepdim=True)
    return positive / (peak + eps)


@contextmanager
def model_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Put ``model`` in train or eval mode for the block, then restore the mode it had (per
    module, so a partly frozen model comes back exactly as it was)."""
    modes = {module: module.training for module in model.modules()}
    model.train(training)
    try:
        yield model
    finally:
        for module, mode in modes.items():
            module.training = mode


def layer_grids(model: nn.Module, image_size: Tuple[int, int],
                max_depth: int = 2) -> Dict[str, Tuple[int, int]]:
    """The ``(h, w)`` grid of every module (named with at most ``max_depth`` parts, e.g.
    ``blocks.4``) whose output is a feature map, for one ``image_size`` input, in forward order;
    plus :data:`FINAL_FEATURES` for a timm-style model. One forward of a zero image, no gradients,
    the model's mode restored: the resolution a CAM of each layer would have."""
    modules = {name: module for name, module in model.named_modules()
               if name and name.count(".") < max_depth}
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    image = torch.zeros(1, 3, *image_size, device=device)
    grids: Dict[str, Tuple[int, int]] = {}

    def record(name: str):
        def hook(_module, _inputs, output) -> None:
            if isinstance(output, Tensor) and output.dim() == 4:
                grids.setdefault(name, tuple(output.shape[-2:]))
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in modules.items()]
    try:
        with model_mode(model, False), torch.no_grad():
            if hasattr(model, "forward_features"):
                grids[FINAL_FEATURES] = tuple(model.forward_features(image).shape[-2:])
            else:
                model(image)
    finally:
        for handle in handles:
            handle.remove()
    return grids


@contextmanager
def _capture_outputs(modules: Dict[str, nn.Module]) -> Iterator[Dict[str, Tensor]]:
    store: Dict[str, Tensor] = {}
    handles = []
    for name, module in modules.items():
        def hook(_module, _inputs, output, name=name):
            if not isinstance(output, Tensor):
                raise TypeError(f"target layer {name!r} returns {type(output).__name__}, not a"
                                " tensor; choose a layer with a [B, C, h, w] output")
            store[name] = output
        handles.append(module.register_forward_hook(hook))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


class BaseCAM:
    """Raw class activation maps for all classes of a batch.

    Args:
        model: a classifier returning logits ``[B, K]``.
        target_layers: module names (``"blocks.5"``, ``"conv_head"``) whose outputs are explained;
            ``None`` uses the final feature map (needs ``forward_features`` / ``forward_head``).
        fuse: how maps of several layers are combined after upsampling (``mean`` or ``max``).
        eval_mode: compute in eval mode (BatchNorm statistics, no dropout). The model's own mode
            is restored afterwards either way.
        batched_gradients: one vmapped backward for all classes; ``False`` loops over classes
            (same result, for models with an op that vmap cannot batch).
    """

    needs_gradients = True

    def __init__(self, model: nn.Module, target_layers: Optional[Sequence[str]] = None, *,
                 fuse: str = "mean", eval_mode: bool = True, batched_gradients: bool = True) -> None:
        if fuse not in FUSIONS:
            raise ValueError(f"unknown fuse {fuse!r}; valid: {', '.join(FUSIONS)}")
        self.model, self.fuse, self.eval_mode = model, fuse, eval_mode
        self.batched_gradients = batched_gradients
        self.target_layers = list(target_layers) if target_layers else None
        self.modules = self._resolve(self.target_layers) if self.target_layers else {}
        if self.target_layers is None and not (hasattr(model, "forward_features")
                                               and hasattr(model, "forward_head")):
            raise ValueError(f"{type(model).__name__} has no forward_features/forward_head: name"
                             " the target_layers to explain")

    def _resolve(self, names: List[str]) -> Dict[str, nn.Module]:
        modules = {}
        known = [name for name, _ in self.model.named_modules() if name]
        for name in names:
            try:
                modules[name] = self.model.get_submodule(name)
            except AttributeError:
                close = difflib.get_close_matches(name, known, n=6, cutoff=0.4)
                raise ValueError(f"model has no layer {name!r}; close names: {close}") from None
        return modules

    # -- what a method overrides -------------------------------------------------------------
    def combine(self, activations: Tensor, gradients: Optional[Tensor]) -> Tensor:
        """``[B, C, h, w]`` activations (+ ``[B, K, C, h, w]`` gradients) -> ``[B, K, h, w]``."""
        raise NotImplementedError

    # -- pipeline ------------------------------------------------------------------------------
    def _forward(self, images: Tensor) -> Tuple[Tensor, List[Tensor]]:
        if self.target_layers is None:
            features = self.model.forward_features(images)
            features = features.detach().requires_grad_(self.needs_gradients)
            return self.model.forward_head(features), [features]
        with _capture_outputs(self.modules) as store:
            logits = self.model(images.detach().requires_grad_(self.needs_gradients))
        return logits, [store[name] for name in self.target_layers]

    def _class_gradients(self, logits: Tensor, activations: List[Tensor]) -> List[Tensor]:
        """d logits[b, k] / d activations[b], for every class k: ``[B, K, C, h, w]`` per layer."""
        batch, classes = logits.shape
        if self.batched_gradients:
            selectors = torch.eye(classes, device=logits.device, dtype=logits.dtype)
            selectors = selectors.unsqueeze(1).expand(classes, batch, classes)
            try:
                grads = torch.autograd.grad(logits, activations, grad_outputs=selectors,
                                            is_grads_batched=True, retain_graph=True)
                return [g.transpose(0, 1) for g in grads]
            except RuntimeError as error:  # an op or a tensor hook that vmap cannot batch
                warnings.warn(f"batched gradients failed ({str(error).splitlines()[0]}); computing"
                              " them class by class (same maps, slower). Pass"
                              " batched_gradients=False to skip this attempt.", stacklevel=3)
                self.batched_gradients = False
        per_class = [torch.autograd.grad(logits[:, k].sum(), activations, retain_graph=True)
                     for k in range(classes)]
        return [torch.stack([g[i] for g in per_class], dim=1) for i in range(len(activations))]

    def layer_maps(self, images: Tensor) -> Tuple[List[Tensor], Tensor]:
        """Raw maps ``[B, K, h, w]`` of each target layer at its own resolution, and the logits."""
        if images.dim() != 4:
            raise ValueError(f"images must be [B, C, H, W], got {tuple(images.shape)}")
        with model_mode(self.model, not self.eval_mode), torch.enable_grad():
            logits, activations = self._forward(images)
            if logits.dim() != 2:
                raise ValueError(f"the model must return logits [B, K], got {tuple(logits.shape)}")
            grads = (self._class_gradients(logits, activations) if self.needs_gradients
                     else [None] * len(activations))
            maps = [self.combine(a.detach(), None if g is None else g.detach())
                    for a, g in zip(activations, grads)]
        return maps, logits.detach()

    def __call__(self, images: Tensor) -> Tensor:
        """Raw maps ``[B, K, H, W]`` at the input size, fused over the target layers."""
        maps, _ = self.layer_maps(images)
        size = images.shape[-2:]
        upsampled = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps]
        stacked = torch.stack(upsampled)
        return stacked.mean(0) if self.fuse == "mean" else stacked.amax(0)

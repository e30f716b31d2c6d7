"""Captum's LayerGradCam, extended to transformer token layers, plus the package's one way to render a map."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from captum._utils.typing import TargetType  # Captum's own name for its target argument's type; no public alias
from captum.attr import GradientAttribution, LayerAttribution, LayerGradCam
from captum.log import log_usage
from einops import rearrange
from torch import Tensor, nn

from captum_salve.checks import check_int, shape_of
from captum_salve.models import feature_layout, model_input, module_name
from captum_salve.sites import eval_mode

__all__ = ["TokenGradCam", "channels_last_to_first", "render_maps", "tokens_to_grid"]

_BATCHING_UNSUPPORTED = "Batching rule not implemented"


def tokens_to_grid(prefix_tokens: int, grid: tuple[int, int]) -> Callable[[Tensor], Tensor]:
    """A reshape transform from ViT tokens (N, T, C) to a map (N, C, h, w): prefix tokens dropped.

    Example:
        >>> to_grid = tokens_to_grid(1, (14, 14))   # ViT-B/16 at 224 px: [CLS] + 14 × 14 patches
        >>> to_grid(torch.zeros(2, 197, 768)).shape
        torch.Size([2, 768, 14, 14])
    """

    def reshape(tokens: Tensor) -> Tensor:
        patches = tokens[:, prefix_tokens:]
        if patches.shape[1] != grid[0] * grid[1]:
            raise ValueError(
                f"the layer gave {tokens.shape[1]} tokens, which is not {prefix_tokens} prefix tokens "
                f"+ a {grid[0]}x{grid[1]} patch grid; pass reshape_transform for this layer"
            )
        return rearrange(patches, "n (h w) c -> n c h w", h=grid[0], w=grid[1])

    return reshape


def channels_last_to_first(maps: Tensor) -> Tensor:
    """A reshape transform from a channels-last layer's (N, h, w, C) output (timm Swin stages) to (N, C, h, w).

    Example:
        >>> channels_last_to_first(torch.zeros(2, 7, 7, 768)).shape
        torch.Size([2, 768, 7, 7])
    """
    if maps.dim() != 4:
        raise ValueError(
            f"a channels-last layer gives (N, h, w, C), this one gave {tuple(maps.shape)}; "
            "pass reshape_transform for this layer"
        )
    return maps.permute(0, 3, 1, 2)


def render_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Layer-resolution maps made ready to lay over images, the way pytorch-grad-cam renders a CAM.

    The positive part is taken at the layer's resolution, each map is scaled to
    [0, 1] by its own minimum and maximum, and the result is upsampled
    bilinearly with pixel-centre alignment (``align_corners=False``, as OpenCV's
    ``resize``). Every figure and example of this package renders maps this way.
    Unlike a plain min-max, nothing is hidden: a map with no positive evidence
    stays all zero, and a map holding NaN stays NaN.

    Args:
        maps: (N, 1, h, w) attributions, e.g. from :class:`GradFAM`.
        size: (H, W) of the images.

    Returns:
        (N, 1, H, W) values in [0, 1] (or NaN).

    Example:
        >>> heat = render_maps(fam.attribute(images, target=12), images.shape[-2:])
    """
    if not isinstance(maps, Tensor) or maps.dim() != 4 or maps.shape[1] != 1:
        raise ValueError(f"maps must be an (N, 1, h, w) tensor, got {shape_of(maps)}")
    if isinstance(size, (str, int)) or not isinstance(size, Sequence) or len(size) != 2:
        raise ValueError(f"size must be (H, W), two integers >= 1, got {size!r}")
    size = tuple(check_int(s, "size (H, W)", 1) for s in size)
    positive = maps.float().clamp_min(0)  # clamp_min keeps NaN
    low = positive.amin(dim=(2, 3), keepdim=True)
    high = positive.amax(dim=(2, 3), keepdim=True)
    span = high - low
    scaled = torch.where(span > 0, (positive - low) / span.where(span > 0, 1.0), torch.zeros_like(positive))
    scaled = torch.where(positive.isnan().any(dim=(2, 3), keepdim=True), torch.nan, scaled)
    upsampled = F.interpolate(scaled, size=size, mode="bilinear", align_corners=False)
    return upsampled.clamp(0, 1)  # float32 interpolation weights can sum to one step above 1; clamp keeps NaN


def _weighted_maps(gradients: Tensor, activations: Tensor, relu: bool, summed: bool) -> Tensor:
    """The Grad-CAM weighting: channel weights are the spatial mean of the gradients."""
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    maps = weights * activations
    if summed:
        maps = maps.sum(dim=1, keepdim=True)
    return F.relu(maps) if relu else maps


def _as_tuple(value: Any) -> tuple:
    if value is None:
        return ()
    return value if isinstance(value, tuple) else (value,)


class TokenGradCam(LayerAttribution, GradientAttribution):
    r"""Captum's ``LayerGradCam`` that also reads transformer token layers.

    A convolutional layer (output ``(N, C, h, w)``) is handed to Captum's
    ``LayerGradCam`` as it is. A token layer (output ``(N, T, C)``) or a
    channels-last one (``(N, h, w, C)``, timm's Swin) is first mapped to
    ``(N, C, h, w)`` by ``reshape_transform`` (pytorch-grad-cam's name for it:
    like there, it is applied whenever given), with the same weighting; Captum
    alone would return an ``(N, 1, C)`` or ``(N, 1, w, C)`` tensor there without
    complaint. A token layer whose patch
    tokens get exactly zero gradient (the last block of a ViT whose [CLS] token
    feeds the head) is refused with the reason instead of giving empty maps.

    :class:`GradFAM` is this class with an SAE feature's code as the forward;
    with the classifier itself as the forward it is a class Grad-CAM on the same
    layers, tokens included.

    Example:
        >>> model = timm.create_model("resnet18", num_classes=3)
        >>> cam = TokenGradCam(model, model.layer4[-1])    # a convolutional layer: Captum's LayerGradCam
        >>> cam.attribute(torch.rand(2, 3, 64, 64), target=0).shape
        torch.Size([2, 1, 2, 2])
        >>> vit = timm.create_model("vit_tiny_patch16_224", num_classes=3)
        >>> cam = TokenGradCam(vit, vit.blocks[-1].norm1, tokens_to_grid(1, (14, 14)))
        >>> cam.attribute_targets(torch.rand(2, 3, 224, 224), [0, 2]).shape
        torch.Size([2, 2, 14, 14])
    """

    # How error messages name what is explained.
    _target_name = "the target output"

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        layer: nn.Module,
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        device_ids: list[int] | None = None,
    ) -> None:
        r"""Build the attribution for one forward and layer.

        Args:
            forward_func: The forward whose outputs are explained (a model, or
                :class:`FeatureCodes`).
            layer: The layer whose activations the map is built from.
            reshape_transform: Maps the layer's output to ``(N, C, h, w)``; needed
                for token and channels-last layers (:func:`tokens_to_grid`,
                :func:`channels_last_to_first`). None: the layer must give ``(N, C, h, w)``.
            device_ids: As in Captum, for ``DataParallel`` models (convolutional layers).

        Raises:
            ValueError: ``forward_func`` is a model whose ``layer`` gives channels-last
                outputs (or may: see :func:`~captum_salve.models.feature_layout`) and no
                ``reshape_transform`` is given.
        """
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        GradientAttribution.__init__(self, forward_func)
        self.reshape_transform = reshape_transform
        self.layer_name = type(layer).__name__
        if isinstance(forward_func, nn.Module):
            self.layer_name = module_name(forward_func, layer)
            if reshape_transform is None and feature_layout(forward_func, layer) == "channels_last":
                raise ValueError(
                    f"layer {self.layer_name!r} gives channels-last (N, h, w, C) outputs; pass "
                    "reshape_transform=channels_last_to_first (Captum's LayerGradCam would average the wrong axes)"
                )

    @log_usage(part_of_slo=True)
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetType = None,
        additional_forward_args: Any = None,
        relu_attributions: bool = False,
        attr_dim_summation: bool = True,
        grad_kwargs: dict[str, Any] | None = None,
    ) -> Tensor:
        r"""Compute one map per example.

        The forward runs with the model in eval mode (a model left in training mode
        would update its BatchNorm statistics); every module's own mode comes back after.

        Args:
            inputs (Tensor or tuple[Tensor, ...]): Inputs for which maps are
                computed, dimension 0 indexing examples.
            target (int, list, or Tensor): Output index, with Captum's semantics:
                one int for every example, or a list / 1-D tensor with one per example.
            additional_forward_args (Any, optional): Extra arguments the forward
                takes after the inputs. Default: None
            relu_attributions (bool, optional): Keep only positive evidence, as in
                the original Grad-CAM. Default: False
            attr_dim_summation (bool, optional): Sum over channels (True) or
                return the per-channel weighted activations. Default: True
            grad_kwargs (dict, optional): Passed to ``torch.autograd.grad``.

        Returns:
            *Tensor* of **attributions**, ``(N, 1, h, w)`` at the layer's resolution
            (``(N, C, h, w)`` with ``attr_dim_summation=False``), signed unless
            ``relu_attributions=True``.

        Examples::

            >>> cam = TokenGradCam(model, model.blocks[-1].norm1, tokens_to_grid(1, (14, 14)))
            >>> maps = cam.attribute(images, target=labels)      # class Grad-CAM on ViT tokens
            >>> heat = render_maps(maps, images.shape[-2:])      # (N, 1, H, W) in [0, 1]
        """
        target = self._checked_target(target, inputs)
        with _evaluating(self.forward_func):
            extra, kwargs = additional_forward_args, grad_kwargs
            return self._maps(self._model_input(inputs), target, extra, relu_attributions, attr_dim_summation, kwargs)

    def _maps(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Any,
        relu_attributions: bool,
        attr_dim_summation: bool,
        grad_kwargs: dict[str, Any] | None,
    ) -> Tensor:
        if self.reshape_transform is None:
            try:
                maps = LayerGradCam(self.forward_func, self.layer, self.device_ids).attribute(
                    inputs,
                    target,
                    additional_forward_args,
                    relu_attributions=relu_attributions,
                    attr_dim_summation=attr_dim_summation,
                    grad_kwargs=grad_kwargs,
                )
            except RuntimeError as error:
                if "not have been used in the graph" in str(error):
                    raise self._unreachable() from None
                raise
            if maps.dim() != 4:
                raise ValueError(
                    f"layer {self.layer_name!r} does not give (N, C, h, w) maps; for token outputs (N, tokens, C) "
                    "pass reshape_transform mapping them to (N, C, h, w)"
                )
            return maps
        inputs = _as_tuple(inputs)
        extra = _as_tuple(additional_forward_args)
        with torch.enable_grad():
            outputs, layer_output = self._forward_and_layer_output(inputs, extra)
            selected = _select(outputs, target)
            (gradients,) = torch.autograd.grad(
                selected, layer_output, grad_outputs=torch.ones_like(selected), allow_unused=True, **(grad_kwargs or {})
            )
        if gradients is None:
            raise self._unreachable()
        gradients, activations = self._as_maps(gradients, layer_output.detach())
        self._refuse_silent_layer(gradients, selected.detach())
        return _weighted_maps(gradients, activations, relu_attributions, attr_dim_summation)

    def attribute_targets(
        self,
        inputs: Tensor,
        targets: Sequence[int] | Tensor,
        additional_forward_args: Any = None,
        relu_attributions: bool = False,
    ) -> Tensor:
        """Maps of several outputs for every input, from one forward and one batched backward pass.

        Equal to calling :meth:`attribute` once per target (and stacking), at
        about the cost of one call. When other hooks on the layer cannot run
        under batched gradients (a live pytorch-grad-cam object hooked on the
        same layer, for one), the gradients are taken one target at a time instead.

        Args:
            inputs: (N, ...) inputs.
            targets: F output indices, each applied to every input.
            additional_forward_args: Extra forward arguments.
            relu_attributions: Keep only positive evidence.

        Returns:
            (N, F, h, w) maps: channel f is ``targets[f]``.
        """
        index = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
        with _evaluating(self.forward_func), torch.enable_grad():
            outputs, layer_output = self._forward_and_layer_output(
                _as_tuple(self._model_input(inputs)), _as_tuple(additional_forward_args)
            )
            selected = outputs[:, index.to(outputs.device)]  # (N, F)
            gradients = _gradients_per_column(selected, layer_output)
        if gradients is None:
            raise self._unreachable()
        activations = layer_output.detach()
        maps = []
        for position in range(len(index)):
            grads, acts = self._as_maps(gradients[position], activations)
            self._refuse_silent_layer(grads, selected[:, position].detach())
            maps.append(_weighted_maps(grads, acts, relu_attributions, True))
        return torch.cat(maps, dim=1)

    def _model_input(self, inputs: Tensor | tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
        """One input tensor of a module forward, checked and cast by :func:`~captum_salve.models.model_input`."""
        if isinstance(self.forward_func, nn.Module) and not isinstance(inputs, tuple):
            return model_input(self.forward_func, inputs, "inputs")
        return inputs

    def _checked_target(self, target: TargetType, inputs: Tensor | tuple[Tensor, ...]) -> TargetType:
        """The target as Captum takes it; here any target Captum accepts, as it is.

        Subclasses check theirs; ``inputs`` is there for those that compare the target with the batch.
        """
        return target

    def _forward_and_layer_output(self, inputs: tuple, extra: tuple) -> tuple[Tensor, Tensor]:
        """Run the forward once, keeping the layer's output (the model goes on with a clone of it)."""
        saved: list[Tensor] = []

        def keep_output(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            saved.append(output)
            return output.clone()  # later in-place ops change the clone, not the saved tensor

        handle = self.layer.register_forward_hook(keep_output)
        try:
            outputs = self.forward_func(*inputs, *extra)
        finally:
            handle.remove()
        if len(saved) != 1:
            raise RuntimeError(
                f"layer {self.layer_name!r} ran {len(saved)} times in one forward; use a layer that runs once"
            )
        if not isinstance(saved[0], Tensor):
            raise ValueError(
                f"layer {self.layer_name!r} returns a {type(saved[0]).__name__}, not a tensor; pick another layer"
            )
        return outputs, saved[0]

    def _as_maps(self, gradients: Tensor, activations: Tensor) -> tuple[Tensor, Tensor]:
        """Gradients and activations as (N, C, h, w), through ``reshape_transform`` when one is given."""
        if self.reshape_transform is None and gradients.dim() != 4:
            raise ValueError(
                f"layer {self.layer_name!r} gives {tuple(gradients.shape)}; pass reshape_transform mapping "
                "its output to (N, C, h, w)"
            )
        if self.reshape_transform is not None:
            mapped = self.reshape_transform(gradients)
            if gradients.dim() == 3 and not mapped.any() and gradients.any():
                raise ValueError(
                    f"{self._target_name} has zero gradient on the patch tokens of {self.layer_name!r} and only "
                    "reaches its class/prefix tokens: after the last block, only the [CLS] token feeds the head. "
                    "Use the last block's first norm (blocks[-1].norm1) or an earlier block"
                )
            gradients, activations = mapped, self.reshape_transform(activations)
        if gradients.dim() != 4:
            raise ValueError(
                f"layer {self.layer_name!r} output has shape {tuple(gradients.shape)}; Grad-CAM needs (N, C, h, w)"
            )
        return gradients, activations

    def _refuse_silent_layer(self, gradients: Tensor, selected: Tensor) -> None:
        """A layer that gets no gradient although the target is non-zero does not feed it."""
        if not gradients.any() and selected.any():
            raise ValueError(
                f"layer {self.layer_name!r} receives no gradient from {self._target_name} although it is non-zero: "
                "the layer does not feed it (is it after the point the target is read?)"
            )

    def _unreachable(self) -> ValueError:
        return ValueError(f"{self._target_name} does not depend on layer {self.layer_name!r}; pick a layer before it")


def _select(outputs: Tensor, target: TargetType) -> Tensor:
    """Each input's explained output, (N,): ``outputs[i, target_i]`` (Captum's int / per-example target)."""
    if target is None:
        if outputs.dim() > 1 and outputs[0].numel() > 1:
            raise ValueError(f"target is needed: the forward gives {tuple(outputs.shape[1:])} outputs per input")
        return outputs.reshape(len(outputs))
    if outputs.dim() != 2:
        raise ValueError(
            f"on token layers, target indexes (N, outputs) forwards; this one gives {tuple(outputs.shape)}"
        )
    chosen = torch.as_tensor(target, device=outputs.device).reshape(-1).expand(len(outputs))
    return outputs[torch.arange(len(outputs), device=outputs.device), chosen]


def _gradients_per_column(selected: Tensor, layer_output: Tensor) -> Tensor | None:
    """(F, *layer_output.shape) gradients of each column of ``selected`` (N, F), batched when possible."""
    f = selected.shape[1]
    one_hot = torch.eye(f, device=selected.device, dtype=selected.dtype)[:, None, :].expand(f, len(selected), f)
    try:
        (gradients,) = torch.autograd.grad(
            selected, layer_output, grad_outputs=one_hot, is_grads_batched=True, allow_unused=True, retain_graph=True
        )
        return gradients
    except RuntimeError as error:
        if _BATCHING_UNSUPPORTED not in str(error):
            raise
    columns = []
    for column in range(f):
        (gradient,) = torch.autograd.grad(
            selected, layer_output, grad_outputs=one_hot[column], allow_unused=True, retain_graph=column < f - 1
        )
        if gradient is None:
            return None
        columns.append(gradient)
    return torch.stack(columns)


def _evaluating(forward_func: Callable) -> AbstractContextManager:
    """Eval mode for the module behind ``forward_func`` (a module or its bound method), its modes restored after.

    A model left in training mode would otherwise update its BatchNorm statistics
    (and drop units) in every forward an attribution runs.
    """
    owner = forward_func if isinstance(forward_func, nn.Module) else getattr(forward_func, "__self__", None)
    return eval_mode(owner) if isinstance(owner, nn.Module) else nullcontext()

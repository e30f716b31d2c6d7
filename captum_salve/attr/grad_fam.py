"""Grad-FAM: Grad-CAM with an SAE feature's code as the target."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from captum._utils.common import _format_additional_forward_args, _format_tensor_into_tuples
from captum._utils.gradient import compute_layer_gradients_and_eval
from captum._utils.typing import TargetType
from captum.attr._utils.attribution import GradientAttribution, LayerAttribution
from captum.log import log_usage
from einops import rearrange
from torch import Tensor, nn

from captum_salve.models import default_cam_layer, get_module, module_name, token_layout
from captum_salve.sae.model import SparseAutoencoder
from captum_salve.sites import Site, recording

__all__ = ["GradFAM", "tokens_to_grid"]


def tokens_to_grid(prefix_tokens: int, grid: tuple[int, int]) -> Callable[[Tensor], Tensor]:
    """A reshape transform from ViT tokens (N, T, C) to a map (N, C, h, w): prefix tokens dropped."""

    def reshape(tokens: Tensor) -> Tensor:
        patches = tokens[:, prefix_tokens:]
        if patches.shape[1] != grid[0] * grid[1]:
            raise ValueError(
                f"the layer gave {tokens.shape[1]} tokens, which is not {prefix_tokens} prefix tokens "
                f"+ a {grid[0]}x{grid[1]} patch grid; pass reshape_transform for this layer"
            )
        return rearrange(patches, "n (h w) c -> n c h w", h=grid[0], w=grid[1])

    return reshape


class GradFAM(LayerAttribution, GradientAttribution):
    r"""
    Grad-FAM (gradient-weighted feature activation map) maps one SAE feature onto
    the input image. It is Grad-CAM with the feature's code ``z_l`` as the target
    instead of a class logit: for the chosen layer's activations ``A`` (C × h × w),
    ``w_c = mean_{u,v} ∂z_l/∂A_{c,u,v}`` and the map is ``Σ_c w_c A_c``.

    The code is computed by the SAE from the activations at ``site`` (by default
    the classifier head's input, where the SAE was trained). The attribution has
    the layer's resolution, ``(N, 1, h, w)``, and is signed unless
    ``relu_attributions=True``; upsample it with ``LayerAttribution.interpolate``.

    For timm and torchvision ViTs, the layer's token output ``(N, T, C)`` is
    reshaped to ``(N, C, h, w)`` automatically (prefix tokens dropped, the grid read
    from the model); ``reshape_transform`` overrides this. The default layer of a
    ViT is the first norm of its last block: a code computed from the [CLS]
    pre-logits has exactly zero gradient on the patch tokens of the last block's
    *output*, and Grad-FAM raises an error there instead of returning zeros.

    Grad-FAM is a CAM: like Captum's ``LayerGradCam`` it does not multiply by
    inputs and has no convergence delta, and it composes with ``NoiseTunnel``.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None,
        sae: SparseAutoencoder,
        site: Site | None = None,
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        device_ids: list[int] | None = None,
    ) -> None:
        r"""
        Args:
            model: The classifier.
            layer: The layer whose activations the map is built from (module or
                dotted name); None picks the model family's default
                (``layer4[-1]`` for ResNets, ``blocks[-1].norm1`` for timm ViTs).
            sae: The sparse autoencoder whose codes are the targets.
            site: Where the SAE reads its input; default the head input.
            reshape_transform: Maps the layer's output to ``(N, C, h, w)``; default
                for ViTs: drop the prefix tokens and fold the patch grid.
            device_ids: As in Captum, for ``DataParallel`` models.
        """
        if not isinstance(sae, SparseAutoencoder):
            raise TypeError(f"sae must be a SparseAutoencoder, got {type(sae).__name__}")
        layer = default_cam_layer(model) if layer is None else get_module(model, layer)
        self.model, self.sae = model, sae
        self.layer_name = module_name(model, layer)
        self._site = (site or Site()).bind(model)
        if reshape_transform is None and (layout := token_layout(model)) is not None:
            reshape_transform = tokens_to_grid(layout.prefix_tokens, layout.grid)
        self.reshape_transform = reshape_transform
        self._codes: Tensor | None = None
        LayerAttribution.__init__(self, self._forward_codes, layer, device_ids)
        GradientAttribution.__init__(self, self._forward_codes)

    def _forward_codes(self, inputs: Tensor, *args: Any) -> Tensor:
        with recording(self.model, self._site) as rec:
            self.model(inputs, *args)
        codes = self.sae.encode(rec.take())
        self._codes = codes.detach()
        return codes

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
        r"""
        Args:
            inputs (Tensor or tuple[Tensor, ...]): Images for which maps are
                computed, dimension 0 indexing examples.
            target (int, list, or Tensor): The SAE feature(s), with Captum's
                semantics: one int for every example, or a list / 1-D tensor with
                one feature per example.
            additional_forward_args (Any, optional): Extra arguments the model's
                forward takes after the inputs. Default: None
            relu_attributions (bool, optional): Keep only positive evidence, as in
                the original Grad-CAM. Default: False
            attr_dim_summation (bool, optional): Sum over channels (True) or
                return the per-channel weighted activations. Default: True
            grad_kwargs (dict, optional): Passed to ``torch.autograd.grad``.

        Returns:
            *Tensor* of **attributions**, ``(N, 1, h, w)`` at the layer's resolution
            (``(N, C, h, w)`` with ``attr_dim_summation=False``).

        Examples::

            >>> fam = GradFAM(model, model.layer4[-1], sae)
            >>> attr = fam.attribute(images, target=12)          # feature 12 for all
            >>> attr = fam.attribute(images, target=[3, 7, 7])   # one per image
            >>> up = LayerAttribution.interpolate(attr, images.shape[-2:], "bilinear")
        """
        self._check_target(target)
        inputs = _format_tensor_into_tuples(inputs)
        additional_forward_args = _format_additional_forward_args(additional_forward_args)
        try:
            layer_gradients, layer_evals = compute_layer_gradients_and_eval(
                self.forward_func,
                self.layer,
                inputs,
                target,
                additional_forward_args,
                device_ids=self.device_ids,
                grad_kwargs=grad_kwargs,
            )
        except RuntimeError as error:
            if "not have been used in the graph" in str(error):
                raise self._unreachable() from None
            raise
        try:
            gradients, activations = self._to_maps(layer_gradients[0], layer_evals[0], target)
        finally:
            self._codes = None
        return _weighted_maps(gradients, activations, relu_attributions, attr_dim_summation)

    def attribute_features(
        self,
        inputs: Tensor,
        features: Sequence[int] | Tensor,
        additional_forward_args: Any = None,
        relu_attributions: bool = False,
    ) -> Tensor:
        """Maps of several features for every image, from one forward and one batched backward pass.

        Equal to calling :meth:`attribute` once per feature (and stacking), at
        about the cost of one call.

        Args:
            inputs: (N, ...) images.
            features: F feature indices.
            additional_forward_args: Extra forward arguments.
            relu_attributions: Keep only positive evidence.

        Returns:
            (N, F, h, w) maps: channel f is feature ``features[f]``.

        Example:
            >>> maps = fam.attribute_features(images, [3, 12, 40, 41])
        """
        index = torch.as_tensor(features, dtype=torch.long).reshape(-1)
        self._check_target(index.tolist())
        extra = _format_additional_forward_args(additional_forward_args) or ()
        saved: list[Tensor] = []

        def keep_output(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            saved.append(output)
            return output.clone()  # later in-place ops change the clone, not the saved tensor

        with torch.enable_grad():
            handle = self.layer.register_forward_hook(keep_output)
            try:
                codes = self._forward_codes(inputs, *extra)
            finally:
                handle.remove()
            if len(saved) != 1:
                raise RuntimeError(f"layer {self.layer_name!r} ran {len(saved)} times in one forward; use a layer that runs once")
            selected = codes[:, index.to(codes.device)]  # (N, F)
            f = len(index)
            one_hot = torch.eye(f, device=codes.device, dtype=codes.dtype)[:, None, :].expand(f, len(codes), f)
            (gradients,) = torch.autograd.grad(selected, saved[0], grad_outputs=one_hot, is_grads_batched=True, allow_unused=True)
        if gradients is None:
            self._codes = None
            raise self._unreachable()
        activations = saved[0].detach()
        maps = []
        try:
            for position in range(f):
                grads, acts = self._to_maps(gradients[position], activations, int(index[position]))
                maps.append(_weighted_maps(grads, acts, relu_attributions, True))
        finally:
            self._codes = None
        return torch.cat(maps, dim=1)

    def _unreachable(self) -> ValueError:
        return ValueError(
            f"the SAE code does not depend on layer {self.layer_name!r}: the layer does not feed the SAE's "
            f"site ({self._site.name}); pick a layer before it"
        )

    def _check_target(self, target: TargetType) -> None:
        if target is None:
            raise ValueError("target must name the SAE feature(s): an int, or one per example")
        values = torch.as_tensor(target).reshape(-1)
        if values.dtype.is_floating_point or values.min() < 0 or values.max() >= self.sae.d_latent:
            raise ValueError(f"target must be SAE feature indices in [0, {self.sae.d_latent - 1}], got {values.tolist()[:8]}")

    def _to_maps(self, gradients: Tensor, activations: Tensor, target: TargetType) -> tuple[Tensor, Tensor]:
        """Shape gradients and activations as (N, C, h, w), refusing a layer the code does not depend on."""
        if gradients.dim() == 3:
            if self.reshape_transform is None:
                raise ValueError(
                    f"layer {self.layer_name!r} gives tokens {tuple(gradients.shape)}; pass reshape_transform "
                    "mapping (N, tokens, C) to (N, C, h, w)"
                )
            mapped = self.reshape_transform(gradients)
            if not mapped.any() and gradients.any():
                raise ValueError(
                    f"the SAE code has zero gradient on the patch tokens of {self.layer_name!r} and only reaches "
                    "its class/prefix tokens: after the last block, only the [CLS] token feeds the head. "
                    "Use the last block's first norm (blocks[-1].norm1) or an earlier block"
                )
            gradients, activations = mapped, self.reshape_transform(activations)
        elif self.reshape_transform is not None and gradients.dim() != 4:
            gradients, activations = self.reshape_transform(gradients), self.reshape_transform(activations)
        if gradients.dim() != 4:
            raise ValueError(f"layer {self.layer_name!r} output has shape {tuple(gradients.shape)}; Grad-FAM needs (N, C, h, w)")
        if not gradients.any() and self._codes is not None:
            rows = torch.arange(len(self._codes), device=self._codes.device)
            chosen = torch.as_tensor(target, device=self._codes.device).expand(len(rows))
            if self._codes[rows, chosen].abs().gt(self.sae.active_threshold).any():
                raise ValueError(
                    f"layer {self.layer_name!r} receives no gradient from the SAE code although the code is active: "
                    "the layer does not feed the SAE's site (is it after the site?)"
                )
        return gradients, activations


def _weighted_maps(gradients: Tensor, activations: Tensor, relu: bool, summed: bool) -> Tensor:
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    maps = weights * activations
    if summed:
        maps = maps.sum(dim=1, keepdim=True)
    return F.relu(maps) if relu else maps

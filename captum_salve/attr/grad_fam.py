"""Grad-FAM: Grad-CAM with an SAE feature's code as the target."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from captum._utils.typing import TargetType
from torch import Tensor, nn

from captum_salve.attr.feature_codes import FeatureCodes
from captum_salve.attr.grad_cam import TokenGradCam, channels_last_to_first, tokens_to_grid
from captum_salve.models import default_cam_layer, feature_layout, get_module, module_name, token_layout
from captum_salve.sae.model import SparseAutoencoder
from captum_salve.sites import Site

__all__ = ["GradFAM"]


class GradFAM(TokenGradCam):
    r"""Grad-FAM (gradient-weighted feature activation map): one SAE feature mapped onto the input image.

    It is Grad-CAM with the feature's code ``z_l`` as the target
    instead of a class logit: for the chosen layer's activations ``A`` (C × h × w),
    ``w_c = mean_{u,v} ∂z_l/∂A_{c,u,v}`` and the map is ``Σ_c w_c A_c``.

    The forward is :class:`FeatureCodes`: the SAE encodes the activations at its
    site (by default the one recorded in the SAE, usually the head input). On a
    convolutional layer the map is Captum's ``LayerGradCam`` of that forward; on
    a token layer the tokens are first folded into ``(N, C, h, w)`` (see
    :class:`TokenGradCam`). ``attribute(images, target=l)`` takes Captum's
    arguments, with ``target`` naming SAE features (one int for every image, or
    one per image). The attribution has the layer's resolution,
    ``(N, 1, h, w)``, and is signed unless ``relu_attributions=True``; render it
    over the image with :func:`render_maps`.

    For the token models of :data:`~captum_salve.models.FAMILIES` (timm's ViT,
    DeiT, ViT-relpos, BEiT, EVA; torchvision's ViT) the reshape is automatic
    (prefix tokens dropped, the grid read from the model), and so it is for a
    channels-last family (timm's Swin: its stages give ``(N, h, w, C)``);
    ``reshape_transform`` overrides it. A model of no known family that declares
    channels-last features is refused unless ``reshape_transform`` is given.
    The default layer of a ViT is the first norm of its last block: a code
    computed from the [CLS] pre-logits has exactly zero gradient on the patch
    tokens of the last block's *output*, and Grad-FAM raises an error there
    instead of returning zeros.

    Grad-FAM is a CAM: like Captum's ``LayerGradCam`` it does not multiply by
    inputs and has no convergence delta, and it composes with ``NoiseTunnel``.

    Example:
        >>> fam = GradFAM(model, None, sae)                  # layer4[-1] of a ResNet, blocks[-1].norm1 of a ViT
        >>> maps = fam.attribute(images, target=12)          # (N, 1, h, w) at the layer's resolution
        >>> heat = render_maps(maps, images.shape[-2:])      # (N, 1, H, W) in [0, 1], ready to lay over the images
    """

    _target_name = "the SAE code"

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str | None,
        sae: SparseAutoencoder,
        site: Site | None = None,
        reshape_transform: Callable[[Tensor], Tensor] | None = None,
        device_ids: list[int] | None = None,
    ) -> None:
        r"""Build the attribution for one model, layer and SAE.

        Args:
            model: The classifier.
            layer: The layer whose activations the map is built from (module or
                dotted name); None picks the model family's default
                (:func:`~captum_salve.models.default_cam_layer`: ``layer4[-1]`` for
                ResNets, ``blocks[-1].norm1`` for timm ViTs).
            sae: The sparse autoencoder whose codes are the targets.
            site: Where the SAE reads its input; default the SAE's own site.
            reshape_transform: Maps the layer's output to ``(N, C, h, w)``; default
                for ViTs: drop the prefix tokens and fold the patch grid; for Swin:
                move the channels first.
            device_ids: As in Captum, for ``DataParallel`` models.

        Raises:
            ValueError: No layer is given for a model of no known family, or its
                layout cannot be told (see :func:`~captum_salve.models.feature_layout`).
        """
        codes = FeatureCodes(model, sae, site)
        layer = default_cam_layer(model) if layer is None else get_module(model, layer)
        if reshape_transform is None:
            reshape_transform = _family_reshape(model, layer)
        super().__init__(codes, layer, reshape_transform, device_ids)
        self.model, self.sae, self.codes = model, sae, codes
        self.layer_name = module_name(model, layer)

    def _checked_target(self, target: TargetType, inputs: Tensor | tuple[Tensor, ...]) -> TargetType:
        """Grad-FAM's target names SAE features: one for every image (an int), or one per image (a list)."""
        if target is None:
            raise ValueError("target must name the SAE feature(s): an int, or one per example")
        index = self.sae.feature_index(target, "target")
        if isinstance(target, (int, np.integer)) or (isinstance(target, Tensor) and target.dim() == 0):
            return int(index)
        n = len(inputs if isinstance(inputs, Tensor) else inputs[0])
        if len(index) != n:
            raise ValueError(
                f"target must be one SAE feature for every image (an int) or one per image ({n}), "
                f"got {len(index)}: {index.tolist()[:8]}"
            )
        return index.tolist()

    def attribute_features(
        self,
        inputs: Tensor,
        features: Sequence[int] | Tensor,
        additional_forward_args: Any = None,
        relu_attributions: bool = False,
    ) -> Tensor:
        """Maps of several features for every image, from one forward and one batched backward pass.

        Equal to calling :meth:`attribute` once per feature (and stacking), at
        about the cost of one call; see :meth:`TokenGradCam.attribute_targets`.

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
        index = self.sae.feature_index(features, "features")
        return self.attribute_targets(inputs, index, additional_forward_args, relu_attributions)

    def _unreachable(self) -> ValueError:
        return ValueError(
            f"the SAE code does not depend on layer {self.layer_name!r}: the layer does not feed the SAE's "
            f"site ({self.codes.site.key}); pick a layer before it"
        )


def _family_reshape(model: nn.Module, layer: nn.Module) -> Callable[[Tensor], Tensor] | None:
    """What turns the layer's output into (N, C, h, w): the patch grid for tokens, a permute for channels last."""
    if isinstance(layer, nn.Conv2d):
        return None
    if (layout := token_layout(model)) is not None:
        return tokens_to_grid(layout.prefix_tokens, layout.grid)
    if feature_layout(model, layer) == "channels_last":
        return channels_last_to_first
    return None

"""The SAE codes of images, as a module any Captum attribution can explain."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from captum_salve.models import model_input
from captum_salve.sae.model import SparseAutoencoder
from captum_salve.sites import BoundSite, Site, recording

__all__ = ["FeatureCodes"]


class FeatureCodes(nn.Module):
    r"""Images in, SAE codes out: ``forward(images) = sae.encode(site activations of model(images))``.

    It is the forward function that turns an SAE feature into a Captum target:
    with ``target=l``, every Captum attribution method explains feature l's code
    ``z_l`` the way it would explain a class logit. The model runs up to (and
    past) the site; only the value read at the site is encoded.

    Args:
        model: The classifier the SAE was trained on.
        sae: The sparse autoencoder.
        site: Where the SAE reads; default the site recorded in the SAE
            (``sae.site``, the head input unless it was trained elsewhere).

    Raises:
        TypeError: ``sae`` is not a :class:`SparseAutoencoder`.
        ValueError: The site is not in the model, or its width is not the SAE's
            (checked on the first forward pass).

    Example:
        >>> from captum.attr import IntegratedGradients, LayerGradCam, Occlusion
        >>> codes = FeatureCodes(model, sae)
        >>> codes(images).shape                                   # (N, d_latent)
        >>> IntegratedGradients(codes).attribute(images, target=12, n_steps=64)
        >>> Occlusion(codes).attribute(images, target=12, sliding_window_shapes=(3, 8, 8), strides=8)
        >>> LayerGradCam(codes, model.layer4[-1]).attribute(images, target=12)
    """

    def __init__(self, model: nn.Module, sae: SparseAutoencoder, site: Site | None = None) -> None:
        super().__init__()
        if not isinstance(sae, SparseAutoencoder):
            raise TypeError(f"sae must be a SparseAutoencoder, got {type(sae).__name__}")
        if site is not None and not isinstance(site, Site):
            raise TypeError(
                f"site must be a Site or None (the SAE's own site, {sae.site!r}), got {type(site).__name__}"
            )
        self.model, self.sae = model, sae
        self.site: BoundSite = (site if site is not None else Site.from_key(sae.site)).bind(model)

    def site_activations(self, images: Tensor, *args: Any) -> Tensor:
        """The (N, M) activations the SAE reads, still connected to the graph."""
        with recording(self.model, self.site) as rec:
            self.model(model_input(self.model, images, "inputs"), *args)
        value = rec.take()
        if value.shape[1] != self.sae.d_in:
            raise ValueError(
                f"the site {self.site.key!r} gives {value.shape[1]}-dimensional activations but the SAE reads "
                f"{self.sae.d_in}: the SAE was trained on another site or model"
            )
        return value

    def forward(self, images: Tensor, *args: Any) -> Tensor:
        """Codes (N, d_latent) of the images; ``args`` go to the model's forward."""
        return self.sae.encode(self.site_activations(images, *args))

    def pre_activations(self, images: Tensor, *args: Any) -> Tensor:
        """The codes' affine part (N, d_latent), before the SAE's activation.

        A ReLU or TopK code that is off has zero gradient; its affine part still
        says which way the image should change (activation maximisation ascends it).
        """
        return self.sae.pre_activation(self.site_activations(images, *args))

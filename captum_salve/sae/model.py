"""The sparse autoencoder: two linear layers with a choice of code activation."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from captum_salve.files import atomic_path, ensure_directory

__all__ = ["ACTIVATIONS", "LINEAR_ACTIVE_THRESHOLD", "SparseAutoencoder"]

ACTIVATIONS = ("linear", "relu", "topk")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "cfg.json"
FORMAT_VERSION = 1

# Signed "linear" codes are never exactly zero; a code counts as active (for L0
# and dead-latent counts) when |z| exceeds this.
LINEAR_ACTIVE_THRESHOLD = 1e-2


class SparseAutoencoder(nn.Module):
    r"""A sparse autoencoder over activation vectors, ``z = act(E (a - b_d) + b_e)``, ``a_hat = D z + b_d``.

    The decoder's columns (``decoder_weight[:, l]``) are the feature directions and
    are kept at unit L2 norm. Subtracting the decoder bias before encoding centres
    the input; it folds into the encoder bias, so the model is the paper's
    ``z = act(E a + b_e')``.

    Args:
        d_in: Width M of the activations.
        d_latent: Number of features d.
        activation: ``"linear"`` (signed codes, the paper's SAE), ``"relu"`` or
            ``"topk"`` (the ``k`` largest pre-activations kept, then ReLU).
        k: Features kept per input, for ``"topk"`` only.

    Example:
        >>> sae = SparseAutoencoder(512, 2048, "topk", k=32)
        >>> a_hat, z = sae(torch.randn(4, 512))
        >>> (z != 0).sum(dim=1).le(32).all()
        tensor(True)
    """

    def __init__(self, d_in: int, d_latent: int, activation: str = "relu", *, k: int | None = None) -> None:
        super().__init__()
        for name, value in (("d_in", d_in), ("d_latent", d_latent)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if activation == "topk":
            if not isinstance(k, int) or not 1 <= k <= d_latent:
                raise ValueError(f"activation='topk' needs an integer k in [1, d_latent={d_latent}], got k={k!r}")
        elif k is not None:
            raise ValueError(f"k is only used with activation='topk', not {activation!r}")
        self.d_in, self.d_latent, self.activation, self.k = d_in, d_latent, activation, k
        self.metadata: dict = {}
        self.encoder = nn.Linear(d_in, d_latent)
        self.decoder = nn.Linear(d_latent, d_in)
        with torch.no_grad():
            self.decoder.bias.zero_()
            self.encoder.bias.zero_()
            self.normalize_decoder_()

    @property
    def decoder_weight(self) -> Tensor:
        """D, (d_in, d_latent): column l is feature l's unit-norm direction."""
        return self.decoder.weight

    @property
    def active_threshold(self) -> float:
        """|z| above which a code counts as active (0 for ReLU and TopK codes)."""
        return LINEAR_ACTIVE_THRESHOLD if self.activation == "linear" else 0.0

    def pre_activation(self, a: Tensor) -> Tensor:
        """The affine part of the encoder, ``E (a - b_d) + b_e``."""
        return self.encoder(a - self.decoder.bias)

    def encode(self, a: Tensor) -> Tensor:
        """Codes z, (N, d_latent)."""
        if a.dim() != 2 or a.shape[1] != self.d_in:
            raise ValueError(f"expected activations of shape (N, {self.d_in}), got {tuple(a.shape)}")
        pre = self.pre_activation(a)
        if self.activation == "linear":
            return pre
        if self.activation == "relu":
            return torch.relu(pre)
        values, index = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, index, torch.relu(values))

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruction a_hat, (N, d_in)."""
        return self.decoder(z)

    def forward(self, a: Tensor) -> tuple[Tensor, Tensor]:
        """(a_hat, z) for activations a."""
        z = self.encode(a)
        return self.decode(z), z

    def affine_code(self, features: Tensor | list[int] | int) -> tuple[Tensor, Tensor]:
        """Rows e_l and offsets beta_l with ``pre_activation(a)[:, l] = a @ e_l + beta_l``.

        Returns:
            (encoder rows (F, d_in), offsets (F,)) for the requested features.
        """
        index = torch.as_tensor(features, dtype=torch.long).reshape(-1)
        rows = self.encoder.weight[index]
        return rows, self.encoder.bias[index] - rows @ self.decoder.bias

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder column to unit L2 norm (in place)."""
        self.decoder.weight.div_(self.decoder.weight.norm(dim=0, keepdim=True).clamp_min(1e-12))

    def config(self) -> dict:
        """The constructor arguments, as written to ``cfg.json``."""
        return {"d_in": self.d_in, "d_latent": self.d_latent, "activation": self.activation, "k": self.k}

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` and ``cfg.json`` into ``directory`` (each file atomically).

        ``cfg.json`` also keeps :attr:`metadata`, a JSON-able dict for facts such as
        the site and the model the SAE was trained on.
        """
        directory = ensure_directory(directory)
        state = {name: t.detach().contiguous().cpu() for name, t in self.state_dict().items()}
        with atomic_path(directory / WEIGHTS_FILE) as tmp:
            save_file(state, str(tmp))
        cfg = {"format_version": FORMAT_VERSION, **self.config(), "metadata": self.metadata}
        with atomic_path(directory / CONFIG_FILE) as tmp:
            tmp.write_text(json.dumps(cfg, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, device: torch.device | str | None = None) -> SparseAutoencoder:
        """Load an SAE written by :meth:`save`; the config is checked against the tensors.

        Nothing is unpickled: weights come from safetensors, the config from JSON.

        Raises:
            FileNotFoundError: A file is missing.
            ValueError: The config and the tensors disagree.
        """
        directory = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{str(directory / name)!r} is missing; an SAE directory holds {CONFIG_FILE} and {WEIGHTS_FILE}")
        cfg = json.loads((directory / CONFIG_FILE).read_text())
        if cfg.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{CONFIG_FILE} has format_version {cfg.get('format_version')!r}; this version reads {FORMAT_VERSION}")
        sae = cls(cfg["d_in"], cfg["d_latent"], cfg["activation"], k=cfg.get("k"))
        state = load_file(str(directory / WEIGHTS_FILE))
        expected = {name: tuple(t.shape) for name, t in sae.state_dict().items()}
        found = {name: tuple(t.shape) for name, t in state.items()}
        if expected != found:
            raise ValueError(
                f"the tensors in {str(directory / WEIGHTS_FILE)!r} do not match {CONFIG_FILE}: "
                f"expected {expected}, found {found}"
            )
        sae.load_state_dict(state)
        sae.metadata = cfg.get("metadata", {})
        return sae.to(device) if device is not None else sae

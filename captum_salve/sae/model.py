"""The sparse autoencoder: two linear layers, a code activation, and where it was trained."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, get_args

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from captum_salve.activations import ActivationSet
from captum_salve.checks import check_int, non_finite_error, shape_of
from captum_salve.files import atomic_path, ensure_directory
from captum_salve.sae.formats import SaveLayout, layout_of, read_foreign, write_saelens
from captum_salve.sae.variants import ActivationName, CodeActivation, code_activation, variant_from_config
from captum_salve.sites import HEAD_INPUT, as_device
from captum_salve.store import CHUNK_ROWS, Rows, RowStatistics, as_rows

__all__ = ["SparseAutoencoder", "check_feature_index", "check_finite"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "cfg.json"
# The safetensors header key under which the weights file keeps its own copy of cfg.json.
EMBEDDED_CONFIG = "captum_salve_cfg"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def check_feature_index(features: Any, d_latent: int, name: str = "feature") -> Tensor:
    """Feature indices as a 1-D long tensor, refusing anything that is not an index of a d_latent-feature SAE.

    The one check of feature indices in the package. Floats (even whole ones
    such as 2.0), booleans, indices outside ``[0, d_latent)`` and an empty
    selection are errors that name the argument.

    Example:
        >>> check_feature_index([3, 7], 10)
        tensor([3, 7])
    """
    try:
        values = features if isinstance(features, Tensor) else torch.as_tensor(features)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be SAE feature indices (integers), got {features!r}") from None
    if values.numel() == 0:
        raise ValueError(f"{name} must name at least one SAE feature")
    if values.dtype == torch.bool or values.dtype.is_floating_point or values.dtype.is_complex:
        shown = features.reshape(-1).tolist()[:8] if isinstance(features, Tensor) else features
        raise ValueError(f"{name} must be SAE feature indices (integers), got {shown!r}")
    values = values.reshape(-1).long()
    if values.min() < 0 or values.max() >= d_latent:
        raise ValueError(f"{name} must be SAE feature indices in [0, {d_latent - 1}], got {values.tolist()[:8]}")
    return values


def check_finite(values: Tensor | Rows, name: str, hint: str = "", *, chunk_rows: int = CHUNK_ROWS) -> None:
    """Refuse a tensor holding NaN or Inf, naming it, how many entries are not finite and where the first is.

    Rows (an in-memory or on-disk set of activations, see :class:`~captum_salve.store.Rows`)
    are read ``chunk_rows`` at a time, and the index is their row and column.

    Example:
        >>> check_finite(torch.tensor([[1.0, 2.0], [float("nan"), 0.0]]), "acts")
        Traceback (most recent call last):
        ValueError: acts holds 1 non-finite value (NaN or Inf); the first at index (1, 0)
    """
    if not isinstance(values, Tensor):
        values.check_finite(name, hint, check_int(chunk_rows, "chunk_rows", 1))
        return
    bad = ~torch.isfinite(values)
    if bad.any():
        raise non_finite_error(name, int(bad.sum()), tuple(int(i) for i in bad.nonzero()[0]), hint)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(path)!r} is not a valid SAE config (not JSON: {error})") from None
    missing = [key for key in ("d_in", "d_latent", "activation") if not isinstance(cfg, dict) or key not in cfg]
    if missing:
        raise ValueError(f"{str(path)!r} is not a valid SAE config: it lacks {missing}")
    if not isinstance(cfg.get("metadata", {}), dict):
        raise ValueError(f"{str(path)!r} is not a valid SAE config: its 'metadata' is not a JSON object")
    return cfg


class SparseAutoencoder(nn.Module):
    r"""A sparse autoencoder over activation vectors, ``z = act(E (a - b_d) + b_e)``, ``a_hat = D z + b_d``.

    The decoder's columns (``decoder_weight[:, l]``) are the feature directions;
    training keeps them at unit L2 norm, while an SAE loaded from another library
    keeps the norms it was saved with (code that needs directions divides by them).
    Subtracting the decoder bias before encoding centres the input; it folds into
    the encoder bias, so the model is the paper's ``z = act(E a + b_e')``.

    Args:
        d_in: Width M of the activations.
        d_latent: Number of features d.
        activation: ``"linear"`` (signed codes, the paper's SAE), ``"relu"``,
            ``"topk"`` (the ``k`` largest pre-activations kept, then ReLU), another name of
            :data:`~captum_salve.sae.VARIANTS`, or a
            :class:`~captum_salve.sae.variants.CodeActivation` (the SAE keeps a fresh copy of it).
        k: Features kept per input, for the TopK family.
        site: Where the activations it reads come from, as a site key
            (``"head_input"``, the default, or ``"<module>:<reducer>"``; see
            :class:`~captum_salve.sites.Site`). :func:`train_sae` records it from
            the activations; :class:`~captum_salve.attr.FeatureCodes` reads it, and
            the head edits refuse an SAE of any other site.
        model: The model it was trained on (a name, for the record).

    Example:
        >>> sae = SparseAutoencoder(512, 2048, "topk", k=32)
        >>> a_hat, z = sae(torch.randn(4, 512))
        >>> (z != 0).sum(dim=1).le(32).all()
        tensor(True)
    """

    def __init__(
        self,
        d_in: int,
        d_latent: int,
        activation: ActivationName | CodeActivation = "relu",
        *,
        k: int | None = None,
        site: str = HEAD_INPUT,
        model: str | None = None,
    ) -> None:
        super().__init__()
        d_in, d_latent = check_int(d_in, "d_in", 1), check_int(d_latent, "d_latent", 1)
        if not isinstance(site, str) or not site:
            raise ValueError(f"site must be a site key such as 'head_input' or 'layer3:spatial_mean', got {site!r}")
        self.d_in, self.d_latent, self.site, self.model = d_in, d_latent, site, model
        self.metadata: dict = {}
        self.encoder = nn.Linear(d_in, d_latent)
        self.decoder = nn.Linear(d_latent, d_in)
        self.code_activation = code_activation(activation, k=k).fresh()
        self.code_activation.attach(self)
        with torch.no_grad():
            self.decoder.bias.zero_()
            self.encoder.bias.zero_()
            self.normalize_decoder_()

    @property
    def activation(self) -> str:
        """The variant's name (``"linear"``, ``"relu"``, ``"topk"``, ...)."""
        return self.code_activation.name

    @property
    def decoder_weight(self) -> Tensor:
        """D, (d_in, d_latent): column l is feature l's direction.

        Unit norm when trained here (an archetypal SAE's are its computed atoms); an SAE
        loaded from another library keeps the norms it was saved with.
        """
        return self.decoder.weight

    def active_threshold(self, statistics: RowStatistics) -> float:
        """|z| above which a code counts as active on data of these statistics (the variant's multiple of their spread).

        Example:
            >>> sae = SparseAutoencoder(512, 2048, "linear")
            >>> sae.active_threshold(RowStatistics.of(acts.features)) == 0.01 * RowStatistics.of(acts.features).spread
            True
        """
        return self.code_activation.relative_active_threshold * statistics.spread

    def pre_activation(self, a: Tensor) -> Tensor:
        """The affine part of the encoder, ``E (a - b_d) + b_e``, with ``a`` cast to the SAE's dtype."""
        return self.encoder(a.to(self.decoder.bias.dtype) - self.decoder.bias)

    def encode(self, a: Tensor) -> Tensor:
        """Codes z, (N, d_latent), in the SAE's dtype."""
        if not isinstance(a, Tensor) or a.dim() != 2 or a.shape[1] != self.d_in:
            raise ValueError(f"expected an activation tensor of shape (N, {self.d_in}), got {shape_of(a)}")
        return self.code_activation(self.pre_activation(a))

    def encode_chunks(
        self, acts: ActivationSet | Rows | Tensor, chunk_rows: int = CHUNK_ROWS
    ) -> Iterator[tuple[ActivationSet, Tensor]]:
        """Codes of a set of activations (in memory or an ActivationStore), chunk by chunk in row order.

        Memory is bounded by ``chunk_rows``, not by the number of rows: the analyses
        reduce each chunk's codes before the next chunk is read.

        Args:
            acts: An ActivationSet, an ActivationStore (any :class:`~captum_salve.store.Rows`)
                or an (N, d_in) tensor.
            chunk_rows: Rows per chunk, read and encoded together on the SAE's device.

        Yields:
            (chunk, codes): the chunk as an in-memory ActivationSet (labels included) and
            its (n, d_latent) float32 codes on the CPU.

        Example:
            >>> for chunk, codes in sae.encode_chunks(ActivationStore.open("acts/train"), 8192):
            ...     counts += (codes > 0).sum(dim=0)
        """
        matrix = isinstance(acts, Tensor) and acts.dim() == 2
        rows = as_rows(acts, "acts") if matrix or isinstance(acts, (ActivationSet, Rows)) else None
        if rows is None or rows.dim != self.d_in:
            shape = (len(rows), rows.dim) if rows is not None else shape_of(acts)
            raise ValueError(f"acts must be (N, {self.d_in}) activations for this SAE, got {shape}")
        return self._encoded(rows.chunks(check_int(chunk_rows, "chunk_rows", 1)))

    @torch.no_grad()
    def _encoded(self, chunks: Iterable[ActivationSet]) -> Iterator[tuple[ActivationSet, Tensor]]:
        device = self.decoder_weight.device
        for chunk in chunks:
            yield chunk, self.encode(chunk.features.to(device)).to("cpu", torch.float32)

    def encode_all(self, acts: ActivationSet | Rows | Tensor, *, batch_size: int = 4096) -> Tensor:
        """Codes of every row of a (possibly large) set of activations, in batches: (N, d_latent) float32 on the CPU.

        ``acts`` is an ActivationSet, an ActivationStore or an (N, d_in) tensor. The
        result holds all N rows of codes; to reduce them without holding them, use
        :meth:`encode_chunks`.

        Example:
            >>> codes = sae.encode_all(test_acts)
            >>> codes[:, 12].topk(9)   # the rows where feature 12 is largest
        """
        batch_size = check_int(batch_size, "batch_size", 1)
        codes = [codes for _, codes in self.encode_chunks(acts, batch_size)]
        return torch.cat(codes or [torch.zeros(0, self.d_latent)])

    def feature_index(self, features: Any, name: str = "feature") -> Tensor:
        """Feature indices of this SAE as a 1-D long tensor (see :func:`check_feature_index`).

        Example:
            >>> sae.feature_index([3, 7])
            tensor([3, 7])
        """
        return check_feature_index(features, self.d_latent, name)

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
        """Bring the decoder back into its variant's dictionary of unit-norm columns (in place, after every step).

        By default the columns are rescaled; a variant whose atoms are built otherwise
        keeps them valid its own way (:meth:`~captum_salve.sae.variants.CodeActivation.constrain_decoder_`).
        """
        self.code_activation.constrain_decoder_(self)

    def config(self) -> dict:
        """The constructor arguments, as written to ``cfg.json``."""
        return {
            "d_in": self.d_in,
            "d_latent": self.d_latent,
            "activation": self.activation,
            **self.code_activation.settings(),
            "site": self.site,
            "model": self.model,
        }

    def save(self, directory: str | Path, *, layout: SaveLayout = "captum_salve") -> Path:
        """Write the SAE into ``directory``, each file atomically.

        ``layout="captum_salve"`` (the default) writes ``model.safetensors`` and
        ``cfg.json``: the constructor arguments (the site and model included) and
        :attr:`metadata`, a JSON-able dict for anything else worth keeping (training
        settings, the final epoch's metrics). The weights file carries the same config
        in its header, so a save interrupted between the two files leaves weights that
        still load with their own config.

        ``layout="saelens"`` writes ``sae_weights.safetensors`` and ``cfg.json`` as
        SAELens 6 does (see :func:`~captum_salve.sae.formats.write_saelens`), for
        SAELens-based tools; :meth:`load` reads it back to the same codes and
        reconstructions, bit for bit, with the same config and metadata.

        Raises:
            ValueError: A weight is NaN or Inf (nothing is written), the layout is
                unknown, or the SAE has no counterpart in that layout.

        Example:
            >>> sae.save("saes/resnet18-head")
            PosixPath('saes/resnet18-head')
            >>> sae.save("saes/resnet18-head-saelens", layout="saelens")    # SAE.load_from_disk(...) in SAELens
            PosixPath('saes/resnet18-head-saelens')
        """
        if layout not in get_args(SaveLayout):
            raise ValueError(f"layout must be one of {get_args(SaveLayout)}, got {layout!r}")
        for name, tensor in self.state_dict().items():  # checked before the folder's files are touched
            check_finite(tensor, f"the SAE's {name!r}", f"; it was not saved to {str(directory)!r}")
        if layout == "saelens":
            return write_saelens(self, directory)
        directory = ensure_directory(directory)
        cfg = {"format_version": FORMAT_VERSION, **self.config(), "metadata": self.metadata}
        with atomic_path(directory / WEIGHTS_FILE) as tmp:
            save_model(self, str(tmp), metadata={EMBEDDED_CONFIG: json.dumps(cfg)})
        with atomic_path(directory / CONFIG_FILE) as tmp:
            tmp.write_text(json.dumps(cfg, indent=2))
        return directory

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        device: torch.device | str | None = None,
        activation: ActivationName | None = None,
        k: int | None = None,
    ) -> SparseAutoencoder:
        """Load an SAE written by :meth:`save`, or saved by SAELens, sparsify, dictionary_learning or overcomplete.

        The layout is recognised by the files present (see
        :func:`~captum_salve.sae.formats.layout_of`): a folder with ``model.safetensors``
        (ours, this version's files and version 1's), ``sae_weights.safetensors``
        (SAELens), ``sae.safetensors`` (sparsify) or ``ae.pt`` (dictionary_learning),
        or an overcomplete state-dict file. Another library's conventions are folded
        into our weights (:mod:`captum_salve.sae.formats` lists them), so ``encode``
        and ``decode`` give that library's codes and reconstructions; its decoder
        columns keep the norms they were saved with. ``metadata["source"]`` names the
        library and keeps its config; its hook point becomes :attr:`site` only if it
        is one of our site keys (set ``sae.site`` yourself otherwise).

        Nothing is unpickled: weights come from safetensors, or ``.pt`` files read with
        ``torch.load(weights_only=True)``; configs from JSON. In our layout the config
        stored in the weights file's header wins over ``cfg.json`` when they differ (a
        save interrupted after the weights), with a warning; a version-1 file named
        its site in ``metadata["site"]`` (default the head input).

        Args:
            path: The SAE's folder, or an overcomplete state-dict file.
            device: Where to put it (default: the CPU).
            activation: For an overcomplete state dict only, which does not record its
                class: ``"relu"`` (``SAE``) or ``"topk"`` (``TopKSAE``); a ``JumpSAE`` is
                recognised by its ``thresholds``.
            k: With ``activation="topk"``, the ``TopKSAE``'s ``top_k``.

        Raises:
            FileNotFoundError: A file is missing.
            ValueError: A file is not valid safetensors, torch or JSON, the config and
                the tensors disagree, the format is unknown, the SAE computes something
                this model cannot represent, or a weight is NaN or Inf.

        Example:
            >>> sae = SparseAutoencoder.load("saes/resnet18-head")
            >>> from_saelens = SparseAutoencoder.load("saelens-sae")        # cfg.json + sae_weights.safetensors
            >>> from_overcomplete = SparseAutoencoder.load("topk_sae.pt", activation="topk", k=16)
        """
        path, device = Path(path), as_device(device) if device is not None else None
        layout = layout_of(path)
        if layout == "captum_salve":
            if activation is not None or k is not None:
                raise ValueError(
                    f"activation and k describe an overcomplete state dict; {str(path)!r} is an SAE of ours, "
                    f"whose {CONFIG_FILE} records its own (got activation={activation!r}, k={k!r})"
                )
            sae = cls._load_own(path)
        else:
            cfg, state = read_foreign(path, layout, activation=activation, k=k)
            try:
                sae = cls._from_config(cfg, cfg["site"], cfg["model"])
            except ValueError as error:
                raise ValueError(f"{str(path)!r} does not describe an SAE of ours: {error}") from None
            sae.load_state_dict(state)
            sae._check_loaded(str(path))
            sae.metadata = cfg["metadata"]
        return sae.to(device) if device is not None else sae

    @classmethod
    def _from_config(cls, cfg: dict[str, Any], site: str, model: str | None) -> SparseAutoencoder:
        return cls(cfg["d_in"], cfg["d_latent"], variant_from_config(cfg), site=site, model=model)

    def _check_loaded(self, where: str) -> None:
        for name, tensor in self.state_dict().items():
            damaged = "; the file is damaged or was saved from a diverged SAE"
            check_finite(tensor, f"{where!r} tensor {name!r}", damaged)

    @classmethod
    def _load_own(cls, directory: Path) -> SparseAutoencoder:
        path = directory / WEIGHTS_FILE
        try:
            with safe_open(str(path), framework="pt") as handle:
                found = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
                embedded = (handle.metadata() or {}).get(EMBEDDED_CONFIG)
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{str(path)!r} is not a valid SAE weights file: {error}") from None
        cfg = _read_config(directory / CONFIG_FILE)
        if embedded is not None and json.loads(embedded) != cfg:
            warnings.warn(
                f"{str(directory / CONFIG_FILE)!r} does not describe {str(path)!r} (an interrupted save?); "
                "loading the weights with the config stored in their own file",
                stacklevel=3,
            )
            cfg = json.loads(embedded)
        version = cfg.get("format_version")
        if version not in READABLE_VERSIONS:
            raise ValueError(f"{CONFIG_FILE} has format_version {version!r}; this version reads {READABLE_VERSIONS}")
        metadata = cfg.get("metadata", {})
        site = cfg.get("site", metadata.get("site", HEAD_INPUT))
        sae = cls._from_config(cfg, site, cfg.get("model", metadata.get("model")))
        expected = {name: tuple(t.shape) for name, t in sae.state_dict().items()}
        if expected != found:
            raise ValueError(
                f"the tensors in {str(path)!r} do not match {CONFIG_FILE}: expected {expected}, found {found}"
            )
        load_model(sae, str(path))
        sae._check_loaded(str(path))
        sae.metadata = metadata
        return sae

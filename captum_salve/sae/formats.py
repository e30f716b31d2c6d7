r"""SAEs saved by other libraries, read into our model; ours written in SAELens's layout.

Our SAE is ``z = act(E (a − b_d) + b_e)``, ``a_hat = D z + b_d``. Each reader below
turns one library's files into our config and tensors, with that library's
conventions folded into the weights, so that :class:`~captum_salve.SparseAutoencoder`
gives the codes and reconstructions the library gives:

- a decoder stored as (d_latent, d_in) rows is transposed into our (d_in, d_latent) columns;
- an encoder that reads ``a`` itself rather than ``a − b_d`` gets ``E b_d`` added to its bias;
- a per-latent rescaling of the codes (SAELens's ``rescale_acts_by_decoder_norm`` and
  ``finetuning_scaling_factor``, overcomplete's dictionary normalisation and multiplier)
  is multiplied into the encoder rows and divided out of the decoder columns, or
  multiplied into the decoder columns;
- a threshold is mapped onto our JumpReLU's ``pre · [pre > θ]`` or BatchTopK's
  ``relu(pre) · [pre > θ]``: a library's ``relu(pre) · [pre > θ]`` per latent keeps
  ``max(θ, 0)``, and overcomplete's ``pre ≥ θ`` becomes ``pre >`` the float just below ``θ``;
- decoder columns keep the norms they were saved with: rescaling them would change
  which latents a TopK keeps.

A layout is recognised by the files present; what cannot be represented (a gated
encoder, a per-input normalisation, a skip connection, signed TopK codes, a
transcoder) is refused with an error that says why. Nothing is unpickled: ``.pt``
files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from captum_salve.files import atomic_path, ensure_directory
from captum_salve.sae.variants import BatchTopK, JumpReLU, ReLU, TopK
from captum_salve.sites import HEAD_INPUT, Site

if TYPE_CHECKING:
    from captum_salve.sae.model import SparseAutoencoder

__all__ = ["FOREIGN_LAYOUTS", "LAYOUTS", "Layout", "SaveLayout", "layout_of", "read_foreign", "write_saelens"]

Layout = Literal["captum_salve", "saelens", "sparsify", "dictionary_learning", "overcomplete"]
SaveLayout = Literal["captum_salve", "saelens"]

# The files that make each folder layout, the weights file last; overcomplete's is one state-dict file.
LAYOUTS: dict[str, tuple[str, str]] = {
    "captum_salve": ("cfg.json", "model.safetensors"),
    "saelens": ("cfg.json", "sae_weights.safetensors"),
    "sparsify": ("cfg.json", "sae.safetensors"),
    "dictionary_learning": ("config.json", "ae.pt"),
}
FOREIGN_LAYOUTS: tuple[str, ...] = ("saelens", "sparsify", "dictionary_learning", "overcomplete")
STATE_DICT_SUFFIXES = (".pt", ".pth", ".safetensors")
# The layout version written into a SAELens cfg.json: SAELens reads a config without
# one (or older than 6.0) as a pre-6.0 config and drops the metadata we keep there.
SAELENS_LAYOUT_VERSION = "6.0.0"
# SAELens per-input normalisations: they divide every input by its own norm or spread.
_PER_INPUT_NORMALISATIONS = ("constant_norm_rescale", "layer_norm")

Tensors = dict[str, Tensor]


def _layouts_text() -> str:
    folders = "; ".join(f"{' + '.join(files)} ({name})" for name, files in LAYOUTS.items())
    return f"{folders}; or the state-dict file itself ({', '.join(STATE_DICT_SUFFIXES)}, overcomplete)"


def layout_of(path: str | Path) -> Layout:
    """The layout of the SAE at ``path``, recognised by the files present.

    A folder holding ``model.safetensors`` is ours, ``sae_weights.safetensors`` SAELens's,
    ``sae.safetensors`` sparsify's, ``ae.pt`` dictionary_learning's; a single
    ``.pt``, ``.pth`` or ``.safetensors`` file is a plain state dict (overcomplete's),
    unless it is a folder layout's weights file with its config beside it.

    Raises:
        FileNotFoundError: Nothing is at ``path``, the folder holds none of the weights
            files, or a weights file's config is missing.
        ValueError: ``path`` is a file of a folder layout (pass the folder) or of an unknown kind.

    Example:
        >>> layout_of("saes/resnet18-head")
        'captum_salve'
    """
    path = Path(path)
    if path.is_file():
        for files in LAYOUTS.values():
            if path.name in files and all((path.parent / name).is_file() for name in files):
                raise ValueError(
                    f"{str(path)!r} is a file; pass the SAE's folder, which holds {files[0]} and {files[1]}"
                )
        if path.suffix in STATE_DICT_SUFFIXES:
            return "overcomplete"
        raise ValueError(f"{str(path)!r} is not an SAE file or folder; SAEs are read from {_layouts_text()}")
    if not path.is_dir():
        raise FileNotFoundError(f"{str(path)!r} does not exist; SAEs are read from {_layouts_text()}")
    for name, (config, weights) in LAYOUTS.items():
        if (path / weights).is_file():
            if not (path / config).is_file():
                raise FileNotFoundError(
                    f"{str(path / config)!r} is missing; a {name} SAE folder holds {config} and {weights}"
                )
            return name  # type: ignore[return-value]
    raise FileNotFoundError(
        f"{str(path / LAYOUTS['captum_salve'][1])!r} is missing, and so is every other layout's weights file; "
        f"an SAE folder holds {_layouts_text()}"
    )


def read_foreign(
    path: str | Path, layout: Layout, *, activation: str | None = None, k: int | None = None
) -> tuple[dict[str, Any], Tensors]:
    """Our config and state dict for an SAE that another library saved.

    Args:
        path: The folder (or, for overcomplete, the state-dict file).
        layout: Its layout (see :func:`layout_of`), one of :data:`FOREIGN_LAYOUTS`.
        activation: For overcomplete only, whose state dict does not record its class:
            ``"relu"`` (``SAE``) or ``"topk"`` (``TopKSAE``); a ``JumpSAE`` is recognised
            by its ``thresholds`` (``"jumprelu"``).
        k: For ``activation="topk"``, the ``top_k`` it was built with.

    Returns:
        (config, state): ``config`` holds our constructor arguments (``d_in``, ``d_latent``,
        ``activation`` and its settings, ``site``, ``model``) and ``metadata`` (with
        ``metadata["source"]`` naming the library and keeping its config); ``state``
        holds float32 tensors under our state-dict keys.

    Raises:
        ValueError: A file is not valid, a tensor is missing or misshapen, or the SAE
            computes something our model cannot represent.

    Example:
        >>> config, state = read_foreign("saelens-sae", "saelens")
        >>> config["activation"], state["decoder.weight"].shape
        ('topk', torch.Size([512, 4096]))
    """
    path = Path(path)
    if layout not in FOREIGN_LAYOUTS:
        raise ValueError(f"layout must be one of {FOREIGN_LAYOUTS}, got {layout!r}")
    if layout != "overcomplete" and (activation is not None or k is not None):
        raise ValueError(
            f"activation and k describe an overcomplete state dict, which does not record them; "
            f"a {layout} SAE's files record its own (got activation={activation!r}, k={k!r})"
        )
    if layout == "saelens":
        return _read_saelens(path)
    if layout == "sparsify":
        return _read_sparsify(path)
    if layout == "dictionary_learning":
        return _read_dictionary_learning(path)
    return _read_overcomplete(path, activation, k)


# ---- files ----------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(path)!r} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, got {type(value).__name__}")
    return value


def _read_tensors(path: Path) -> Tensors:
    """A flat state dict from a safetensors file or, without unpickling anything, a ``.pt`` file."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{str(path)!r} is not a valid safetensors file: {error}") from None
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{str(path)!r} holds Python objects other than tensors and plain containers; they are not "
            f"unpickled (torch.load(weights_only=True)): {str(error).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{str(path)!r} is not a readable torch file: {error}") from None
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise ValueError(f"{str(path)!r} must hold a state dict (names to tensors), got {type(value).__name__}")
    if "optimizer" in value and isinstance(value.get("ae"), dict):
        raise ValueError(
            f"{str(path)!r} is dictionary_learning's backup of a run still training (step {value.get('step')!r}), "
            "not a finished SAE; its weights may be on the scale of normalised activations"
        )
    others = sorted(key for key, tensor in value.items() if not isinstance(tensor, Tensor))
    if others:
        raise ValueError(f"{str(path)!r} must hold a state dict of tensors; {others} are not tensors")
    return value


def _tensor(state: Tensors, key: str, shape: tuple[int, ...], path: Path) -> Tensor:
    if key not in state:
        raise ValueError(f"{str(path)!r} lacks the tensor {key!r}; it holds {sorted(state)}")
    if tuple(state[key].shape) != shape:
        raise ValueError(f"{str(path)!r} tensor {key!r} has shape {tuple(state[key].shape)}, expected {shape}")
    return state[key]


def _refuse_others(state: Tensors, known: set[str], path: Path, what: str) -> None:
    others = sorted(set(state) - known)
    if others:
        raise ValueError(f"{str(path)!r} holds tensors {others} that {what} does not have; it cannot be read as one")


def _int_setting(value: Any, name: str, path: Path) -> int:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{str(path)!r} gives {name} = {value!r}; expected an integer >= 1")
    return value


# ---- the mapping onto our model -------------------------------------------------------------


def _our_state(
    encoder_weight: Tensor,
    encoder_bias: Tensor,
    decoder_weight: Tensor,
    decoder_bias: Tensor,
    *,
    subtracts_decoder_bias: bool,
    code_scale: Tensor | None = None,
) -> Tensors:
    """Our float32 tensors for a library's ``codes = act(s · (E (a − c) + b))``, ``a_hat = D (codes / s) + b_d``.

    ``c`` is ``b_d`` when ``subtracts_decoder_bias``, else 0; ``s`` is ``code_scale`` (per
    latent, default 1). Without folding (``c = b_d``, no scale) the tensors are copied
    bit for bit; folds are computed in float64 and rounded once.
    """
    if subtracts_decoder_bias and code_scale is None:
        tensors = (encoder_weight, encoder_bias, decoder_weight, decoder_bias)
        return dict(zip(_OUR_KEYS, (t.to(torch.float32).contiguous() for t in tensors), strict=True))
    e, b, d, b_d = (t.to(torch.float64) for t in (encoder_weight, encoder_bias, decoder_weight, decoder_bias))
    if not subtracts_decoder_bias:
        b = b + e @ b_d  # E a + b = E (a − b_d) + (b + E b_d)
    if code_scale is not None:
        s = code_scale.to(torch.float64)
        e, b, d = e * s[:, None], b * s, d / s
    return dict(zip(_OUR_KEYS, (t.to(torch.float32).contiguous() for t in (e, b, d, b_d)), strict=True))


_OUR_KEYS = ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias")


def _site(name: Any) -> str | None:
    """``name`` if it is one of our site keys (the head input or ``"<module>:<reducer>"``), else None."""
    if not isinstance(name, str) or not name:
        return None
    try:
        Site.from_key(name)
    except ValueError:
        return None
    return name


def _config(
    d_in: int,
    d_latent: int,
    activation: str,
    settings: dict[str, Any],
    source: dict[str, Any],
    *,
    site: Any = None,
    model: Any = None,
) -> dict[str, Any]:
    return {
        "d_in": d_in,
        "d_latent": d_latent,
        "activation": activation,
        **settings,
        "site": _site(site) or HEAD_INPUT,
        "model": model if isinstance(model, str) and model else None,
        "metadata": {"source": source},
    }


# ---- SAELens --------------------------------------------------------------------------------


def _read_saelens(folder: Path) -> tuple[dict[str, Any], Tensors]:
    """SAELens (``cfg.json`` + ``sae_weights.safetensors``), its 6.x configs and the flat ones before.

    Written from sae_lens/saes/{sae,standard_sae,topk_sae,jumprelu_sae}.py and
    sae_lens/loading/pretrained_sae_loaders.py (``handle_pre_6_0_config``,
    ``read_sae_components_from_disk``): ``W_enc`` (d_in, d_sae), ``W_dec`` (d_sae, d_in),
    ``sae_in = x − b_dec · apply_b_dec_to_input``. ``normalize_activations`` of
    ``"expected_average_only_in"`` (or ``"covariance_whitening"``) acts only while SAELens
    trains, which folds it into the weights when it ends; SAELens applies nothing to a
    folder it loads, and neither do we. Tensors of any float dtype are read exactly and
    computed in float32.
    """
    cfg_path, weights_path = (folder / name for name in LAYOUTS["saelens"])
    raw = _read_json(cfg_path)
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    # Before 6.0 the code function was named by activation_fn_str (activation_fn in older
    # files still) and a TopK SAE was architecture "standard" with activation_fn_kwargs {"k": ...}.
    function = raw.get("activation_fn", raw.get("activation_fn_str", "relu"))
    function_kwargs = raw.get("activation_fn_kwargs") or {}
    architecture = raw.get("architecture", "standard")
    if architecture == "standard" and function == "topk":
        architecture = "topk"
    if architecture not in _SAELENS_ACTIVATIONS:
        raise ValueError(
            f"{str(cfg_path)!r} has architecture {architecture!r}; the SAELens architectures read are "
            f"{tuple(_SAELENS_ACTIVATIONS)} (a gated SAE's two encoders, or a transcoder's output, have no "
            "counterpart here; a BatchTopK SAE is saved for inference as 'jumprelu')"
        )
    if architecture != "topk" and function != "relu":
        raise ValueError(
            f"{str(cfg_path)!r} has activation_fn {function!r}; a {architecture!r} SAE is read with 'relu' only"
        )
    normalisation = raw.get("normalize_activations")
    if normalisation in _PER_INPUT_NORMALISATIONS:
        raise ValueError(
            f"{str(cfg_path)!r} has normalize_activations {normalisation!r}: every input is divided by its own "
            "norm or spread, which a linear encoder cannot hold"
        )
    try:
        d_in, d_latent = int(raw["d_in"]), int(raw["d_sae"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{str(cfg_path)!r} must give d_in and d_sae as integers") from None
    state = _read_tensors(weights_path)
    w_enc = _tensor(state, "W_enc", (d_in, d_latent), weights_path)
    b_enc = _tensor(state, "b_enc", (d_latent,), weights_path)
    w_dec = _tensor(state, "W_dec", (d_latent, d_in), weights_path)
    b_dec = _tensor(state, "b_dec", (d_in,), weights_path)
    decoder = w_dec.T
    factor = state.get("finetuning_scaling_factor", state.get("scaling_factor"))
    known = {"W_enc", "b_enc", "W_dec", "b_dec", "finetuning_scaling_factor", "scaling_factor"}
    if architecture == "jumprelu":
        known.add("threshold")
    _refuse_others(state, known, weights_path, f"a SAELens {architecture!r} SAE")
    if factor is not None and not bool((factor == 1).all()):
        if not raw.get("finetuning_scaling_factor"):
            raise ValueError(f"{str(weights_path)!r} holds a scaling factor but {str(cfg_path)!r} does not apply it")
        decoder = decoder * _tensor(state, _factor_key(state), (d_latent,), weights_path)  # codes × f before W_dec
    settings: dict[str, Any] = {}
    code_scale = None
    if architecture == "topk":
        settings["k"] = _int_setting(raw.get("k", function_kwargs.get("k", 100)), "k", cfg_path)
        if raw.get("rescale_acts_by_decoder_norm"):
            code_scale = w_dec.to(torch.float64).norm(dim=1)  # codes of pre·‖d_l‖, decoded as codes/‖d_l‖
    ours = _our_state(
        w_enc.T,
        b_enc,
        decoder,
        b_dec,
        subtracts_decoder_bias=bool(raw.get("apply_b_dec_to_input", True)),
        code_scale=code_scale,
    )
    threshold = None
    if architecture == "jumprelu":  # relu(pre) · [pre > θ] = pre · [pre > max(θ, 0)]
        threshold = _tensor(state, "threshold", (d_latent,), weights_path).to(torch.float32)
        ours["code_activation.threshold"] = threshold.clamp_min(0)
    source = {"library": "saelens", "files": list(LAYOUTS["saelens"]), "config": raw}
    hook = meta.get("hook_name", raw.get("hook_name", raw.get("hook_point")))
    model = meta.get("model_name", raw.get("model_name"))
    config = _config(d_in, d_latent, _SAELENS_ACTIVATIONS[architecture], settings, source, site=hook, model=model)
    ours_block = meta.get("captum_salve")
    if isinstance(ours_block, dict):  # written by write_saelens
        _restore_ours(ours_block, config, ours, threshold)
    return config, ours


# SAELens inference architecture -> our variant (a BatchTopK SAE is saved for inference as "jumprelu").
_SAELENS_ACTIVATIONS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}
_OUR_OWN_KEYS = ("d_in", "d_latent", "activation", "site", "model", "metadata")


def _restore_ours(block: dict[str, Any], config: dict[str, Any], state: Tensors, threshold: Tensor | None) -> None:
    """Our site, model, metadata and variant settings back from what :func:`write_saelens` kept.

    The settings come back only where they describe the codes the SAELens fields
    define (the same variant and ``k``); a BatchTopK, written as a JumpReLU with one
    threshold for every latent, comes back as a BatchTopK.
    """
    model = block.get("model")
    config.update(site=_site(block.get("site")) or HEAD_INPUT, model=model if isinstance(model, str) else None)
    config["metadata"] = dict(block.get("metadata") or {})
    settings = {key: value for key, value in block.items() if key not in _OUR_OWN_KEYS}
    if block.get("activation") == "batchtopk" and threshold is not None and bool((threshold == threshold[0]).all()):
        config.update(activation="batchtopk", **settings)
        state["code_activation.threshold"] = threshold[0].clone()
    elif block.get("activation") == config["activation"] and settings.get("k") == config.get("k"):
        config.update(settings)


def _factor_key(state: Tensors) -> str:
    return "finetuning_scaling_factor" if "finetuning_scaling_factor" in state else "scaling_factor"


def write_saelens(sae: SparseAutoencoder, directory: str | Path) -> Path:
    """Write ``sae`` as SAELens writes an SAE: ``cfg.json`` and ``sae_weights.safetensors`` (each atomically).

    The config is SAELens 6's: ``architecture`` ``"standard"`` for ReLU codes,
    ``"topk"`` with ``k`` (an archetypal SAE's computed atoms as its decoder),
    ``"jumprelu"`` for JumpReLU and BatchTopK codes (SAELens saves a BatchTopK SAE for
    inference as a JumpReLU with its one threshold for every latent; a Matryoshka SAE
    infers as one); ``apply_b_dec_to_input`` true, no normalisation. Read back, an
    archetypal SAE is the TopK SAE and a Matryoshka SAE the JumpReLU SAE that compute
    its codes and reconstructions. Our site and model
    go to ``metadata.hook_name`` and ``metadata.model_name``, and our config and
    metadata to ``metadata.captum_salve``, from which
    :meth:`~captum_salve.SparseAutoencoder.load` restores them.

    Raises:
        ValueError: The SAE's codes have no SAELens architecture: ``"linear"`` (SAELens
            always applies a ReLU), or a JumpReLU with a threshold below 0 (its negative
            codes would be zeroed by SAELens's ReLU).

    Example:
        >>> write_saelens(sae, "for-saelens")    # SAE.load_from_disk("for-saelens") in SAELens
        PosixPath('for-saelens')
    """
    tensors = {
        "W_enc": sae.encoder.weight.detach().T.contiguous(),
        "b_enc": sae.encoder.bias.detach().clone(),
        "W_dec": sae.decoder.weight.detach().T.contiguous(),
        "b_dec": sae.decoder.bias.detach().clone(),
    }
    extra: dict[str, Any] = {}
    variant = sae.code_activation
    if isinstance(variant, ReLU):
        architecture = "standard"
    elif isinstance(variant, (JumpReLU, BatchTopK)):  # a Matryoshka SAE infers as the BatchTopK it is
        architecture, threshold = "jumprelu", variant.threshold.detach()
        if isinstance(variant, JumpReLU) and bool((threshold < 0).any()):
            raise ValueError(
                "a JumpReLU SAE with a threshold below 0 keeps negative codes, which SAELens's JumpReLU "
                "(relu(pre) · [pre > θ]) zeroes; save it with layout='captum_salve'"
            )
        tensors["threshold"] = threshold.expand(sae.d_latent).clone()  # batchtopk: relu(pre) · [pre > θ] as is
    elif isinstance(variant, TopK):  # an archetypal SAE's atoms are written as the decoder they compute
        architecture, extra = "topk", {"k": variant.k, "rescale_acts_by_decoder_norm": False}
    else:
        raise ValueError(
            f"an SAE with activation {sae.activation!r} has no SAELens architecture (SAELens writes ReLU codes "
            "as 'standard', the TopK family as 'topk', JumpReLU and BatchTopK (Matryoshka) codes as 'jumprelu'); "
            "save it with layout='captum_salve'"
        )
    cfg = {
        "d_in": sae.d_in,
        "d_sae": sae.d_latent,
        "dtype": str(sae.decoder.bias.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "architecture": architecture,
        **extra,
        "metadata": {
            "sae_lens_version": SAELENS_LAYOUT_VERSION,
            "model_name": sae.model,
            "hook_name": sae.site,
            "captum_salve": {**sae.config(), "metadata": sae.metadata},
        },
    }
    directory = ensure_directory(directory)
    config_name, weights_name = LAYOUTS["saelens"]
    with atomic_path(directory / weights_name) as tmp:
        save_file({name: t.cpu() for name, t in tensors.items()}, str(tmp))
    with atomic_path(directory / config_name) as tmp:
        tmp.write_text(json.dumps(cfg, indent=2))
    return directory


# ---- sparsify -------------------------------------------------------------------------------


def _read_sparsify(folder: Path) -> tuple[dict[str, Any], Tensors]:
    """EleutherAI sparsify (``cfg.json`` + ``sae.safetensors``), also the ``sae`` package before its rename.

    Written from sparsify/sparse_coder.py and sparsify/config.py: ``encoder`` is an
    ``nn.Linear``, ``W_dec`` is (num_latents, d_in), ``encode`` takes the TopK of
    ``relu(encoder(x − b_dec))``; ``decode`` adds ``b_dec``.
    """
    cfg_path, weights_path = (folder / name for name in LAYOUTS["sparsify"])
    raw = _read_json(cfg_path)
    if raw.get("transcode"):
        raise ValueError(f"{str(cfg_path)!r} is a transcoder (it predicts another module's output), not an autoencoder")
    if raw.get("skip_connection"):
        raise ValueError(f"{str(cfg_path)!r} has a skip connection (W_skip), which our model does not have")
    if raw.get("signed"):
        raise ValueError(f"{str(cfg_path)!r} has signed codes (TopK of |pre|), which our 'topk' cannot represent")
    if raw.get("activation", "topk") != "topk":
        raise ValueError(f"{str(cfg_path)!r} has activation {raw.get('activation')!r}; only 'topk' is read")
    try:
        d_in = int(raw["d_in"])
        d_latent = int(raw.get("num_latents") or d_in * int(raw.get("expansion_factor", 32)))
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"{str(cfg_path)!r} must give d_in (and num_latents or expansion_factor) as integers"
        ) from None
    k = _int_setting(raw.get("k", 32), "k", cfg_path)
    state = _read_tensors(weights_path)
    if "W_dec" not in state:
        raise ValueError(f"{str(weights_path)!r} has no decoder (W_dec): it was saved from an encoder-only model")
    _refuse_others(state, {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}, weights_path, "a sparsify SAE")
    ours = _our_state(
        _tensor(state, "encoder.weight", (d_latent, d_in), weights_path),
        _tensor(state, "encoder.bias", (d_latent,), weights_path),
        _tensor(state, "W_dec", (d_latent, d_in), weights_path).T,
        _tensor(state, "b_dec", (d_in,), weights_path),
        subtracts_decoder_bias=True,
    )
    # The folder is named after the hookpoint (a module of a language model), not one of our sites.
    source = {"library": "sparsify", "files": list(LAYOUTS["sparsify"]), "config": raw, "hookpoint": folder.name}
    return _config(d_in, d_latent, "topk", {"k": k}, source), ours


# ---- dictionary_learning --------------------------------------------------------------------


_DICTIONARY_LEARNING_CLASSES = (
    "AutoEncoder",
    "AutoEncoderNew",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE",
    "JumpReluAutoEncoder",
)


def _read_dictionary_learning(folder: Path) -> tuple[dict[str, Any], Tensors]:
    """saprmarks/dictionary_learning (``ae.pt`` + ``config.json``), by the config's ``trainer.dict_class``.

    Written from dictionary_learning/dictionary.py (``AutoEncoder``: ``encoder(x − bias)``,
    ``decoder(f) + bias``; ``AutoEncoderNew``: ``encoder(x)``, ``decoder(f)`` with its own
    bias; ``JumpReluAutoEncoder``: ``relu(pre · [pre > θ])`` of ``pre = x W_enc + b_enc``,
    ``b_dec`` not subtracted) and dictionary_learning/trainers/ (``AutoEncoderTopK``: TopK
    of ``relu(encoder(x − b_dec))``; ``BatchTopKSAE`` and ``MatryoshkaBatchTopKSAE``:
    ``relu(pre) · [relu(pre) > θ]``, their ``encode`` outside training). ``training.py``
    saves the final weights with any activation normalisation already undone
    (``scale_biases``).
    """
    cfg_path, weights_path = (folder / name for name in LAYOUTS["dictionary_learning"])
    raw = _read_json(cfg_path)
    trainer = raw.get("trainer") if isinstance(raw.get("trainer"), dict) else {}
    dict_class = trainer.get("dict_class")
    state = _read_tensors(weights_path)
    source = {"library": "dictionary_learning", "files": list(LAYOUTS["dictionary_learning"]), "config": raw}
    model = trainer.get("lm_name")
    if dict_class in ("AutoEncoder", "AutoEncoderNew"):
        bias_key = "bias" if dict_class == "AutoEncoder" else "decoder.bias"
        d_latent, d_in = _shape_of(state, "encoder.weight", weights_path)
        _refuse_others(state, {"encoder.weight", "encoder.bias", "decoder.weight", bias_key}, weights_path, dict_class)
        ours = _our_state(
            state["encoder.weight"],
            _tensor(state, "encoder.bias", (d_latent,), weights_path),
            _tensor(state, "decoder.weight", (d_in, d_latent), weights_path),
            _tensor(state, bias_key, (d_in,), weights_path),
            subtracts_decoder_bias=dict_class == "AutoEncoder",
        )
        return _config(d_in, d_latent, "relu", {}, source, model=model), ours
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE"):  # nn.Linear encoder and decoder
        d_latent, d_in = _shape_of(state, "encoder.weight", weights_path)
        keys = {"encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "k", "threshold"}
        _refuse_others(state, keys, weights_path, dict_class)
        encoder, decoder = state["encoder.weight"], _tensor(state, "decoder.weight", (d_in, d_latent), weights_path)
        encoder_bias = _tensor(state, "encoder.bias", (d_latent,), weights_path)
    elif dict_class in ("JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE"):  # W_enc (d_in, d), W_dec (d, d_in)
        d_in, d_latent = _shape_of(state, "W_enc", weights_path)
        keys = {"W_enc", "b_enc", "W_dec", "b_dec", "threshold", "k", "group_sizes"}
        _refuse_others(state, keys, weights_path, dict_class)
        encoder, decoder = state["W_enc"].T, _tensor(state, "W_dec", (d_latent, d_in), weights_path).T
        encoder_bias = _tensor(state, "b_enc", (d_latent,), weights_path)
    else:
        raise ValueError(
            f"{str(cfg_path)!r} gives trainer.dict_class {dict_class!r}; the dictionary_learning classes read are "
            f"{_DICTIONARY_LEARNING_CLASSES} (a GatedAutoEncoder's two encoders have no counterpart here)"
        )
    ours = _our_state(
        encoder,
        encoder_bias,
        decoder,
        _tensor(state, "b_dec", (d_in,), weights_path),
        # JumpReluAutoEncoder.apply_b_dec_to_input is False unless set after loading from SAELens; it is not saved
        subtracts_decoder_bias=dict_class != "JumpReluAutoEncoder",
    )
    if dict_class == "JumpReluAutoEncoder":  # relu(pre · [pre > θ]) = pre · [pre > max(θ, 0)]
        threshold = _tensor(state, "threshold", (d_latent,), weights_path)
        ours["code_activation.threshold"] = threshold.to(torch.float32).clamp_min(0)
        return _config(d_in, d_latent, "jumprelu", {}, source, model=model), ours
    k = _int_setting(state.get("k", trainer.get("k")), "k", weights_path)
    if dict_class == "AutoEncoderTopK":
        return _config(d_in, d_latent, "topk", {"k": k}, source, model=model), ours
    # relu(pre) · [relu(pre) > θ] = relu(pre) · [pre > θ] for every θ: our BatchTopK's inference codes
    ours["code_activation.threshold"] = _tensor(state, "threshold", (), weights_path).to(torch.float32).clone()
    return _config(d_in, d_latent, "batchtopk", {"k": k}, source, model=model), ours


def _shape_of(state: Tensors, key: str, path: Path) -> tuple[int, int]:
    if key not in state or state[key].dim() != 2:
        raise ValueError(f"{str(path)!r} lacks the 2-D tensor {key!r}; it holds {sorted(state)}")
    rows, columns = state[key].shape
    return rows, columns


# ---- overcomplete ---------------------------------------------------------------------------


def _read_overcomplete(path: Path, activation: str | None, k: int | None) -> tuple[dict[str, Any], Tensors]:
    """An overcomplete SAE's state dict (``torch.save(sae.state_dict(), ...)`` or safetensors).

    Written from overcomplete/sae/base.py, dictionary.py, modules.py, topk_sae.py and
    jump_sae.py: codes are ``relu(encoder(x))`` (``TopKSAE``: their TopK; ``JumpSAE``:
    those at least ``exp(thresholds)``), reconstructions ``codes @ dictionary`` with no
    bias, and the dictionary in use is ``normalize_l2(_weights) · exp(multiplier)``
    (``DictionaryLayer.get_dictionary``, with the default normalisation ``"l2"``: the
    state dict does not record another). The encoder is the default ``MLPEncoder`` of
    ``encoder_module="linear"`` (one ``nn.Linear``) or a ``TieableEncoder``
    (``SAE.untied()``, or ``SAE.tied()``, whose weight is the dictionary's transpose).
    """
    state = _read_tensors(path)
    d_latent, d_in = _shape_of(state, "dictionary._weights", path)
    weights = state["dictionary._weights"]
    multiplier = _tensor(state, "dictionary.multiplier", (), path)
    dictionary = weights / (torch.norm(weights, p=2, dim=1, keepdim=True) + 1e-8) * torch.exp(multiplier)
    if "encoder.final_block.0.weight" in state:
        weight_key, bias_key = "encoder.final_block.0.weight", "encoder.final_block.0.bias"
    elif "encoder.weight" in state:
        weight_key, bias_key = "encoder.weight", "encoder.bias"
    else:
        weight_key, bias_key = None, "encoder.bias"
    known = {
        "dictionary._weights",
        "dictionary.multiplier",
        "thresholds",
        bias_key,
        *([weight_key] if weight_key else []),
    }
    _refuse_others(state, known, path, "an overcomplete SAE with a linear encoder and an l2 dictionary")
    encoder_weight = _tensor(state, weight_key, (d_latent, d_in), path) if weight_key else dictionary
    bias = _tensor(state, bias_key, (d_latent,), path) if bias_key in state else torch.zeros(d_latent)
    jump = "thresholds" in state  # a JumpSAE
    activation = "jumprelu" if jump and activation is None else activation
    if activation not in ("relu", "topk", "jumprelu") or (activation == "jumprelu") != jump:
        wanted = (
            "its 'thresholds' make it a JumpSAE, activation='jumprelu'"
            if jump
            else "pass activation='relu' for an SAE or activation='topk' with k=<its top_k> for a TopKSAE"
        )
        raise ValueError(
            f"{str(path)!r} is an overcomplete state dict, which does not record its class: {wanted}; got "
            f"activation={activation!r} (a BatchTopKSAE keeps its threshold outside its state dict: not readable)"
        )
    if k is not None and activation != "topk":
        raise ValueError(f"k goes with activation='topk', got k={k!r} with activation={activation!r}")
    settings = {"k": _int_setting(k, "k (the TopKSAE's top_k)", path)} if activation == "topk" else {}
    ours = _our_state(encoder_weight, bias, dictionary.T, torch.zeros(d_in), subtracts_decoder_bias=True)
    if jump:  # codes kept where relu(pre) ≥ exp(t) > 0, i.e. pre > the float just below exp(t)
        floor = torch.exp(_tensor(state, "thresholds", (d_latent,), path).to(torch.float32))
        ours["code_activation.threshold"] = torch.nextafter(floor, torch.full_like(floor, -torch.inf))
    kind = {"relu": "SAE", "topk": "TopKSAE", "jumprelu": "JumpSAE"}[activation]
    source = {"library": "overcomplete", "files": [path.name], "class": kind}
    return _config(d_in, d_latent, activation, settings, source), ours

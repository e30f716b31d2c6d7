"""SAEs saved by other libraries: each layout written here as the library writes it, read back to its numbers.

Each test writes the files with the library's key names, shapes and dtypes (the
source read is cited beside it, from the repositories at the commits named there),
loads them with ``SparseAutoencoder.load`` and compares our codes and
reconstructions with the library's forward pass, written out independently below.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from captum_salve import SparseAutoencoder
from captum_salve.sae.formats import layout_of

D_IN, D_SAE = 6, 10


def _random(*shape: int, seed: int) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _inputs() -> Tensor:
    return _random(32, D_IN, seed=99) * 2 + 0.5


def _topk_then_relu(pre: Tensor, k: int) -> Tensor:
    values, index = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, index, values.relu())


def _assert_same_numbers(sae: SparseAutoencoder, x: Tensor, codes: Tensor, reconstruction: Tensor) -> None:
    with torch.no_grad():
        ours = sae.encode(x)
        torch.testing.assert_close(ours, codes)
        torch.testing.assert_close(sae.decode(codes), reconstruction)
        assert torch.equal(ours != 0, codes != 0)  # the same latents fire


# ---- SAELens (jbloomAus/SAELens at 91ca16cc, 6.18.0; 5.11.0 at a616abc5) ----------------------


def _saelens_tensors(seed: int = 0) -> dict[str, Tensor]:
    # sae_lens/saes/sae.py:523 save_file(state_dict): W_enc (d_in, d_sae), W_dec (d_sae, d_in), float32
    return {
        "W_enc": _random(D_IN, D_SAE, seed=seed),
        "b_enc": _random(D_SAE, seed=seed + 1) * 0.1,
        "W_dec": _random(D_SAE, D_IN, seed=seed + 2) * 0.7,
        "b_dec": _random(D_IN, seed=seed + 3),
    }


def _saelens_v6_cfg(architecture: str, **fields) -> dict:
    # sae_lens/saes/sae.py SAEConfig.to_dict (fields, then metadata and architecture), written at :529
    return {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.18.0",
            "sae_lens_training_version": "6.18.0",
            "model_name": "gpt2",
            "hook_name": "blocks.3.hook_resid_post",
        },
        "architecture": architecture,
        **fields,
    }


def _write_saelens(folder: Path, cfg: dict, tensors: dict[str, Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def _saelens_forward(cfg: dict, t: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """SAELens's encode and decode of one batch, as sae_lens/saes/*.py compute them."""
    sae_in = x - t["b_dec"] * cfg.get("apply_b_dec_to_input", True)  # sae.py:473
    hidden_pre = sae_in @ t["W_enc"] + t["b_enc"]  # standard_sae.py:66
    norms = t["W_dec"].norm(dim=-1)
    rescale = cfg.get("rescale_acts_by_decoder_norm", False)
    if rescale:
        hidden_pre = hidden_pre * norms  # topk_sae.py:248
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    topk = cfg["architecture"] == "topk" or cfg.get("activation_fn_str") == "topk"
    codes = _topk_then_relu(hidden_pre, k) if topk else hidden_pre.relu()  # topk_sae.py:69-70
    if cfg["architecture"] == "jumprelu":
        codes = codes * (hidden_pre > t["threshold"])  # jumprelu_sae.py:144-148
    acts = codes / norms if rescale else codes  # topk_sae.py:263
    if cfg.get("finetuning_scaling_factor"):
        acts = acts * t["scaling_factor"]  # 5.11.0 sae.py:459, the factor renamed at loading (:364)
    return codes, acts @ t["W_dec"] + t["b_dec"]  # standard_sae.py:78


# expected_average_only_in scales inputs only while SAELens trains; the factor is folded in when training ends
@pytest.mark.parametrize("normalize_activations", ["none", "expected_average_only_in"])
def test_a_saelens_standard_sae_gives_saelens_codes_and_reconstructions(tmp_path, normalize_activations):
    cfg, tensors = _saelens_v6_cfg("standard", normalize_activations=normalize_activations), _saelens_tensors()
    sae = SparseAutoencoder.load(_write_saelens(tmp_path, cfg, tensors))
    assert (sae.activation, sae.d_in, sae.d_latent) == ("relu", D_IN, D_SAE)
    x = _inputs()
    _assert_same_numbers(sae, x, *_saelens_forward(cfg, tensors, x))
    assert torch.equal(sae.decoder_weight, tensors["W_dec"].T)  # kept as saved: columns of norm ≠ 1
    assert not torch.allclose(sae.decoder_weight.norm(dim=0), torch.ones(D_SAE))


def test_a_saelens_topk_sae_with_decoder_norm_rescaling_and_no_input_centring(tmp_path):
    cfg = _saelens_v6_cfg("topk", k=3, rescale_acts_by_decoder_norm=True, apply_b_dec_to_input=False)
    tensors = _saelens_tensors(seed=10)
    sae = SparseAutoencoder.load(_write_saelens(tmp_path, cfg, tensors))
    assert (sae.activation, sae.code_activation.k) == ("topk", 3)
    x = _inputs()
    _assert_same_numbers(sae, x, *_saelens_forward(cfg, tensors, x))


def test_a_pre_6_saelens_config_with_a_finetuning_scaling_factor(tmp_path):
    # 5.11.0 sae.py SAEConfig.to_dict: flat fields, the code function in activation_fn_str
    cfg = {
        "architecture": "standard",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "model_name": "gpt2-small",
        "hook_name": "blocks.8.hook_resid_pre",
        "hook_layer": 8,
        "hook_head_index": None,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 4},
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": True,
        "sae_lens_training_version": "3.13.0",
        "normalize_activations": "none",
    }
    tensors = {**_saelens_tensors(seed=20), "scaling_factor": _random(D_SAE, seed=24).abs() + 0.5}
    sae = SparseAutoencoder.load(_write_saelens(tmp_path, cfg, tensors))
    assert (sae.activation, sae.code_activation.k, sae.model) == ("topk", 4, "gpt2-small")
    x = _inputs()
    _assert_same_numbers(sae, x, *_saelens_forward(cfg, tensors, x))


def test_a_saelens_jumprelu_sae_with_thresholds_of_either_sign(tmp_path):
    # jumprelu_sae.py:126 threshold (d_sae,); Gemma Scope's files do not subtract b_dec
    cfg = _saelens_v6_cfg("jumprelu", apply_b_dec_to_input=False)
    tensors = {**_saelens_tensors(seed=40), "threshold": _random(D_SAE, seed=44)}  # some below 0
    sae = SparseAutoencoder.load(_write_saelens(tmp_path, cfg, tensors))
    assert sae.activation == "jumprelu"
    x = _inputs()
    _assert_same_numbers(sae, x, *_saelens_forward(cfg, tensors, x))


def test_a_saelens_hook_becomes_our_site_only_when_it_is_one_of_our_site_keys(tmp_path):
    tensors = _saelens_tensors()
    theirs = SparseAutoencoder.load(_write_saelens(tmp_path / "a", _saelens_v6_cfg("standard"), tensors))
    assert (theirs.site, theirs.model) == ("head_input", "gpt2")
    source = theirs.metadata["source"]
    assert source["library"] == "saelens" and source["config"]["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    cfg = _saelens_v6_cfg("standard")
    cfg["metadata"]["hook_name"] = "layer3:spatial_mean"
    assert SparseAutoencoder.load(_write_saelens(tmp_path / "b", cfg, tensors)).site == "layer3:spatial_mean"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architecture": "gated"}, "architecture 'gated'; the SAELens architectures read are"),
        ({"normalize_activations": "layer_norm"}, "every input is divided by its own norm or spread"),
        ({"d_sae": D_SAE + 1}, r"tensor 'W_enc' has shape \(6, 10\), expected \(6, 11\)"),
    ],
)
def test_saelens_sae_that_cannot_be_represented_is_refused(tmp_path, change, message):
    _write_saelens(tmp_path, {**_saelens_v6_cfg("standard"), **change}, _saelens_tensors())
    with pytest.raises(ValueError, match=message):
        SparseAutoencoder.load(tmp_path)


@pytest.mark.parametrize(
    ("activation", "k", "architecture"),
    [("relu", None, "standard"), ("topk", 3, "topk"), ("jumprelu", None, "jumprelu"), ("batchtopk", 3, "jumprelu")],
)
def test_saving_in_the_saelens_layout_loads_back_bit_for_bit(tmp_path, activation, k, architecture):
    sae = SparseAutoencoder(D_IN, D_SAE, activation, k=k, site="layer3:spatial_mean", model="resnet18")
    with torch.no_grad():
        sae.encoder.bias.normal_()
        sae.decoder.bias.normal_()
        if activation in ("jumprelu", "batchtopk"):
            sae.code_activation.threshold.copy_(_random(*sae.code_activation.threshold.shape, seed=5).abs())
    sae.metadata["note"] = "kept"
    folder = sae.save(tmp_path / activation, layout="saelens")
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == architecture and cfg.get("k") == (k if activation == "topk" else None)
    assert cfg["metadata"]["hook_name"] == "layer3:spatial_mean" and cfg["metadata"]["sae_lens_version"] >= "6"
    loaded = SparseAutoencoder.load(folder)
    assert loaded.config() == sae.config() and loaded.metadata == {"note": "kept"}
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), sae.encode(x))
        assert torch.equal(loaded.decode(sae.encode(x)), sae.decode(sae.encode(x)))
    written = load_file(str(folder / "sae_weights.safetensors"))
    _assert_same_numbers(loaded, x, *_saelens_forward(cfg, written, x))  # SAELens's formula on the files agrees


@pytest.mark.parametrize(
    "activation, architecture, read_as", [("matryoshka", "jumprelu", "jumprelu"), ("archetypal", "topk", "topk")]
)
def test_matryoshka_and_archetypal_saes_are_saved_as_the_saelens_sae_that_computes_their_codes(
    tmp_path, activation, architecture, read_as
):
    sae = SparseAutoencoder(D_IN, D_SAE, activation, k=3)
    with torch.no_grad():
        sae.encoder.bias.copy_(_random(D_SAE, seed=4))
        if activation == "matryoshka":
            sae.code_activation.threshold.fill_(0.1)
    folder = sae.save(tmp_path / activation, layout="saelens")
    assert json.loads((folder / "cfg.json").read_text())["architecture"] == architecture
    loaded = SparseAutoencoder.load(folder)
    x = _inputs()
    with torch.no_grad():
        assert loaded.activation == read_as and torch.equal(loaded.encode(x), sae.encode(x))
        assert torch.equal(loaded.decoder_weight, sae.decoder_weight)  # an archetypal SAE's computed atoms
        # the same numbers; the archetypal atoms are computed in a transposed layout, so the product rounds apart
        torch.testing.assert_close(loaded.decode(sae.encode(x)), sae.decode(sae.encode(x)), rtol=1e-6, atol=1e-6)


def test_an_sae_without_a_saelens_architecture_is_not_saved_in_that_layout(tmp_path):
    with pytest.raises(ValueError, match="activation 'linear' has no SAELens architecture"):
        SparseAutoencoder(D_IN, D_SAE, "linear").save(tmp_path, layout="saelens")
    below_zero = SparseAutoencoder(D_IN, D_SAE, "jumprelu")
    with torch.no_grad():
        below_zero.code_activation.threshold[2] = -0.5
    with pytest.raises(ValueError, match="threshold below 0 keeps negative codes, which SAELens's JumpReLU"):
        below_zero.save(tmp_path, layout="saelens")
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match=r"layout must be one of \('captum_salve', 'saelens'\), got 'sparsify'"):
        SparseAutoencoder(D_IN, D_SAE).save(tmp_path, layout="sparsify")


# ---- sparsify (EleutherAI/sparsify at 9d3b136) ----------------------------------------------


def _sparsify_cfg(**fields) -> dict:
    # sparsify/config.py SparseCoderConfig fields, with d_in added by sparse_coder.py:176
    return {
        "activation": "topk",
        "expansion_factor": 32,
        "normalize_decoder": True,
        "num_latents": D_SAE,
        "k": 3,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D_IN,
        **fields,
    }


def _sparsify_tensors() -> dict[str, Tensor]:
    # sparse_coder.py:171 save_model(self): encoder is nn.Linear, W_dec (num_latents, d_in) (:63), b_dec (d_in,)
    return {
        "encoder.weight": _random(D_SAE, D_IN, seed=30),
        "encoder.bias": _random(D_SAE, seed=31) * 0.1,
        "W_dec": _random(D_SAE, D_IN, seed=32) * 0.5,
        "b_dec": _random(D_IN, seed=33),
    }


def _write_sparsify(folder: Path, cfg: dict, tensors: dict[str, Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # sparsify saves in the model's dtype
def test_a_sparsify_sae_gives_sparsify_codes_and_reconstructions(tmp_path, dtype):
    saved = {name: t.to(dtype) for name, t in _sparsify_tensors().items()}
    sae = SparseAutoencoder.load(_write_sparsify(tmp_path / "layers.6", _sparsify_cfg(), saved))
    tensors = {name: t.float() for name, t in saved.items()}  # read exactly, computed in float32
    assert (sae.activation, sae.code_activation.k, sae.site) == ("topk", 3, "head_input")
    assert sae.metadata["source"]["hookpoint"] == "layers.6"
    x = _inputs()
    # sparse_coder.py:192 x − b_dec, then fused_encoder.py:29 relu(linear(...)) and :33 its TopK
    pre_acts = torch.relu((x - tensors["b_dec"]) @ tensors["encoder.weight"].T + tensors["encoder.bias"])
    values, index = pre_acts.topk(3, dim=-1)
    codes = torch.zeros_like(pre_acts).scatter(-1, index, values)
    reconstruction = codes @ tensors["W_dec"] + tensors["b_dec"]  # decode: embedding_bag of W_dec rows, + b_dec (:202)
    _assert_same_numbers(sae, x, codes, reconstruction)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"signed": True}, "signed codes"),
        ({"skip_connection": True}, "skip connection"),
        ({"transcode": True}, "is a transcoder"),
        ({"activation": "groupmax"}, "activation 'groupmax'; only 'topk' is read"),
    ],
)
def test_a_sparsify_sae_that_cannot_be_represented_is_refused(tmp_path, change, message):
    _write_sparsify(tmp_path, _sparsify_cfg(**change), _sparsify_tensors())
    with pytest.raises(ValueError, match=message):
        SparseAutoencoder.load(tmp_path)


def test_a_sparsify_encoder_without_its_decoder_is_refused(tmp_path):
    tensors = _sparsify_tensors()
    del tensors["W_dec"]
    _write_sparsify(tmp_path, _sparsify_cfg(), tensors)
    with pytest.raises(ValueError, match="has no decoder"):
        SparseAutoencoder.load(tmp_path)


# ---- dictionary_learning (saprmarks/dictionary_learning at 60ec6bf) --------------------------


def _write_dictionary_learning(folder: Path, dict_class: str, state: dict[str, Tensor], **trainer) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    # training.py:266 t.save(state dict) as ae.pt; :181 config.json = {"trainer": trainer.config, "buffer": ...}
    torch.save(state, folder / "ae.pt")
    config = {"trainer": {"dict_class": dict_class, "lm_name": "EleutherAI/pythia-70m-deduped", "layer": 3, **trainer}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_dictionary_learning_autoencoder_subtracts_its_bias_before_encoding(tmp_path):
    # dictionary.py:52 bias (activation_dim,); encoder nn.Linear; decoder nn.Linear without bias
    state = {
        "bias": _random(D_IN, seed=40),
        "encoder.weight": _random(D_SAE, D_IN, seed=41),
        "encoder.bias": _random(D_SAE, seed=42) * 0.1,
        "decoder.weight": _random(D_IN, D_SAE, seed=43) * 0.3,
    }
    sae = SparseAutoencoder.load(_write_dictionary_learning(tmp_path, "AutoEncoder", state))
    assert (sae.activation, sae.model) == ("relu", "EleutherAI/pythia-70m-deduped")
    x = _inputs()
    codes = torch.relu((x - state["bias"]) @ state["encoder.weight"].T + state["encoder.bias"])  # :65
    _assert_same_numbers(sae, x, codes, codes @ state["decoder.weight"].T + state["bias"])  # :68


def test_a_dictionary_learning_autoencoder_new_encodes_without_subtracting(tmp_path):
    state = {  # dictionary.py:384 AutoEncoderNew: encoder and decoder nn.Linear, both with bias
        "encoder.weight": _random(D_SAE, D_IN, seed=50),
        "encoder.bias": _random(D_SAE, seed=51) * 0.1,
        "decoder.weight": _random(D_IN, D_SAE, seed=52) * 0.3,
        "decoder.bias": _random(D_IN, seed=53),
    }
    sae = SparseAutoencoder.load(_write_dictionary_learning(tmp_path, "AutoEncoderNew", state))
    x = _inputs()
    codes = torch.relu(x @ state["encoder.weight"].T + state["encoder.bias"])  # :409
    _assert_same_numbers(sae, x, codes, codes @ state["decoder.weight"].T + state["decoder.bias"])  # :412


def test_a_dictionary_learning_topk_autoencoder_keeps_its_k(tmp_path):
    state = {  # trainers/top_k.py:69-81: k and threshold buffers, decoder nn.Linear(bias=False), b_dec
        "k": torch.tensor(4, dtype=torch.int),
        "threshold": torch.tensor(0.25),
        "decoder.weight": _random(D_IN, D_SAE, seed=60) * 0.3,
        "encoder.weight": _random(D_SAE, D_IN, seed=61),
        "encoder.bias": _random(D_SAE, seed=62) * 0.1,
        "b_dec": _random(D_IN, seed=63),
    }
    sae = SparseAutoencoder.load(_write_dictionary_learning(tmp_path, "AutoEncoderTopK", state, k=4))
    assert (sae.activation, sae.code_activation.k) == ("topk", 4)
    x = _inputs()
    post_relu = torch.relu((x - state["b_dec"]) @ state["encoder.weight"].T + state["encoder.bias"])  # :86
    values, index = post_relu.topk(4, dim=-1)
    codes = torch.zeros_like(post_relu).scatter(-1, index, values)
    _assert_same_numbers(sae, x, codes, codes @ state["decoder.weight"].T + state["b_dec"])  # :120


def test_a_dictionary_learning_jumprelu_autoencoder_does_not_subtract_b_dec(tmp_path):
    state = {  # dictionary.py:306 threshold (dict_size,), W_enc (activation_dim, dict_size), W_dec (dict_size, ...)
        "W_enc": _random(D_IN, D_SAE, seed=80),
        "b_enc": _random(D_SAE, seed=81) * 0.1,
        "W_dec": _random(D_SAE, D_IN, seed=82) * 0.3,
        "b_dec": _random(D_IN, seed=83),
        "threshold": _random(D_SAE, seed=84),  # some below 0
    }
    sae = SparseAutoencoder.load(_write_dictionary_learning(tmp_path, "JumpReluAutoEncoder", state))
    assert sae.activation == "jumprelu"
    x = _inputs()
    pre_jump = x @ state["W_enc"] + state["b_enc"]  # :316, apply_b_dec_to_input False (:308)
    codes = torch.relu(pre_jump * (pre_jump > state["threshold"]))  # :318
    _assert_same_numbers(sae, x, codes, codes @ state["W_dec"] + state["b_dec"])  # :326


@pytest.mark.parametrize("threshold", [0.4, -1.0])  # trained, and the -1 it starts at
@pytest.mark.parametrize("dict_class", ["BatchTopKSAE", "MatryoshkaBatchTopKSAE"])
def test_a_dictionary_learning_batchtopk_sae_encodes_with_its_threshold(tmp_path, dict_class, threshold):
    # trainers/batch_top_k.py:24-25 and matryoshka_batch_top_k.py:49-56: k, threshold, group_sizes buffers
    encoder, bias, decoder = _random(D_SAE, D_IN, seed=90), _random(D_SAE, seed=91) * 0.1, _random(D_IN, D_SAE, seed=92)
    state = {
        "k": torch.tensor(4, dtype=torch.int),
        "threshold": torch.tensor(threshold),
        "b_dec": _random(D_IN, seed=93),
    }
    if dict_class == "BatchTopKSAE":  # nn.Linear encoder and decoder
        state |= {"encoder.weight": encoder, "encoder.bias": bias, "decoder.weight": decoder}
    else:  # parameters W_enc (activation_dim, dict_size), W_dec (dict_size, activation_dim)
        state |= {"W_enc": encoder.T.contiguous(), "b_enc": bias, "W_dec": decoder.T.contiguous()}
        state["group_sizes"] = torch.tensor([4, 6])
    sae = SparseAutoencoder.load(_write_dictionary_learning(tmp_path, dict_class, state))
    assert (sae.activation, sae.code_activation.k) == ("batchtopk", 4)
    x = _inputs()
    post_relu = torch.relu((x - state["b_dec"]) @ encoder.T + bias)  # batch_top_k.py:40, matryoshka :75
    codes = post_relu * (post_relu > threshold)  # batch_top_k.py:43, matryoshka :79 (use_threshold=True)
    _assert_same_numbers(sae, x, codes, codes @ decoder.T + state["b_dec"])  # batch_top_k.py:63, matryoshka :102


def test_a_gated_dictionary_learning_autoencoder_is_refused(tmp_path):
    state = {"decoder_bias": torch.zeros(D_IN), "encoder.weight": torch.zeros(D_SAE, D_IN)}
    _write_dictionary_learning(tmp_path, "GatedAutoEncoder", state)
    with pytest.raises(ValueError, match="trainer.dict_class 'GatedAutoEncoder'; the dictionary_learning classes"):
        SparseAutoencoder.load(tmp_path)


def test_a_dictionary_learning_backup_of_a_running_training_is_refused(tmp_path):
    # training.py:244 the backup written while training: the state dict under "ae", with the optimiser's
    state = {"bias": torch.zeros(D_IN)}
    _write_dictionary_learning(tmp_path, "AutoEncoder", {})
    torch.save({"step": 100, "ae": state, "optimizer": {"state": {}, "param_groups": []}}, tmp_path / "ae.pt")
    with pytest.raises(ValueError, match=r"backup of a run still training \(step 100\)"):
        SparseAutoencoder.load(tmp_path)


class _Pickled:
    """Not a tensor: torch.load(weights_only=True) refuses to rebuild it."""


def test_a_pt_file_holding_a_pickled_object_is_not_unpickled(tmp_path):
    _write_dictionary_learning(tmp_path, "AutoEncoder", {})
    torch.save({"encoder.weight": torch.zeros(D_SAE, D_IN), "extra": _Pickled()}, tmp_path / "ae.pt")
    with pytest.raises(ValueError, match=r"ae.pt' holds Python objects other than tensors.*weights_only=True"):
        SparseAutoencoder.load(tmp_path)


# ---- overcomplete (KempnerInstitute/overcomplete at a1781af) ----------------------------------


def _overcomplete_state(encoder: str = "linear") -> dict[str, Tensor]:
    # sae/dictionary.py:149 _weights (nb_concepts, in_dimensions), :161 multiplier buffer (scalar)
    state = {"dictionary._weights": _random(D_SAE, D_IN, seed=70) * 1.7, "dictionary.multiplier": torch.tensor(0.3)}
    if encoder == "linear":  # sae/factory.py:100 MLPEncoder(nb_blocks=0, norm_layer=Identity): modules.py:112
        state |= {"encoder.final_block.0.weight": _random(D_SAE, D_IN, seed=71)}
        state |= {"encoder.final_block.0.bias": _random(D_SAE, seed=72) * 0.1}
    elif encoder == "untied":  # modules.py:496 TieableEncoder's own weight, no bias
        state |= {"encoder.weight": _random(D_SAE, D_IN, seed=73)}
    return state


def _overcomplete_forward(state: dict[str, Tensor], x: Tensor, top_k: int | None) -> tuple[Tensor, Tensor]:
    weights = state["dictionary._weights"]
    dictionary = weights / (torch.norm(weights, p=2, dim=1, keepdim=True) + 1e-8)  # dictionary.py:24
    dictionary = dictionary * torch.exp(state["dictionary.multiplier"])  # :196, fused in eval mode
    if "encoder.final_block.0.weight" in state:
        pre = x @ state["encoder.final_block.0.weight"].T + state["encoder.final_block.0.bias"]
    elif "encoder.weight" in state:
        pre = x @ state["encoder.weight"].T  # modules.py:531
    else:
        pre = x @ dictionary.T  # modules.py:528, tied
    codes = torch.relu(pre)  # modules.py:144
    if "thresholds" in state:  # jump_sae.py:295-298 relu, then :39 output[x < threshold] = 0
        codes = codes.masked_fill(codes < torch.exp(state["thresholds"]), 0.0)
    if top_k is not None:
        top = torch.topk(codes, top_k, dim=-1)  # topk_sae.py:89
        codes = torch.zeros_like(codes).scatter(-1, top.indices, top.values)
    return codes, torch.matmul(codes, dictionary)  # dictionary.py:180


@pytest.mark.parametrize(
    ("encoder", "activation", "k"),
    [("linear", "relu", None), ("linear", "topk", 3), ("untied", "topk", 2), ("tied", "relu", None)],
)
def test_an_overcomplete_state_dict_gives_overcomplete_codes_and_reconstructions(tmp_path, encoder, activation, k):
    state = _overcomplete_state(encoder)
    torch.save(state, tmp_path / "sae.pt")
    sae = SparseAutoencoder.load(tmp_path / "sae.pt", activation=activation, k=k)
    source = {"library": "overcomplete", "files": ["sae.pt"], "class": "TopKSAE" if k else "SAE"}
    assert sae.metadata["source"] == source
    x = _inputs()
    _assert_same_numbers(sae, x, *_overcomplete_forward(state, x, k))


def test_an_overcomplete_jumpsae_keeps_codes_at_exactly_its_threshold(tmp_path):
    state = _overcomplete_state("untied") | {"thresholds": _random(D_SAE, seed=74) * 0.5}  # jump_sae.py:273
    floor = torch.exp(state["thresholds"])  # :295
    with torch.no_grad():  # input 0 puts pre-activation l at exactly its floor, for every l
        state["encoder.weight"][:, 0] = floor
        state["encoder.weight"][:, 1:] = torch.randn(D_SAE, D_IN - 1)
    torch.save(state, tmp_path / "jump.pt")
    sae = SparseAutoencoder.load(tmp_path / "jump.pt")
    assert (sae.activation, sae.metadata["source"]["class"]) == ("jumprelu", "JumpSAE")
    x = torch.cat([torch.eye(D_IN)[:1], _inputs()])
    _assert_same_numbers(sae, x, *_overcomplete_forward(state, x, None))
    assert torch.equal(sae.encode(x)[0].detach(), floor)  # every code kept at its floor, though not above it


def test_an_overcomplete_state_dict_needs_its_class_named(tmp_path):
    torch.save(_overcomplete_state(), tmp_path / "sae.pt")
    with pytest.raises(ValueError, match="does not record its class: pass activation='relu'"):
        SparseAutoencoder.load(tmp_path / "sae.pt")
    with pytest.raises(ValueError, match=r"k \(the TopKSAE's top_k\) = None"):
        SparseAutoencoder.load(tmp_path / "sae.pt", activation="topk")


def test_an_overcomplete_sae_with_another_encoder_is_refused(tmp_path):
    state = _overcomplete_state() | {"encoder.final_block.1.weight": torch.ones(D_SAE)}  # a norm layer after it
    save_file(state, str(tmp_path / "sae.safetensors"))
    with pytest.raises(ValueError, match=r"holds tensors \['encoder.final_block.1.weight'\] that an overcomplete SAE"):
        SparseAutoencoder.load(tmp_path / "sae.safetensors", activation="relu")


# ---- recognising a layout --------------------------------------------------------------------


def test_each_layout_is_recognised_by_its_files(tmp_path):
    SparseAutoencoder(D_IN, D_SAE).save(tmp_path / "ours")
    _write_saelens(tmp_path / "saelens", _saelens_v6_cfg("standard"), _saelens_tensors())
    _write_sparsify(tmp_path / "sparsify", _sparsify_cfg(), _sparsify_tensors())
    _write_dictionary_learning(tmp_path / "dl", "AutoEncoder", {})
    torch.save(_overcomplete_state(), tmp_path / "overcomplete.pt")
    found = [layout_of(tmp_path / name) for name in ("ours", "saelens", "sparsify", "dl", "overcomplete.pt")]
    assert found == ["captum_salve", "saelens", "sparsify", "dictionary_learning", "overcomplete"]


def test_an_unknown_folder_is_told_what_each_layout_needs(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as error:
        SparseAutoencoder.load(tmp_path)
    layouts = [
        "cfg.json + model.safetensors (captum_salve)",
        "cfg.json + sae_weights.safetensors (saelens)",
        "cfg.json + sae.safetensors (sparsify)",
        "config.json + ae.pt (dictionary_learning)",
        ".safetensors, overcomplete",
    ]
    for needed in layouts:
        assert needed in str(error.value)
    with pytest.raises(ValueError, match="weights.bin' is not an SAE file or folder"):
        SparseAutoencoder.load(tmp_path / "weights.bin")
    with pytest.raises(FileNotFoundError, match="missing' does not exist"):
        SparseAutoencoder.load(tmp_path / "missing")


def test_a_weights_file_without_its_config_is_named(tmp_path):
    save_file(_saelens_tensors(), str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(FileNotFoundError, match="cfg.json' is missing; a saelens SAE folder holds cfg.json and sae_w"):
        SparseAutoencoder.load(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps(_saelens_v6_cfg("standard")))
    with pytest.raises(ValueError, match="sae_weights.safetensors' is a file; pass the SAE's folder"):
        SparseAutoencoder.load(tmp_path / "sae_weights.safetensors")


def test_activation_and_k_are_refused_for_a_layout_that_records_them(tmp_path):
    _write_saelens(tmp_path / "saelens", _saelens_v6_cfg("standard"), _saelens_tensors())
    with pytest.raises(ValueError, match="activation and k describe an overcomplete state dict.*a saelens SAE's"):
        SparseAutoencoder.load(tmp_path / "saelens", activation="topk", k=3)
    SparseAutoencoder(D_IN, D_SAE).save(tmp_path / "ours")
    with pytest.raises(ValueError, match="an SAE of ours, whose cfg.json records its own"):
        SparseAutoencoder.load(tmp_path / "ours", activation="relu")

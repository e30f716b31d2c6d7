"""The sparse autoencoder model: its codes, its arguments and its files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_model

from captum_salve import SparseAutoencoder
from captum_salve.sae.variants import Archetypal, Matryoshka


def test_affine_code_is_the_pre_activation():
    sae = SparseAutoencoder(6, 9, "relu")
    with torch.no_grad():
        sae.decoder.bias.normal_()
        sae.encoder.bias.normal_()
    a = torch.randn(4, 6)
    rows, offsets = sae.affine_code([2, 7])
    torch.testing.assert_close(a @ rows.T + offsets, sae.pre_activation(a)[:, [2, 7]])


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="activation must be one of"):
        SparseAutoencoder(4, 8, "gelu")
    with pytest.raises(
        ValueError,
        match=r"activation 'topk' takes the settings \['k', 'aux_k', 'resample'\] \(\['k'\] required\), got none",
    ):
        SparseAutoencoder(4, 8, "topk")
    with pytest.raises(ValueError, match=r"k \(of activation 'topk'\) must be an integer >= 1, got 0"):
        SparseAutoencoder(4, 8, "topk", k=0)
    with pytest.raises(ValueError, match="k must be at most d_latent=8, got k=9"):
        SparseAutoencoder(4, 8, "topk", k=9)
    with pytest.raises(ValueError, match=r"activation 'relu' takes no settings, got \['k'\]"):
        SparseAutoencoder(4, 8, "relu", k=2)
    with pytest.raises(ValueError, match="d_latent must be an integer >= 1"):
        SparseAutoencoder(4, 0)
    with pytest.raises(ValueError, match=r"expected an activation tensor of shape \(N, 4\)"):
        SparseAutoencoder(4, 8).encode(torch.randn(2, 5))


@pytest.mark.parametrize("variant", ["batchtopk", "matryoshka", "jumprelu"])
def test_a_variants_own_state_is_saved_and_loaded_with_the_weights(tmp_path, variant):
    sae = SparseAutoencoder(5, 7, variant, k=None if variant == "jumprelu" else 3)
    with torch.no_grad():
        sae.code_activation.threshold.copy_(torch.rand_like(sae.code_activation.threshold))
        sae.encoder.bias.normal_()
    loaded = SparseAutoencoder.load(sae.save(tmp_path / "sae"))
    assert torch.equal(loaded.code_activation.threshold, sae.code_activation.threshold)
    a = torch.randn(20, 5)
    assert torch.equal(loaded.encode(a), sae.encode(a)) and (sae.encode(a) == 0).any()


def test_an_archetypal_sae_saves_its_anchors_mixture_and_relaxation_and_loads_bit_identically(tmp_path):
    sae = SparseAutoencoder(5, 7, Archetypal(3, anchors=9, delta=0.3))
    hull = sae.decoder.parametrizations.weight
    with torch.no_grad():
        hull[0].anchors.normal_()
        hull.original0.uniform_()
        hull.original1.normal_()
        sae.normalize_decoder_()
        sae.encoder.bias.normal_()
        sae.decoder.bias.normal_()
    loaded = SparseAutoencoder.load(sae.save(tmp_path / "sae"))
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert (cfg["activation"], cfg["k"], cfg["anchors"], cfg["delta"]) == ("archetypal", 3, 9, 0.3)
    assert sorted(loaded.state_dict()) == sorted(sae.state_dict())
    for name, tensor in sae.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    a = torch.randn(20, 5)
    z = sae.encode(a)
    assert torch.equal(loaded.encode(a), z) and torch.equal(loaded.decode(z), sae.decode(z))
    assert torch.equal(loaded.decoder_weight, sae.decoder_weight)


def test_matryoshka_prefixes_are_saved_in_the_config(tmp_path):
    sae = SparseAutoencoder(5, 8, Matryoshka(2, prefixes=[2, 5, 8]))
    loaded = SparseAutoencoder.load(sae.save(tmp_path / "sae"))
    assert loaded.code_activation.prefixes == (2, 5, 8)
    assert json.loads((tmp_path / "sae" / "cfg.json").read_text())["prefixes"] == [2, 5, 8]


def test_save_load_round_trip(tmp_path):
    sae = SparseAutoencoder(5, 7, "topk", k=3, site="layer3:spatial_mean", model="resnet18")
    sae.metadata["note"] = "kept"
    sae.save(tmp_path / "sae")
    loaded = SparseAutoencoder.load(tmp_path / "sae")
    assert loaded.config() == sae.config() and loaded.metadata == {"note": "kept"}
    assert (loaded.site, loaded.model, loaded.code_activation.k) == ("layer3:spatial_mean", "resnet18", 3)
    for name, tensor in sae.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == ["cfg.json", "model.safetensors"]


def _without_embedded_config(sae: SparseAutoencoder, folder) -> None:
    """Rewrite the weights file as versions before 0.2 wrote it: no config in its header."""
    save_model(sae, str(folder / "model.safetensors"))


def test_a_version_one_folder_still_loads_with_its_site_from_the_metadata(tmp_path):
    sae = SparseAutoencoder(5, 7, "relu")
    sae.save(tmp_path)
    _without_embedded_config(sae, tmp_path)
    old = {
        "format_version": 1,
        "d_in": 5,
        "d_latent": 7,
        "activation": "relu",
        "k": None,
        "metadata": {"site": "layer4:spatial_mean"},
    }
    (tmp_path / "cfg.json").write_text(json.dumps(old))
    loaded = SparseAutoencoder.load(tmp_path)
    assert loaded.site == "layer4:spatial_mean" and loaded.activation == "relu"
    assert torch.equal(loaded.encoder.weight, sae.encoder.weight)
    (tmp_path / "cfg.json").write_text(json.dumps({**old, "format_version": 9}))
    with pytest.raises(ValueError, match=r"format_version 9; this version reads \(1, 2\)"):
        SparseAutoencoder.load(tmp_path)


def test_load_refuses_a_config_that_does_not_match_the_tensors(tmp_path):
    sae = SparseAutoencoder(5, 7)
    sae.save(tmp_path)
    _without_embedded_config(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "d_latent": 8}))
    with pytest.raises(ValueError, match="do not match cfg.json"):
        SparseAutoencoder.load(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        SparseAutoencoder.load(tmp_path)


def test_a_save_interrupted_after_the_weights_leaves_one_consistent_sae(tmp_path, monkeypatch):
    old, new = SparseAutoencoder(5, 7, "relu"), SparseAutoencoder(5, 9, "topk", k=2)
    old.save(tmp_path)
    write_text = Path.write_text

    def failing(path, *args, **kwargs):
        if path.name.startswith(".cfg.json"):  # the temporary file cfg.json is written through
            raise OSError("disk full")
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", failing)
    with pytest.raises(OSError, match="disk full"):
        new.save(tmp_path)
    monkeypatch.undo()
    assert json.loads((tmp_path / "cfg.json").read_text())["d_latent"] == 7  # the old config is still there
    with pytest.warns(UserWarning, match="does not describe"):
        loaded = SparseAutoencoder.load(tmp_path)
    assert loaded.d_latent == 9 and loaded.config()["activation"] == "topk" and loaded.config()["k"] == 2
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), new.state_dict().values(), strict=True))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda folder: (folder / "model.safetensors").write_bytes(b"\x00" * 5), "is not a valid SAE weights file"),
        (lambda folder: (folder / "cfg.json").write_text("{not json"), "is not a valid SAE config (not JSON"),
        (lambda folder: (folder / "cfg.json").write_text("{}"), "it lacks ['d_in', 'd_latent', 'activation']"),
    ],
    ids=["truncated weights", "config not JSON", "config without keys"],
)
def test_a_damaged_folder_is_named_not_a_traceback(tmp_path, damage, message):
    sae = SparseAutoencoder(5, 7)
    sae.save(tmp_path)
    _without_embedded_config(sae, tmp_path)  # the config file alone describes the SAE
    damage(tmp_path)
    with pytest.raises(ValueError, match=re.escape(message)):
        SparseAutoencoder.load(tmp_path)

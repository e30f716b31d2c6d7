"""The sparse autoencoder model: its codes, its arguments and its files."""

from __future__ import annotations

import json

import pytest
import torch

from captum_salve import SparseAutoencoder


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
    with pytest.raises(ValueError, match=r"activation 'topk' takes the settings \['k'\], got none"):
        SparseAutoencoder(4, 8, "topk")
    with pytest.raises(ValueError, match="activation 'topk' needs a positive integer k, got k=0"):
        SparseAutoencoder(4, 8, "topk", k=0)
    with pytest.raises(ValueError, match="k must be at most d_latent=8, got k=9"):
        SparseAutoencoder(4, 8, "topk", k=9)
    with pytest.raises(ValueError, match=r"activation 'relu' takes no settings, got \['k'\]"):
        SparseAutoencoder(4, 8, "relu", k=2)
    with pytest.raises(ValueError, match="d_latent must be a positive integer"):
        SparseAutoencoder(4, 0)
    with pytest.raises(ValueError, match=r"expected activations of shape \(N, 4\)"):
        SparseAutoencoder(4, 8).encode(torch.randn(2, 5))


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


def test_a_version_one_folder_still_loads_with_its_site_from_the_metadata(tmp_path):
    sae = SparseAutoencoder(5, 7, "relu")
    sae.save(tmp_path)
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
    SparseAutoencoder(5, 7).save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "d_latent": 8}))
    with pytest.raises(ValueError, match="do not match cfg.json"):
        SparseAutoencoder.load(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        SparseAutoencoder.load(tmp_path)

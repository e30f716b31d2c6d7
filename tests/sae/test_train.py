"""The sparse autoencoder: codes, persistence, training and metrics."""

from __future__ import annotations

import json
from typing import get_args

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captum_salve import ActivationSet, SparseAutoencoder, sae_metrics, train_sae
from captum_salve.sae import VARIANTS, ActivationName, CodeActivation, code_activation
from captum_salve.sae import train as train_module
from captum_salve.sae.train import _resample_dead
from tests.helpers import labelled_clusters


def _clustered(n: int = 600, d: int = 16) -> ActivationSet:
    """Four tight clusters far from the origin: data an SAE reconstructs well."""
    return labelled_clusters(n, d, 4, scale=3.0, spread=0.3, offset=5.0)[1]


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 6),
    d_in=st.integers(1, 12),
    d_latent=st.integers(1, 20),
    activation=st.sampled_from(["linear", "relu", "topk"]),
    data=st.data(),
)
def test_codes_obey_their_activation(n, d_in, d_latent, activation, data):
    k = data.draw(st.integers(1, d_latent)) if activation == "topk" else None
    sae = SparseAutoencoder(d_in, d_latent, activation, k=k)
    a = torch.randn(n, d_in)
    a_hat, z = sae(a)
    assert a_hat.shape == (n, d_in) and z.shape == (n, d_latent)
    pre = sae.pre_activation(a)
    if activation == "linear":
        torch.testing.assert_close(z, pre)
    elif activation == "relu":
        torch.testing.assert_close(z, pre.clamp_min(0))
    else:
        assert ((z != 0).sum(dim=1) <= k).all() and (z >= 0).all()
        kept = pre.topk(k, dim=1).values.clamp_min(0).sum(dim=1)
        torch.testing.assert_close(z.sum(dim=1), kept)
    torch.testing.assert_close(sae.decoder_weight.norm(dim=0), torch.ones(d_latent))


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


def test_training_records_where_the_activations_were_read():
    acts = _clustered(n=64, d=6)
    acts = ActivationSet(acts.features, acts.labels, "layer3:spatial_mean", "resnet18")
    sae, _ = train_sae(acts, 8, epochs=1, progress=False)
    assert (sae.site, sae.model) == ("layer3:spatial_mean", "resnet18")
    tensor_sae, _ = train_sae(acts.features, 8, epochs=1, progress=False)
    assert (tensor_sae.site, tensor_sae.model) == ("head_input", None)


class Shrink(CodeActivation):
    """A variant written for this test: soft thresholding at 0.5 (a JumpReLU cousin)."""

    name = "shrink"

    def __call__(self, pre):
        return torch.sign(pre) * (pre.abs() - 0.5).clamp_min(0)


def test_a_new_variant_is_one_class_that_the_model_and_training_use():
    sae = SparseAutoencoder(6, 9, Shrink())
    a = torch.randn(5, 6)
    pre = sae.pre_activation(a)
    assert torch.equal(sae.encode(a), torch.sign(pre) * (pre.abs() - 0.5).clamp_min(0))
    trained, history = train_sae(_clustered(n=64, d=6), 9, activation=Shrink(), epochs=2, progress=False)
    assert trained.activation == "shrink" and trained.active_threshold == 0.0 and len(history) == 2


def test_every_named_variant_is_registered_once():
    assert set(VARIANTS) == set(get_args(ActivationName))
    assert [code_activation(name, **VARIANTS[name].default_settings(64)).name for name in VARIANTS] == list(VARIANTS)


def test_load_refuses_a_config_that_does_not_match_the_tensors(tmp_path):
    SparseAutoencoder(5, 7).save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "d_latent": 8}))
    with pytest.raises(ValueError, match="do not match cfg.json"):
        SparseAutoencoder.load(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        SparseAutoencoder.load(tmp_path)


def test_same_seed_gives_bit_identical_weights():
    acts = _clustered()
    first, history = train_sae(acts, 24, epochs=3, batch_size=64, seed=3, progress=False)
    second, _ = train_sae(acts, 24, epochs=3, batch_size=64, seed=3, progress=False)
    third, _ = train_sae(acts, 24, epochs=3, batch_size=64, seed=4, progress=False)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name])
    assert not torch.equal(first.decoder_weight, third.decoder_weight)
    assert [h["epoch"] for h in history] == [1, 2, 3]


@pytest.mark.parametrize("activation, k", [("relu", None), ("topk", 4), ("linear", None)])
def test_interrupted_then_resumed_run_equals_uninterrupted(tmp_path, monkeypatch, activation, k):
    acts = _clustered()
    settings = dict(activation=activation, k=k, epochs=4, batch_size=64, seed=1, progress=False)
    whole, whole_history = train_sae(acts, 24, **settings)

    real_save = train_module._save_checkpoint
    saves = []

    def save_then_crash(*args):
        real_save(*args)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_sae(acts, 24, checkpoint_dir=tmp_path, **settings)
    monkeypatch.setattr(train_module, "_save_checkpoint", real_save)
    resumed, resumed_history = train_sae(acts, 24, checkpoint_dir=tmp_path, resume=True, **settings)
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert resumed_history == whole_history


def test_resume_refuses_other_settings_and_missing_checkpoints(tmp_path):
    acts = _clustered()
    train_sae(acts, 8, epochs=1, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"other settings or data \(lr: checkpoint 0.001 vs now 0.01\)"):
        train_sae(acts, 8, epochs=1, lr=0.01, progress=False, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        train_sae(acts, 8, epochs=1, progress=False, checkpoint_dir=tmp_path / "empty", resume=True)
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        train_sae(acts, 8, resume=True, progress=False)


def test_bad_training_arguments():
    acts = _clustered(n=10)
    for kwargs, message in [
        (dict(epochs=0), "epochs must be a positive integer"),
        (dict(lr=0.0), "lr must be a finite number > 0"),
        (dict(l1=float("nan")), "l1 must be a finite number >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            train_sae(acts, 4, progress=False, **kwargs)
    with pytest.raises(ValueError, match="acts must be an ActivationSet or an"):
        train_sae(torch.randn(10), 4, progress=False)


def test_training_reconstructs_and_keeps_unit_decoder_columns():
    acts = _clustered()
    sae, history = train_sae(acts, 32, epochs=30, batch_size=64, progress=False)
    metrics = sae_metrics(sae, acts)
    assert metrics["explained_variance"] > 0.9
    assert history[-1]["loss"] < history[0]["loss"]
    torch.testing.assert_close(sae.decoder_weight.norm(dim=0), torch.ones(32))
    torch.testing.assert_close(sae.decoder.bias.detach(), acts.features.mean(0), atol=1.0, rtol=0)


def test_dead_latent_is_resampled_towards_a_badly_reconstructed_input():
    data = torch.zeros(50, 3)
    data[:, 0] = torch.linspace(1, 2, 50)
    sae = SparseAutoencoder(3, 4, "relu")
    with torch.no_grad():
        sae.encoder.weight.zero_()  # reconstruction is b_d = 0, so every residual is the input itself
        sae.encoder.weight[:3] = torch.eye(3) * 0.5
        sae.encoder.weight[:, 0] = 0.0
    optimizer = torch.optim.Adam(sae.parameters())
    fired = torch.tensor([True, True, True, False])
    before = sae.decoder_weight[:, :3].clone()
    assert _resample_dead(sae, optimizer, data, fired, torch.Generator().manual_seed(0)) == 1
    torch.testing.assert_close(sae.decoder_weight[:, :3], before)  # live latents untouched
    torch.testing.assert_close(sae.decoder_weight[:, 3], torch.tensor([1.0, 0.0, 0.0]))
    assert (sae.encode(data)[:, 3] > 0).all()  # the new latent fires on the inputs it was aimed at


def test_metrics_match_a_hand_computation():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(40, 5, generator=generator) + 3.0  # far from zero: centring matters
    sae = SparseAutoencoder(5, 6, "relu")
    with torch.no_grad():
        sae.encoder.bias[4:] = -1e6  # latents 4 and 5 can never fire
    acts = ActivationSet(a)
    metrics = sae_metrics(sae, acts, batch_size=7)

    x = a.double().numpy()
    with torch.no_grad():
        a_hat, z = sae(a)
    residual = x - a_hat.double().numpy()
    expected_ev = 1 - (residual**2).sum() / ((x - x.mean(axis=0)) ** 2).sum()
    assert metrics["explained_variance"] == pytest.approx(expected_ev, rel=1e-6)
    assert metrics["mse"] == pytest.approx((residual**2).sum(axis=1).mean(), rel=1e-6)
    assert metrics["l0"] == pytest.approx((z.numpy() > 0).sum(axis=1).mean())
    never_active = (z.numpy() > 0).sum(axis=0) == 0
    assert never_active[4:].all() and metrics["dead_fraction"] == pytest.approx(never_active.mean())


def test_spliced_accuracy_of_a_perfect_and_a_broken_reconstruction():
    head = nn.Linear(4, 3)
    a = torch.randn(30, 4)
    labels = head(a).argmax(1)
    labels[:5] = (labels[:5] + 1) % 3  # accuracy 25/30
    acts = ActivationSet(a, labels)
    identity = SparseAutoencoder(4, 4, "linear")
    with torch.no_grad():
        identity.encoder.weight.copy_(torch.eye(4))
        identity.decoder.weight.copy_(torch.eye(4))
    metrics = sae_metrics(identity, acts, head=head)
    assert metrics["accuracy"] == metrics["spliced_accuracy"] == pytest.approx(25 / 30)
    assert metrics["explained_variance"] == pytest.approx(1.0)
    with torch.no_grad():
        identity.decoder.weight.zero_()
    assert sae_metrics(identity, acts, head=head)["spliced_accuracy"] == pytest.approx(
        (head.bias.argmax() == labels).float().mean().item()
    )


def test_metrics_refuse_mismatched_inputs():
    sae = SparseAutoencoder(4, 8)
    with pytest.raises(ValueError, match="the SAE reads 4-dimensional activations, acts have 5"):
        sae_metrics(sae, ActivationSet(torch.randn(3, 5)))
    with pytest.raises(ValueError, match="spliced accuracy needs head-input activations"):
        sae_metrics(
            sae, ActivationSet(torch.randn(3, 4), torch.zeros(3, dtype=torch.long), "layer3"), head=nn.Linear(4, 2)
        )
    with pytest.raises(ValueError, match="carry no labels"):
        sae_metrics(sae, ActivationSet(torch.randn(3, 4)), head=nn.Linear(4, 2))
    assert np.isfinite(sae_metrics(sae, ActivationSet(torch.randn(3, 4)))["mse"])

"""Training a sparse autoencoder: reproducible, resumable, with dead-latent resampling."""

from __future__ import annotations

import pytest
import torch

from captum_salve import ActivationSet, SparseAutoencoder, sae_metrics, train_sae
from captum_salve.sae import train as train_module
from captum_salve.sae.train import _resample_dead
from tests.helpers import labelled_clusters


def _clustered(n: int = 600, d: int = 16) -> ActivationSet:
    """Four tight clusters far from the origin: data an SAE reconstructs well."""
    return labelled_clusters(n, d, 4, scale=3.0, spread=0.3, offset=5.0)[1]


def test_training_records_where_the_activations_were_read():
    acts = _clustered(n=64, d=6)
    acts = ActivationSet(acts.features, acts.labels, "layer3:spatial_mean", "resnet18")
    sae, _ = train_sae(acts, 8, epochs=1, progress=False)
    assert (sae.site, sae.model) == ("layer3:spatial_mean", "resnet18")
    tensor_sae, _ = train_sae(acts.features, 8, epochs=1, progress=False)
    assert (tensor_sae.site, tensor_sae.model) == ("head_input", None)


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
        (dict(epochs=0), "epochs must be an integer >= 1"),
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

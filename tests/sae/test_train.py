"""Training a sparse autoencoder: reproducible, resumable, with dead-latent resampling."""

from __future__ import annotations

import pytest
import torch

from captum_salve import ActivationSet, SparseAutoencoder, sae_metrics, train_sae
from captum_salve.sae import train as train_module
from captum_salve.sae.train import SAEConfig, _resample_dead, train_saes
from captum_salve.sae.variants import VARIANTS, Archetypal, BatchTopK, TopK
from captum_salve.store import ActivationStore, as_rows
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


@pytest.mark.parametrize(
    "activation, k",
    [(name, 4 if "k" in VARIANTS[name].default_settings(24) else None) for name in VARIANTS]
    + [(TopK(4, aux_k=8), None)],
)
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
    with pytest.raises(ValueError, match=r"acts as a tensor must be \(N, M\) rows, got shape \(10,\)"):
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


def _same_weights(first: SparseAutoencoder, second: SparseAutoencoder) -> bool:
    return all(torch.equal(t, second.state_dict()[name]) for name, t in first.state_dict().items())


@pytest.mark.parametrize("shuffle", ["exact", "blocks"])
@pytest.mark.parametrize(
    "activation, resamples",
    [("relu", False), ("topk", True), (BatchTopK(4, aux_k=16, resample=False), False), (Archetypal(4), True)],
)
def test_a_store_trains_the_bit_identical_sae(tmp_path, shuffle, activation, resamples):
    acts = _clustered(n=601)
    store = ActivationStore.from_set(acts, tmp_path / "store", shard_rows=97)
    k = 4 if activation == "topk" else None
    settings = dict(activation=activation, k=k, epochs=3, batch_size=64, shuffle=shuffle, block_rows=50, progress=False)
    from_memory, memory_history = train_sae(acts, 96, buffer_blocks=3, **settings)
    from_store, store_history = train_sae(store, 96, buffer_blocks=3, **settings)
    assert _same_weights(from_memory, from_store)
    assert memory_history == store_history
    # topk and archetypal kill latents here, so their resampling pools were read from the store too
    assert (sum(h["resampled"] for h in memory_history) > 0) == resamples


def test_an_epoch_reads_every_row_once_in_both_shuffles():
    order = train_module._DataOrder(103, "blocks", 5, block_rows=10, buffer_blocks=3)
    rows = as_rows(torch.arange(103.0)[:, None])
    reader = order.reader(rows, epoch=2)
    seen = torch.cat([reader.read(reader.positions(s, min(s + 16, 103))) for s in range(0, 103, 16)])[:, 0].long()
    assert torch.equal(seen.sort().values, torch.arange(103))
    for blocks, start, stop in zip(reader.buffers, reader.starts, reader.starts[1:], strict=False):
        assert set((seen[start:stop] // 10).tolist()) == set(blocks)  # a buffer holds the rows of its blocks
    again = order.reader(rows, epoch=2)
    assert torch.equal(again.read(again.positions(40, 60)), reader.read(reader.positions(40, 60)))
    exact = train_module._DataOrder(103, "exact", 5, 10, 3).reader(rows, epoch=2)
    assert torch.equal(exact.positions(0, 103).sort().values, torch.arange(103))


def test_several_saes_in_one_pass_equal_each_trained_alone():
    acts = _clustered()
    configs = [SAEConfig(24, "relu", seed=1), SAEConfig(16, "topk", k=3, seed=2), SAEConfig(24, "linear", lr=3e-3)]
    together = train_saes(acts, configs, epochs=3, batch_size=64, shuffle_seed=7, progress=False)
    for config, (sae, history) in zip(configs, together, strict=True):
        alone, alone_history = train_sae(
            acts, config.d_latent, activation=config.activation, k=config.k, lr=config.lr, seed=config.seed,
            epochs=3, batch_size=64, shuffle_seed=7, progress=False,
        )  # fmt: skip
        assert _same_weights(sae, alone) and history == alone_history


def test_micro_batches_take_the_same_step_up_to_rounding():
    acts = _clustered()
    whole, _ = train_sae(acts, 24, epochs=2, batch_size=64, progress=False)
    parts, _ = train_sae(acts, 24, epochs=2, batch_size=64, micro_batches=4, progress=False)
    for name, tensor in whole.state_dict().items():
        assert (tensor - parts.state_dict()[name]).norm() <= 1e-5 * tensor.norm(), name


@pytest.mark.parametrize("shuffle", ["exact", "blocks"])
def test_stopped_mid_epoch_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, shuffle):
    acts = _clustered()
    settings = dict(epochs=3, batch_size=64, shuffle=shuffle, block_rows=50, progress=False)
    whole, whole_history = train_sae(acts, 24, **settings)
    settings["checkpoint_every"] = 4
    real_save, saves = train_module._save_checkpoint, []

    def save_then_crash(directory, run, step, sums):
        real_save(directory, run, step, sums)
        saves.append(step)
        if len(saves) == 4:  # epoch 1 after step 4 and 8, its end, then epoch 2 after step 4
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_sae(acts, 24, checkpoint_dir=tmp_path, **settings)
    assert saves == [4, 8, 0, 4]
    monkeypatch.setattr(train_module, "_save_checkpoint", real_save)
    resumed, resumed_history = train_sae(acts, 24, checkpoint_dir=tmp_path, resume=True, **settings)
    assert _same_weights(whole, resumed)
    assert resumed_history == whole_history


def test_bad_configs_and_data_orders_are_named(tmp_path):
    acts = _clustered(n=20)
    for kwargs, error, message in [
        (dict(configs=[]), TypeError, "configs must be a non-empty list of SAEConfig"),
        (dict(configs=[SAEConfig(0)]), ValueError, "d_latent must be an integer >= 1"),
        (dict(shuffle="random"), ValueError, "shuffle must be 'exact' or 'blocks'"),
        (dict(block_rows=0), ValueError, "block_rows must be an integer >= 1"),
        (dict(micro_batches=0), ValueError, "micro_batches must be an integer >= 1"),
        (dict(checkpoint_every=5), ValueError, "checkpoint_every needs checkpoint_dir"),
        (dict(checkpoint_dirs=[tmp_path, tmp_path]), ValueError, r"one folder per config \(1\), got 2"),
    ]:
        call = dict(configs=[SAEConfig(4)], progress=False) | kwargs
        with pytest.raises(error, match=message):
            train_saes(acts, **call)


def test_float64_activations_train_and_are_left_as_they_were():
    acts = _clustered(n=200).features.double()
    before = acts.clone()
    sae, history = train_sae(acts, 8, epochs=2, batch_size=64, progress=False)
    assert torch.equal(acts, before)  # the statistics once centred a float64 input in place
    as_float32, _ = train_sae(acts.float(), 8, epochs=2, batch_size=64, progress=False)
    assert all(torch.equal(t, as_float32.state_dict()[name]) for name, t in sae.state_dict().items())

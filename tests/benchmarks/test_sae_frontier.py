import math

import pytest
import torch
from torch import nn

import captum_salve.store
from benchmarks.sae_frontier import (
    Batches,
    DemoActs,
    PeerScale,
    Result,
    Setting,
    epoch_order,
    ev_at,
    frontier_margins,
    import_overcomplete,
    our_metrics,
    pareto_frontier,
    peer_metrics,
    peer_penalty,
    run,
    seed_stability,
    table,
    time_ratio,
    verdict_table,
    verdicts,
)
from captum_salve import ActivationSet, SparseAutoencoder, train_sae

RELU = Setting("relu", "l1=0.05", {"activation": "relu", "l1": 0.05}, "SAE", 0.05)


def test_pareto_frontier_keeps_the_points_no_other_point_beats_in_order_of_l0():
    points = [(30, 0.9), (10, 0.6), (20, 0.7), (10, 0.8), (25, 0.9), (40, 0.85)]
    assert pareto_frontier(points) == [(10, 0.8), (25, 0.9)]


def test_ev_at_interpolates_linearly_in_log_l0_and_keeps_the_best_ev_beyond_the_largest_l0():
    frontier = [(4, 0.5), (16, 0.9)]
    assert ev_at(frontier, 8) == pytest.approx(0.7)  # log 8 is halfway between log 4 and log 16
    assert ev_at(frontier, 4) == 0.5
    assert ev_at(frontier, 64) == 0.9
    assert ev_at(frontier, 2) is None
    assert ev_at([], 8) is None


def test_frontier_margins_are_our_ev_at_each_peer_frontier_point_minus_its_ev():
    ours = [(4, 0.5), (16, 0.9), (16, 0.1)]
    peer = [(2, 0.4), (8, 0.6), (32, 0.95), (32, 0.5)]
    margins = frontier_margins(ours, peer)
    assert [(l0, ev) for l0, ev, _ in margins] == [(2, 0.4), (8, 0.6), (32, 0.95)]
    assert margins[0][2] is None
    assert margins[1][2] == pytest.approx(0.1)
    assert margins[2][2] == pytest.approx(-0.05)


def test_seed_stability_is_one_for_permuted_and_flipped_copies_of_the_same_directions():
    directions = torch.linalg.qr(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)))[0]
    copies = [directions, -directions[:, [3, 1, 0, 2]], directions[:, [1, 0, 3, 2]]]
    assert seed_stability(copies) == pytest.approx(1.0)


def test_seed_stability_averages_the_mean_matched_cosine_over_every_pair_of_seeds():
    def rotation(angle: float) -> torch.Tensor:
        c, s = math.cos(angle), math.sin(angle)
        return torch.tensor([[c, -s], [s, c]])

    # pairs at 0.3, 0.1 and 0.2 radians: each matched |cos| is the cosine of the angle between them
    seeds = [rotation(0.0), rotation(0.3), rotation(0.2)]
    expected = (math.cos(0.3) + math.cos(0.2) + math.cos(0.1)) / 3
    assert seed_stability(seeds) == pytest.approx(expected, abs=1e-7)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_stability(seeds[:1])


def test_time_ratio_is_the_median_of_the_ratios_within_each_round():
    assert time_ratio([1.0, 4.0, 3.0], [2.0, 2.0, 1.0]) == 2.0


def test_peer_penalty_makes_the_peers_loss_on_scaled_rows_equal_to_ours():
    generator = torch.Generator().manual_seed(1)
    rows = torch.randn(300, 8, generator=generator) * 3 + 5
    batch, a_hat = rows[:32], rows[:32] + torch.randn(32, 8, generator=generator)
    z = torch.rand(32, 5, generator=generator)
    scale = PeerScale.of(rows)
    total_variance, l1 = 8 * scale.spread**2, 0.05
    ours = ((batch - a_hat).pow(2).sum() / total_variance + l1 * z.abs().sum() / total_variance**0.5) / 32
    # overcomplete's mse_l1: mean squared error plus penalty times the L1 sum, on rows and codes in its units
    x, x_hat, z_peer = scale.to_peer(batch), scale.to_peer(a_hat), z / scale.spread
    peer = (x - x_hat).square().mean() + peer_penalty(l1, 32, 8) * z_peer.abs().sum()
    assert float(peer) == pytest.approx(float(ours), rel=1e-5)


def test_peer_scale_centres_the_rows_to_unit_root_mean_square_and_back():
    rows = torch.randn(50, 4, generator=torch.Generator().manual_seed(2)) * torch.tensor([1.0, 2.0, 3.0, 4.0]) + 7
    scale = PeerScale.of(rows)
    x = scale.to_peer(rows)
    assert x.mean(0).abs().max() < 1e-5
    assert float(x.pow(2).mean()) == pytest.approx(1.0, rel=1e-5)
    torch.testing.assert_close(scale.from_peer(x), rows)


def test_the_peers_batches_are_the_rows_train_sae_reads_in_its_order(monkeypatch):
    rows = torch.randn(70, 3, generator=torch.Generator().manual_seed(3))
    read = []
    original = captum_salve.store._InMemoryRows.rows

    def recording(self, index):
        read.append(index.clone())
        return original(self, index)

    monkeypatch.setattr(captum_salve.store._InMemoryRows, "rows", recording)
    train_sae(rows, 4, activation="linear", epochs=2, batch_size=32, seed=5, progress=False)
    batches = Batches(rows, 32, shuffle_seed=5)
    expected = [b for _ in range(2) for b in batches]
    assert [len(b) for b in expected] == [32, 32, 6] * 2
    assert len(read) == len(expected)
    for index, batch in zip(read, expected, strict=True):
        torch.testing.assert_close(rows[index], batch, rtol=0, atol=0)
    assert torch.equal(epoch_order(70, 5, 1), torch.cat(read[3:]))


def _demo_acts(rows: int = 120, width: int = 6, classes: int = 3) -> DemoActs:
    generator = torch.Generator().manual_seed(4)
    features = torch.relu(torch.randn(rows, width, generator=generator)) * 2
    head = nn.Linear(width, classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(classes, width, generator=generator))
        labels = head(features).argmax(1)
    train = ActivationSet(features[: rows // 2], labels[: rows // 2])
    return DemoActs(train, ActivationSet(features[rows // 2 :], labels[rows // 2 :]), head)


class _PeerOfOurs(nn.Module):
    """An overcomplete-shaped SAE that is one of ours in the peer's units (our decoder bias at the scale's mean)."""

    def __init__(self, sae: SparseAutoencoder, scale: PeerScale) -> None:
        super().__init__()
        self.sae, self.scale = sae, scale

    def get_dictionary(self) -> torch.Tensor:
        return self.sae.decoder_weight.T * 2  # atoms of norm 2: codes are half ours, in peer units

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.scale.from_peer(x)
        return self.sae.pre_activation(a), self.sae.encode(a) / (2 * self.scale.spread)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.get_dictionary()


def test_peer_metrics_of_an_sae_in_the_peers_units_equal_our_metrics_of_it():
    acts = _demo_acts()
    scale = PeerScale.of(acts.train.features)
    for activation, k in (("relu", None), ("linear", None), ("topk", 2)):
        sae = SparseAutoencoder(6, 5, activation, k=k)
        with torch.no_grad():
            sae.encoder.weight.copy_(torch.randn(5, 6, generator=torch.Generator().manual_seed(6)))
            sae.decoder.bias.copy_(scale.mean)
        threshold = sae.code_activation.relative_active_threshold
        theirs = peer_metrics(_PeerOfOurs(sae, scale), scale, acts, threshold)
        assert theirs == pytest.approx(our_metrics(sae, acts), abs=1e-5)


def _result(setting: Setting, library: str, points: list[tuple[float, float]], seconds: list[float]) -> Result:
    metrics = [
        {"explained_variance": ev, "l0": l0, "dead_fraction": 0.25, "spliced_accuracy": 0.5} for l0, ev in points
    ]
    directions = [torch.eye(2), torch.eye(2)[:, [1, 0]]]
    return Result(setting, library, metrics, directions, seconds)


def test_table_and_verdicts_of_two_libraries_and_a_variant_without_a_peer():
    k8, k16 = (Setting("topk", f"k={k}", {"activation": "topk", "k": k}, "TopKSAE", k) for k in (8, 16))
    alone = Setting("matryoshka", "k=8", {}, None, 8)
    results = [
        _result(k8, "ours", [(8, 0.8), (8, 0.9)], [2.0, 3.0]),
        _result(k8, "overcomplete", [(8, 0.8), (8, 0.8)], [1.0, 2.0]),
        _result(k16, "ours", [(16, 0.9), (16, 0.9)], [1.0, 1.0]),
        _result(k16, "overcomplete", [(16, 0.95), (16, 0.95)], [2.0, 2.0]),
        _result(alone, "ours", [(8, 0.7), (8, 0.7)], [1.0, 1.0]),
    ]
    assert table(results).splitlines()[2:4] == [
        "| topk | k=8 | ours | 0.850 | 8.0 | 25.0% | 50.0% | 1.000 | 2.50 | 1.75 |",
        "| topk | k=8 | overcomplete (TopKSAE) | 0.800 | 8.0 | 25.0% | 50.0% | 1.000 | 1.50 | — |",
    ]
    topk, matryoshka = verdicts(results)
    assert topk["on or above the peer's frontier"] is False
    assert [(l0, ev) for l0, ev, _ in topk["margins (peer L0, peer EV, ours - peer)"]] == [(8, 0.8), (16, 0.95)]
    assert topk["time ratio ours/peer"] == 1.0  # the median of 2, 1.5, 0.5 and 0.5
    assert matryoshka == {"variant": "matryoshka", "peer": None, "largest dead fraction (ours)": 0.25}
    assert verdict_table([topk, matryoshka]).splitlines()[2:] == [
        "| topk | TopKSAE | NO | -0.050 (16.0) | 0 | 1.00 | 25.0% / 25.0% |",
        "| matryoshka | — | — | — | — | — | 25.0% / — |",
    ]


def test_run_trains_and_measures_both_libraries_with_overcomplete():
    peer = import_overcomplete()
    if peer is None:
        pytest.skip("overcomplete is not installed (pip install overcomplete==0.3.0)")
    acts = _demo_acts(rows=600, width=16, classes=3)
    topk = Setting("topk", "k=4", {"activation": "topk", "k": 4}, "TopKSAE", 4)
    results = run(acts, [RELU, topk], seeds=2, epochs=2, peer=peer)
    assert [(r.setting.variant, r.library) for r in results] == [
        ("relu", "ours"),
        ("relu", "overcomplete"),
        ("topk", "ours"),
        ("topk", "overcomplete"),
    ]
    for r in results:
        assert len(r.metrics) == len(r.seconds) == len(r.directions) == 2
        assert r.directions[0].shape == (16, 256)
        assert all(math.isfinite(m["explained_variance"]) and m["explained_variance"] <= 1 for m in r.metrics)
        assert all(0 <= m["dead_fraction"] <= 1 and 0 <= m["spliced_accuracy"] <= 1 for m in r.metrics)
    assert [m["l0"] for m in results[3].metrics] == [4.0, 4.0]

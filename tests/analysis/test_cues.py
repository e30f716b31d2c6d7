"""cue_reliance: exact on a model whose head reads the pixels, and equal to a loop over the pairs."""

from __future__ import annotations

import pytest
import torch

from captum_salve import CueReliance, SparseAutoencoder, cue_reliance
from captum_salve.store import RowStatistics
from tests.helpers import PixelClassifier, random_sae

SIDE = 4
D_IN = 3 * SIDE * SIDE


def _pairs(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Dim images, and the same images with a red 2 × 2 cue added in the top-left corner."""
    without = torch.rand(n, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed)) * 0.1
    with_cue = without.clone()
    with_cue[:, 0, :2, :2] += 1.0
    return with_cue, without


def _cue_reader() -> SparseAutoencoder:
    """A ReLU SAE on the pixels: feature 2 sums the cue's four red pixels minus 0.5; feature 0 reads other pixels."""
    sae = SparseAutoencoder(D_IN, 4, "relu")
    cue_pixels = torch.zeros(3, SIDE, SIDE)
    cue_pixels[0, :2, :2] = 1.0
    elsewhere = torch.zeros(3, SIDE, SIDE)
    elsewhere[1:, 2:, 2:] = 1.0
    with torch.no_grad():
        sae.encoder.weight.zero_()
        sae.encoder.weight[2] = cue_pixels.flatten()
        sae.encoder.weight[0] = elsewhere.flatten()
        sae.encoder.bias.copy_(torch.tensor([0.0, 0.0, -0.5, 0.0]))
        sae.decoder.bias.zero_()
    return sae


def test_a_feature_that_reads_the_cue_ranks_first_with_its_exact_change():
    with_cue, without = _pairs()
    reliance = cue_reliance(PixelClassifier(SIDE), _cue_reader(), with_cue, without)
    assert reliance.top(1) == [2] and reliance.rank_of(2) == 1 and reliance.pairs == 12
    # without the cue the four pixels sum to less than 0.4, so the code is off; with it, it is their sum + 4 - 0.5
    expected = (without[:, 0, :2, :2].sum(dim=(1, 2)) + 3.5).mean()
    torch.testing.assert_close(reliance.mean_change[0], expected)
    assert reliance.turns_on[0] == 1.0
    untouched = reliance.features != 2  # feature 0 reads pixels the cue leaves alone; 1 and 3 read nothing
    assert (reliance.mean_change[untouched] == 0).all() and (reliance.effect[untouched] == 0).all()
    assert (reliance.turns_on[untouched] == 0).all()


@pytest.mark.parametrize("activation", ["linear", "relu", "topk"])
def test_the_ranking_equals_a_loop_over_pairs_and_features(activation):
    sae = random_sae(D_IN, activation, d_latent=8, k=3 if activation == "topk" else None, seed=1)
    with_cue, without = _pairs(n=9, seed=3)
    with_cue = with_cue + 0.3 * torch.rand(with_cue.shape, generator=torch.Generator().manual_seed(4))
    reliance = cue_reliance(PixelClassifier(SIDE), sae, with_cue, without, batch_size=4)
    threshold = sae.active_threshold(RowStatistics.of(torch.cat([with_cue, without]).flatten(1)))
    expected = {}
    for feature in range(sae.d_latent):
        on, off = [], []
        for i in range(len(with_cue)):
            with torch.no_grad():
                on.append(float(sae.encode(with_cue[i].flatten()[None])[0, feature]))
                off.append(float(sae.encode(without[i].flatten()[None])[0, feature]))
        change = sum(a - b for a, b in zip(on, off, strict=True)) / len(on)
        spread = torch.tensor(on + off, dtype=torch.float64).std().item()
        turns_on = sum(abs(a) > threshold and abs(b) <= threshold for a, b in zip(on, off, strict=True)) / len(on)
        expected[feature] = (change / spread if spread > 0 else 0.0, change, turns_on)
    order = sorted(expected, key=lambda f: (-abs(expected[f][0]), f))
    assert reliance.features.tolist() == order
    for row, feature in enumerate(order):
        effect, change, turns_on = expected[feature]
        assert reliance.effect[row].item() == pytest.approx(effect, rel=1e-4, abs=1e-6)
        assert reliance.mean_change[row].item() == pytest.approx(change, rel=1e-4, abs=1e-6)
        assert reliance.turns_on[row].item() == pytest.approx(turns_on)


def test_the_table_lists_the_top_features_in_order():
    reliance = CueReliance(
        features=torch.tensor([5, 1, 0]),
        effect=torch.tensor([2.5, -1.0, 0.0]),
        mean_change=torch.tensor([0.5, -0.25, 0.0]),
        turns_on=torch.tensor([0.75, 0.0, 0.0]),
        pairs=4,
    )
    lines = reliance.table(2).splitlines()
    assert len(lines) == 3
    assert lines[1].split() == ["1", "5", "2.50", "0.5000", "75.0%"]
    assert lines[2].split() == ["2", "1", "-1.00", "-0.2500", "0.0%"]
    assert reliance.top(2) == [5, 1] and reliance.rank_of(0) == 3
    with pytest.raises(ValueError, match="feature must be an integer in \\[0, 2\\]"):
        reliance.rank_of(3)


def test_mistakes_are_named(timm_resnet):
    with_cue, without = _pairs()
    pixels, sae = PixelClassifier(SIDE), _cue_reader()
    with pytest.raises(TypeError, match="sae must be a SparseAutoencoder"):
        cue_reliance(pixels, "sae", with_cue, without)
    with pytest.raises(TypeError, match="without_cue must be a tensor of images"):
        cue_reliance(pixels, sae, with_cue, without.numpy())
    with pytest.raises(ValueError, match="with_cue and without_cue must be the same images .* got \\(12, 3, 4, 4\\)"):
        cue_reliance(pixels, sae, with_cue, without[:10])
    with pytest.raises(ValueError, match="at least 2 image pairs"):
        cue_reliance(pixels, sae, with_cue[:1], without[:1])
    with pytest.raises(ValueError, match="the model gives 512-dimensional activations at the SAE's site"):
        cue_reliance(timm_resnet, sae, torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="with_cue have 1 channel"):
        cue_reliance(timm_resnet, random_sae(512), torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32))
    broken = without.clone()
    broken[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="the activations of without_cue holds 1 non-finite value"):
        cue_reliance(pixels, sae, with_cue, broken)

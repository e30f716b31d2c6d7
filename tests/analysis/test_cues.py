"""cue_reliance: exact on a model whose head reads the pixels, and equal to a loop over the pairs; choose_cue_edit."""

from __future__ import annotations

import pytest
import torch

from captum_salve import ActivationSet, CueReliance, HeadEdit, SparseAutoencoder, choose_cue_edit, cue_reliance
from captum_salve.analysis.cues import within_clean_limits
from captum_salve.store import RowStatistics
from tests.helpers import HeadOnly, PixelClassifier, identity_sae, random_sae

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


# ---- choose_cue_edit ----------------------------------------------------------------------


def _shortcut(n: int = 60, seed: int = 0) -> tuple[HeadOnly, ActivationSet, ActivationSet]:
    """A head whose class 0 leans on a cue (coordinate 2), clean rows, and rows where the cue lies on class 1.

    Coordinates 0 and 1 carry the two classes, 2 the cue, 3 noise; the head reads class 0
    as ``a_0 + 2 a_2``, so the cue on a class-1 row makes it class 0.
    """
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    clean = torch.zeros(n, 4)
    clean[torch.arange(n), labels] = 1.0
    clean += 0.1 * torch.rand(n, 4, generator=generator)
    conflicting = clean.clone()
    conflicting[labels == 1, 2] += 1.0
    model = HeadOnly.from_weights(torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 0.0]]), torch.zeros(2))
    return model, ActivationSet(clean, labels), ActivationSet(conflicting, labels)


def _accuracies(model, rows: ActivationSet) -> tuple[float, torch.Tensor]:
    """Overall and per-class accuracy of a model's real forward on head inputs."""
    with torch.no_grad():
        right = (model(rows.features).argmax(1) == rows.labels).double()
    per_class = torch.stack([right[rows.labels == k].mean() for k in range(int(rows.labels.max()) + 1)])
    return float(right.mean()), per_class


def test_choose_cue_edit_removes_a_planted_cue_and_reports_what_the_edited_model_does():
    model, clean, conflicting = _shortcut()
    sae = identity_sae(4)  # feature l is coordinate l
    choice = choose_cue_edit(model, sae, [2, 3], clean, conflicting, alphas=[0.25, 0.5, 1.0, 2.0])
    assert choice.conflicting_accuracy == (0.5, 1.0) and choice.clean_accuracy == (1.0, 1.0)
    assert choice.edit.alpha[1] == 0  # the noise feature is left as it is: it does not help
    edited = choice.edit.apply(model)
    assert _accuracies(edited, conflicting)[0] == 1.0 and _accuracies(edited, clean)[0] == 1.0
    assert _accuracies(model, conflicting)[0] == 0.5  # the model itself is untouched
    assert choice.worst_class_change == 0.0 and choice.features == (2, 3)
    assert repr(choice).startswith("CueEdit(2: 1, 3: 0; cue-conflicting 50.0% → 100.0%, clean 100.0% → 100.0%")


def _random_problem(seed: int):
    """A random head on 6 coordinates, a ReLU SAE whose feature l is coordinate l, and a cue on coordinates 4 and 5.

    The clean rows are labelled mostly by the head, and the cue is small on them; the
    conflicting rows are the same rows with the cue added, labelled the same.
    """
    generator = torch.Generator().manual_seed(seed)
    model = HeadOnly.from_weights(torch.randn(3, 6, generator=generator), torch.randn(3, generator=generator))
    sae = identity_sae(6, "relu")
    clean = torch.rand(90, 6, generator=generator) * torch.tensor([3.0, 3.0, 3.0, 3.0, 0.3, 0.3])
    with torch.no_grad():  # the head's own predictions, a tenth of them changed
        labels = torch.where(torch.rand(90, generator=generator) < 0.9, model(clean).argmax(1), torch.arange(90) % 3)
    cue = torch.tensor([0.0, 0.0, 0.0, 0.0, 2.0, 2.0])
    return model, sae, ActivationSet(clean, labels), ActivationSet(clean + cue, labels)


@pytest.mark.parametrize("seed", range(4))
def test_one_strength_is_the_best_prefix_and_strength_found_by_a_loop_over_edited_models(seed):
    model, sae, clean, conflicting = _random_problem(seed)
    features, alphas, limits = [5, 1, 4], [0.25, 0.5, 1.0, 2.0], {"clean_tolerance": 0.1, "class_limit": 0.2}
    choice = choose_cue_edit(model, sae, features, clean, conflicting, alphas=alphas, rounds=0, **limits)
    clean_before, class_before = _accuracies(model, clean)
    best, best_value = [0.0, 0.0, 0.0], _accuracies(model, conflicting)[0]
    for k in range(1, 4):
        for alpha in alphas:
            edited = HeadEdit.of(sae, features[:k], alpha).apply(model)
            clean_after, class_after = _accuracies(edited, clean)
            within = clean_after >= clean_before - 0.1 - 1e-12 and bool((class_after >= class_before - 0.2).all())
            if within and _accuracies(edited, conflicting)[0] > best_value:
                best, best_value = [alpha] * k + [0.0] * (3 - k), _accuracies(edited, conflicting)[0]
    assert choice.edit.alpha.tolist() == best
    assert choice.conflicting_accuracy[1] == pytest.approx(best_value)


@pytest.mark.parametrize("seed", range(4))
def test_per_feature_strengths_never_score_below_one_strength_and_keep_the_limits(seed):
    model, sae, clean, conflicting = _random_problem(seed)
    features, limits = [5, 1, 4, 2], {"clean_tolerance": 0.05, "class_limit": 0.1}
    one = choose_cue_edit(model, sae, features, clean, conflicting, rounds=0, **limits)
    each = choose_cue_edit(model, sae, features, clean, conflicting, **limits)
    assert each.conflicting_accuracy[1] >= one.conflicting_accuracy[1]
    edited = each.edit.apply(model)
    (clean_before, class_before), (clean_after, class_after) = _accuracies(model, clean), _accuracies(edited, clean)
    assert clean_after >= clean_before - 0.05 - 1e-12 and bool((class_after >= class_before - 0.1 - 1e-12).all())
    assert each.conflicting_accuracy[1] == pytest.approx(_accuracies(edited, conflicting)[0])
    assert each.worst_class_change == pytest.approx(float((class_after - class_before).min()))


def test_per_feature_strengths_reach_the_second_cue_feature_past_a_class_feature():
    model, sae, clean, conflicting = _random_problem(0)
    limits = {"clean_tolerance": 0.05, "class_limit": 0.1}
    one = choose_cue_edit(model, sae, [5, 1, 4, 2], clean, conflicting, rounds=0, **limits)
    each = choose_cue_edit(model, sae, [5, 1, 4, 2], clean, conflicting, **limits)
    # one strength stops at the prefix [5]: the prefixes through the class coordinate 1 break the limits
    assert one.edit.alpha[1:].tolist() == [0.0, 0.0, 0.0] and one.edit.alpha[0] > 0
    assert each.edit.alpha[1] == 0 and each.edit.alpha[2] > 0  # the cue's other coordinate, past the class one
    assert each.conflicting_accuracy[1] > one.conflicting_accuracy[1] + 0.1


def test_choose_cue_edit_names_the_argument_that_is_wrong():
    model, clean, conflicting = _shortcut()
    sae = identity_sae(4)
    with pytest.raises(ValueError, match="conflicting must be an ActivationSet of head inputs with labels"):
        choose_cue_edit(model, sae, [2], clean, ActivationSet(conflicting.features))
    with pytest.raises(ValueError, match="clean has 3-dimensional rows"):
        choose_cue_edit(model, sae, [2], ActivationSet(clean.features[:, :3], clean.labels), conflicting)
    with pytest.raises(ValueError, match="alphas"):
        choose_cue_edit(model, sae, [2], clean, conflicting, alphas=[1.0, -1.0])
    with pytest.raises(ValueError, match="rounds"):
        choose_cue_edit(model, sae, [2], clean, conflicting, rounds=-1)
    with pytest.raises(ValueError, match="class_limit"):
        choose_cue_edit(model, sae, [2], clean, conflicting, class_limit=1.5)
    with pytest.raises(ValueError, match="repeat"):
        choose_cue_edit(model, sae, [2, 2], clean, conflicting)
    broken = clean.features.clone()
    broken[3, 1] = float("nan")
    with pytest.raises(ValueError, match="clean holds 1 non-finite value"):
        choose_cue_edit(model, sae, [2], ActivationSet(broken, clean.labels), conflicting)
    assert choose_cue_edit(model, sae, 2, clean, conflicting).features == (2,)  # one feature as an int


def test_within_clean_limits_allows_exactly_the_tolerance_overall_and_the_limit_per_class():
    before = (0.9, torch.tensor([0.8, 1.0]))
    assert within_clean_limits((0.87, torch.tensor([0.75, 0.95])), before, 0.03, 0.05)  # both at their bound
    assert not within_clean_limits((0.86, torch.tensor([0.8, 1.0])), before, 0.03, 0.05)  # overall past it
    assert not within_clean_limits((0.9, torch.tensor([0.74, 1.0])), before, 0.03, 0.05)  # one class past it
    assert within_clean_limits((0.9, torch.tensor([0.0, 1.0])), before, 0.03, 1.0)  # a limit of 1: any class loss

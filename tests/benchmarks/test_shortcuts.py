import pytest
import torch
from sklearn.linear_model import LogisticRegression

from benchmarks.cues import cue_scores
from benchmarks.shortcuts import (
    CueActs,
    affine_head,
    balanced_groups,
    choose,
    dfr_head,
    gated_project,
    leace_head,
    random_directions,
)
from captum_salve import ActivationSet, SparseAutoencoder
from captum_salve.edit import FeatureDirections
from captum_salve.edit.rules import ProjectOut


def test_balanced_groups_gives_every_class_and_cue_group_the_smallest_groups_size():
    labels = torch.tensor([0] * 10 + [1] * 6 + [2] * 8)
    cued = torch.tensor([1] * 7 + [0] * 3 + [1] * 3 + [0] * 3 + [1] * 4 + [0] * 4).bool()
    keep = balanced_groups(labels, cued, torch.Generator().manual_seed(0))
    assert len(keep.unique()) == len(keep) == 6 * 3
    counts = torch.bincount(labels[keep] * 2 + cued[keep].long(), minlength=6)
    assert counts.tolist() == [3] * 6


def test_cue_scores_equal_a_loop_over_the_images():
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (60,), generator=generator)
    predicted = {mode: torch.randint(0, 4, (60,), generator=generator) for mode in ("config", "none", "conflicting")}
    cue_classes = (1, 3)
    others = [i for i in range(60) if int(labels[i]) not in cue_classes]
    expected = {
        "test accuracy": sum(int(predicted["config"][i] == labels[i]) for i in range(60)) / 60,
        "no-cue accuracy": sum(int(predicted["none"][i] == labels[i]) for i in range(60)) / 60,
        "cue-conflicting accuracy": sum(int(predicted["conflicting"][i] == labels[i]) for i in range(60)) / 60,
        "flip rate": sum(int(predicted["none"][i] != predicted["conflicting"][i]) for i in others) / len(others),
    }
    assert cue_scores(predicted, labels, cue_classes) == pytest.approx(expected, abs=1e-12)


def test_cue_acts_score_a_tiny_head_as_a_loop_does():
    head = torch.nn.Linear(5, 3).double()
    generator = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 3, (40,), generator=generator)
    features = {mode: torch.randn(40, 5, generator=generator, dtype=torch.float64) for mode in ("none", "conflicting")}
    acts = CueActs(labels, features, (0,))
    logits = affine_head(head.weight.detach(), head.bias.detach())
    with torch.no_grad():
        predicted = {mode: [int(head(a[i]).argmax()) for i in range(40)] for mode, a in features.items()}
    others = [i for i in range(40) if int(labels[i]) != 0]
    scores = acts.scores(logits)
    assert scores["cue-conflicting accuracy"] == pytest.approx(
        sum(predicted["conflicting"][i] == int(labels[i]) for i in range(40)) / 40
    )
    assert scores["flip rate"] == pytest.approx(
        sum(predicted["none"][i] != predicted["conflicting"][i] for i in others) / len(others)
    )
    per_class = [
        sum(predicted["none"][i] == k for i in range(40) if labels[i] == k) / int((labels == k).sum()) for k in range(3)
    ]
    assert acts.clean_per_class(logits).tolist() == pytest.approx(per_class)


def test_choose_keeps_the_first_best_candidate_within_the_clean_tolerance_and_class_limit():
    labels = torch.tensor([0, 0, 1, 1])
    a = torch.eye(2, dtype=torch.float64)[labels]
    acts = CueActs(labels, {"none": a, "conflicting": a.flip(1)}, (0,))
    right, swapped = torch.eye(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64).flip(1)
    zero = torch.zeros(2, dtype=torch.float64)
    # clean and conflicting accuracy: right head (1, 0), swapped head (0, 1), constant head (0.5, 0.5)
    heads = [affine_head(right, zero), affine_head(swapped, zero), affine_head(0 * right, torch.tensor([1.0, 0.0]))]
    assert choose(heads, acts, heads[0], 0.03) == 0
    assert choose(heads, acts, heads[0], 0.5) == 2
    assert choose(heads, acts, heads[0], 1.0) == 1
    # the constant head keeps half the clean images but loses every image of class 1
    assert choose(heads, acts, heads[0], 0.5, class_limit=0.5) == 0
    assert choose(heads, acts, heads[0], 0.5, class_limit=1.0) == 2


def test_dfr_head_folds_the_standardisation_into_the_head():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(80, 6, generator=generator, dtype=torch.float64) * 3 + 5
    y = torch.arange(80) % 3
    weight, bias = dfr_head(x, y, 0.5)
    standardised = ((x - x.mean(0)) / x.std(0)).numpy()
    fitted = LogisticRegression(C=0.5, max_iter=2000).fit(standardised, y.numpy())
    expected = torch.from_numpy(fitted.decision_function(standardised))
    torch.testing.assert_close(affine_head(weight, bias)(x), expected)


def test_leace_head_equals_the_head_after_the_eraser():
    leace = pytest.importorskip("concept_erasure")
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(200, 6, generator=generator, dtype=torch.float64)
    z = (torch.rand(200, generator=generator) < 0.5).double()
    x[:, 0] += 2 * z
    eraser = leace.LeaceEraser.fit(x, z[:, None])
    weight, bias = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    folded = affine_head(*leace_head(weight, bias, eraser))
    torch.testing.assert_close(folded(x), eraser(x) @ weight.T + bias)


def test_random_directions_are_one_unit_direction_per_feature():
    sae = SparseAutoencoder(8, 16)
    acts = ActivationSet(torch.randn(50, 8).relu())
    directions = random_directions(sae, [3, 5, 11], acts, seed=0)
    assert directions.count == 3
    torch.testing.assert_close(directions.decoder.norm(dim=0), torch.ones(3, dtype=torch.float64))
    assert torch.linalg.matrix_rank(directions.decoder) == 3
    again = random_directions(sae, [3, 5, 11], acts, seed=1)
    assert not torch.allclose(directions.decoder, again.decoder)


def test_gated_project_removes_only_the_active_part_of_the_code():
    directions = FeatureDirections.from_vectors(torch.tensor([1.0, 0.0]), mean=torch.zeros(2))  # code z(a) = a_0
    weight, bias = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    a = torch.tensor([[2.0, 1.0], [-2.0, 1.0]], dtype=torch.float64)
    gated = gated_project(weight, bias, directions, torch.tensor([0.5], dtype=torch.float64))(a)
    projected = ProjectOut().activations(a, directions, torch.tensor([0.5], dtype=torch.float64), -1.0)
    torch.testing.assert_close(gated[0], projected[0] @ weight.T)  # active: the same as "project"
    torch.testing.assert_close(gated[1], a[1] @ weight.T)  # inactive: untouched (project would add 0.5·2·d)

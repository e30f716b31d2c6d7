"""The faithfulness stage's draw of test images: stratified by class, seeded, independent of the data's order."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from captum_salve.pipeline.faithfulness import stratified_indices


def test_a_class_sorted_set_gives_every_class_its_share():
    labels = torch.arange(10).repeat_interleave(45)  # a class-sorted folder: the first 200 are classes 0 to 4
    drawn = stratified_indices(labels, 200)
    assert torch.bincount(labels[drawn], minlength=10).tolist() == [20] * 10
    assert torch.equal(drawn, drawn.sort().values) and len(drawn.unique()) == 200


def test_a_small_class_gives_all_it_has_and_the_others_share_the_rest():
    labels = torch.tensor([0] * 3 + [1] * 50 + [2] * 50)
    counts = torch.bincount(labels[stratified_indices(labels, 30)]).tolist()
    assert counts[0] == 3 and sorted(counts[1:]) == [13, 14]


def test_the_draw_is_seeded():
    labels = torch.arange(7).repeat(30)
    assert torch.equal(stratified_indices(labels, 40, seed=3), stratified_indices(labels, 40, seed=3))
    assert not torch.equal(stratified_indices(labels, 40, seed=3), stratified_indices(labels, 40, seed=4))
    assert torch.equal(stratified_indices(labels, 500), torch.arange(210))  # more than there are: all of them


@settings(max_examples=50, deadline=None)
@given(counts=st.lists(st.integers(1, 12), min_size=1, max_size=6), n=st.integers(0, 80), seed=st.integers(0, 99))
def test_the_classes_are_as_equal_as_the_data_allows(counts, n, seed):
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]
    drawn = stratified_indices(labels, n, seed=seed)
    assert len(drawn) == min(n, len(labels)) and len(drawn.unique()) == len(drawn)
    got = torch.bincount(labels[drawn], minlength=len(counts))
    short = got < torch.tensor(counts)  # classes with samples left over
    if short.any():  # each of them got at least as many as any other class, and at most one less than the most
        assert got[short].min() >= got.max() - 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(labels=torch.tensor([0.0, 1.0]), n=1), "labels must be integer class indices"),
        (dict(labels=torch.tensor([0, 1]), n=-1), "n must be an integer >= 0, got -1"),
        (dict(labels=torch.tensor([0, 1]), n=1, seed=1.5), "seed must be an integer, got 1.5"),
    ],
)
def test_stratified_indices_names_a_bad_argument(arguments, message):
    with pytest.raises(ValueError, match=message):
        stratified_indices(**arguments)

"""Activation maximisation, on a toy model whose codes are linear in the pixels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_salve import SparseAutoencoder, collect_activations, select_feature
from captum_salve.attr import maximize_feature
from tests.helpers import PixelClassifier, hook_count, trained_digits_sae

SIDE = 8


def _pixel_setup(activation: str = "linear", seed: int = 0) -> tuple[nn.Module, SparseAutoencoder]:
    torch.manual_seed(seed)
    return PixelClassifier(SIDE).eval(), SparseAutoencoder(3 * SIDE * SIDE, 4, activation)


def _correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([x.flatten(), y.flatten()]))[0, 1])


@pytest.mark.parametrize("parameterization, least", [("pixel", 0.7), ("fourier", 0.3)])
def test_the_image_grows_along_the_encoders_pixel_direction(parameterization, least):
    model, sae = _pixel_setup()
    result = maximize_feature(model, sae, [0, 3], steps=32, parameterization=parameterization)
    encoder = sae.encoder.weight.detach()
    for row, feature in enumerate([0, 3]):
        change = result.images[row] - result.snapshots[0][row]
        assert _correlation(change, encoder[feature]) > least
        assert abs(_correlation(change, encoder[1])) < 0.25  # a feature not asked for
    assert (result.history[-1] > result.history[0] + 0.5).all()


def test_activations_are_the_codes_of_the_final_images():
    model, sae = _pixel_setup("relu")
    result = maximize_feature(model, sae, [2, 0, 2], steps=8, parameterization="pixel")
    codes = sae.encode(result.images.flatten(1)).detach()
    torch.testing.assert_close(result.activations, codes[torch.arange(3), torch.tensor([2, 0, 2])])
    assert result.features == [2, 0, 2] and result.history.shape == (8, 3)


def test_a_relu_feature_that_starts_switched_off_is_still_driven_up():
    model, sae = _pixel_setup("relu")
    start = torch.sigmoid(torch.randn(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0)) * 0.5)
    with torch.no_grad():  # the starting image's pre-activation is -1: code 0, no gradient through the ReLU
        sae.encoder.bias[1] -= sae.pre_activation(start.flatten(1))[0, 1] + 1.0
    result = maximize_feature(model, sae, 1, steps=48, parameterization="pixel", transforms=False)
    assert result.history[0, 0].item() == pytest.approx(-1.0, abs=1e-5)
    assert result.activations[0] > 0


def test_the_same_seed_gives_the_same_images_and_another_seed_does_not():
    model, sae = _pixel_setup()
    first, again = (maximize_feature(model, sae, [1, 2], steps=6, seed=3) for _ in range(2))
    assert torch.equal(first.images, again.images) and torch.equal(first.history, again.history)
    assert all(torch.equal(first.snapshots[s], again.snapshots[s]) for s in first.snapshots)
    other = maximize_feature(model, sae, [1, 2], steps=6, seed=4)
    assert not torch.allclose(first.images, other.images)


def test_snapshots_are_kept_at_the_requested_steps_and_start_from_the_seeded_noise():
    model, sae = _pixel_setup()
    result = maximize_feature(model, sae, [0, 1], steps=10, snapshots=(0, 3, 7, 25), parameterization="pixel", seed=5)
    assert sorted(result.snapshots) == [0, 3, 7, 10]  # the last step is always kept; steps past it are not
    assert torch.equal(result.snapshots[10], result.images)
    noise = torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(5)) * 0.5
    torch.testing.assert_close(result.snapshots[0], torch.sigmoid(noise))
    assert not torch.equal(result.snapshots[3], result.snapshots[7])
    for images in result.snapshots.values():
        assert images.shape == (2, 3, SIDE, SIDE) and images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize("parameterization", ["pixel", "fourier"])
def test_without_transforms_each_feature_is_optimised_independently_of_the_batch(parameterization):
    """Rows share nothing but the noise stream: row 0 is the same alone or next to any other feature.

    (With transforms, each step draws one random transform per row from one generator,
    so the draws, and hence the images, depend on the batch size.)
    """
    model, sae = _pixel_setup()
    kwargs = dict(steps=12, transforms=False, parameterization=parameterization)
    alone = maximize_feature(model, sae, 2, **kwargs)
    with_one = maximize_feature(model, sae, [2, 0], **kwargs)
    with_two = maximize_feature(model, sae, [2, 3, 1], **kwargs)
    torch.testing.assert_close(with_one.images[0], alone.images[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(with_two.images[0], alone.images[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(with_two.history[:, 0], alone.history[:, 0], rtol=1e-5, atol=1e-5)


def test_the_model_keeps_its_weights_mode_and_no_hooks():
    model, sae = _pixel_setup()
    model.train()
    weight = model.head.weight.detach().clone()
    maximize_feature(model, sae, [0], steps=3)
    assert model.training and torch.equal(model.head.weight, weight)
    assert model.head.weight.grad is None and sae.encoder.weight.grad is None
    assert hook_count(model) == 0


def test_default_image_size_comes_from_the_model_config():
    model, sae = _pixel_setup()
    assert maximize_feature(model, sae, [0, 1], steps=1).images.shape == (2, 3, SIDE, SIDE)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=-1), "steps must be an integer >= 1, got -1"),
        (dict(steps=0), "steps must be an integer >= 1, got 0"),
        (dict(steps=2.5), "steps must be an integer >= 1, got 2.5"),
        (dict(steps=True), "steps must be an integer >= 1, got True"),
        (dict(features=4), r"features must be SAE feature indices in \[0, 3\], got \[4\]"),
        (dict(features=[1, -1]), r"features must be SAE feature indices in \[0, 3\]"),
        (dict(features=[]), r"features must name at least one SAE feature"),
        (dict(features=[1.0]), r"features must be SAE feature indices \(integers\), got \[1.0\]"),
        (dict(parameterization="wavelet"), "parameterization must be one of .*'wavelet'"),
        (dict(lr=0.0), "lr must be a finite number > 0, got 0.0"),
        (dict(lr=float("nan")), "lr must be a finite number > 0, got nan"),
        (dict(l2=-1e-3), "l2 must be a finite number >= 0, got -0.001"),
        (dict(tv=-1.0), "tv must be a finite number >= 0, got -1.0"),
        (dict(image_size=4), r"image_size \(a side or \(H, W\)\) must be an integer >= 8, got 4"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, message):
    model, sae = _pixel_setup()
    arguments = dict(features=0, steps=2) | kwargs
    with pytest.raises(ValueError, match=message):
        maximize_feature(model, sae, **arguments)
    assert hook_count(model) == 0


# ---- on the trained digits classifier ------------------------------------------------------


@pytest.mark.slow
def test_maximised_images_beat_most_real_images_on_the_digits_resnet(digits_resnet):
    model, sae, profile, test = trained_digits_sae(digits_resnet)
    features = [select_feature(profile, c)[0] for c in (0, 3, 7)]
    codes = sae.encode_all(collect_activations(model, test.images[:300], progress=False))[:, features]
    result = maximize_feature(model, sae, features, steps=160)
    assert (result.activations > codes.quantile(0.99, dim=0)).all()  # as the pipeline reports it

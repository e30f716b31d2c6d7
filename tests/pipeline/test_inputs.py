"""The demo's inputs on another canvas."""

from __future__ import annotations

from pathlib import Path

import timm
import torch

from captum_salve.data import CUE_VARIANTS
from captum_salve.pipeline import digits_inputs, inputs as inputs_module
from captum_salve.zoo import TrainedClassifier


def test_digits_inputs_draw_the_classifier_and_both_splits_from_the_canvas_asked_for(monkeypatch):
    canvas = CUE_VARIANTS["tuning"]["tint-yellow-0-6"]
    asked = []

    def classifier(arch, *, config, device, progress, seed):
        asked.append((config, seed))
        return TrainedClassifier(timm.create_model("resnet18", num_classes=10).eval(), arch, 0.5, 1.0, Path("x"))

    monkeypatch.setattr(inputs_module, "digits_classifier", classifier)
    inputs = digits_inputs("resnet18", canvas=canvas, model_seed=3, progress=False)
    assert asked == [(canvas, 3)]
    assert inputs.train.config == canvas and inputs.test.config == canvas and len(inputs.train) == 2 * 1348
    assert torch.equal(inputs.planted_cue, inputs.test.has_cue)
    assert inputs.description["classes with the planted cue"] == "0, 6"


def test_the_demos_probe_pairs_redrawn_test_digits_with_and_without_the_cue(monkeypatch):
    def classifier(arch, *, config, device, progress, seed):
        return TrainedClassifier(timm.create_model("resnet18", num_classes=10).eval(), arch, 0.5, 1.0, Path("x"))

    monkeypatch.setattr(inputs_module, "digits_classifier", classifier)
    probe = digits_inputs("resnet18", progress=False).probe
    inputs = digits_inputs("resnet18", progress=False)
    assert len(probe.with_cue) == len(inputs.test) and not torch.equal(probe.without_cue, inputs.test.images)
    changed = (probe.with_cue != probe.without_cue).any(dim=1)
    assert torch.equal(changed, probe.masks)  # the pairs differ exactly where the cue is

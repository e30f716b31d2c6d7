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

    def classifier(arch, *, config, device, progress):
        asked.append(config)
        return TrainedClassifier(timm.create_model("resnet18", num_classes=10).eval(), arch, 0.5, 1.0, Path("x"))

    monkeypatch.setattr(inputs_module, "digits_classifier", classifier)
    inputs = digits_inputs("resnet18", canvas=canvas, progress=False)
    assert asked == [canvas]
    assert inputs.train.config == canvas and inputs.test.config == canvas and len(inputs.train) == 2 * 1348
    assert torch.equal(inputs.planted_cue, inputs.test.has_cue)
    assert inputs.description["classes with the planted cue"] == "0, 6"

"""What a pipeline run works on: the model, its data, and how to show its inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from captum_salve.checks import check_class_names, shape_of
from captum_salve.data import CanvasConfig, DigitsCanvas
from captum_salve.models import find_head, model_label
from captum_salve.sites import HEAD_INPUT
from captum_salve.store import ActivationStore
from captum_salve.zoo import digits_classifier

__all__ = ["DIGITS_CAM_LAYERS", "CueProbe", "PipelineInputs", "digits_inputs"]

# Grad-FAM layers of the demo models: a middle and the last stage of the ResNet, two blocks of the ViT.
DIGITS_CAM_LAYERS = {"resnet18": ("layer3.1", "layer4.1"), "vit": ("blocks.3.norm1", "blocks.1")}


@dataclass(frozen=True)
class CueProbe:
    """Paired images with and without a cue the user suspects the model relies on.

    Attributes:
        with_cue: (N, C, H, W) model inputs that show the cue.
        without_cue: The same N images without it, in the same order.
        masks: Optional (N, H, W) booleans: where the cue is in each ``with_cue`` image.
        name: What the cue is, for the report.

    Example:
        >>> with_cue, without_cue, masks = cue_probe_folder("probe", model)    # probe/with_cue, probe/without_cue
        >>> inputs = PipelineInputs(..., probe=CueProbe(with_cue, without_cue, masks, "watermark"))
    """

    with_cue: Tensor
    without_cue: Tensor
    masks: Tensor | None = None
    name: str = "the suspected cue"

    def __post_init__(self) -> None:
        for field_name in ("with_cue", "without_cue"):
            value = getattr(self, field_name)
            if not isinstance(value, Tensor) or value.dim() != 4 or len(value) < 2:
                raise ValueError(f"CueProbe {field_name} must be (N, C, H, W) images, N >= 2, got {shape_of(value)}")
        if self.with_cue.shape != self.without_cue.shape:
            raise ValueError(
                f"CueProbe with_cue and without_cue must be pairs of the same shape, got "
                f"{tuple(self.with_cue.shape)} and {tuple(self.without_cue.shape)}"
            )
        size = (len(self.with_cue), *self.with_cue.shape[-2:])
        if self.masks is not None and (
            not isinstance(self.masks, Tensor) or self.masks.dtype != torch.bool or tuple(self.masks.shape) != size
        ):
            raise ValueError(f"CueProbe masks must be a boolean {size} tensor, got {shape_of(self.masks)}")


@dataclass
class PipelineInputs:
    """What the pipeline runs on.

    Attributes:
        name: Short name, used for the output folder and the report.
        model: The classifier, on the device to use.
        train: Labelled dataset to train the SAE on.
        test: Labelled held-out dataset every figure and number is measured on.
        class_names: One name per class.
        to_display: Turns a model input back into a [0, 1] image for figures.
        cam_layers: Grad-FAM layers (dotted names); empty: the model family's default.
        masks: Optional (N_test, H, W) ground-truth object masks (pointing game; without
            them the pointing game is not played).
        train_activations: Optional head-input activations of ``train`` already on disk
            (written by ``captum-salve collect`` or :func:`~captum_salve.store.write_activations`
            from ``train`` in order, with labels): the run reads them instead of running the
            model over ``train``.
        planted_cue: Optional (N_test,) bool, which test images carry a cue planted
            in the data (the cross-class stage compares the found feature's codes
            with and without it, on the test images of the classes that carry it).
        probe: Optional paired images with and without a suspected cue: the shortcuts stage
            ranks the SAE features by how much the cue moves them.
        description: Facts about the model and data shown in the report.

    Example:
        >>> inputs = PipelineInputs("mine", model, train_set, test_set, ["cat", "dog"], to_display=lambda x: x)
        >>> summary = run_pipeline(inputs, "salve-report/mine")
    """

    name: str
    model: nn.Module
    train: Dataset
    test: Dataset
    class_names: list[str]
    to_display: Callable[[Tensor], Tensor]
    cam_layers: tuple[str, ...] = ()
    masks: Tensor | None = None
    planted_cue: Tensor | None = None
    probe: CueProbe | None = None
    description: dict[str, Any] = field(default_factory=dict)
    train_activations: ActivationStore | None = None

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"PipelineInputs name must be a plain folder name, got {self.name!r}")
        self.class_names = check_class_names(self.class_names, "PipelineInputs class_names")
        if len(self.class_names) < 2:
            raise ValueError(f"PipelineInputs class_names must name at least 2 classes, got {self.class_names!r}")
        if not callable(self.to_display):
            raise TypeError(f"PipelineInputs to_display must be a function of images, got {self.to_display!r}")
        if self.probe is not None and not isinstance(self.probe, CueProbe):
            raise TypeError(f"PipelineInputs probe must be a CueProbe or None, got {type(self.probe).__name__}")
        tests = len(self.test)
        if tests == 0 or len(self.train) == 0:
            raise ValueError(f"PipelineInputs train and test must hold images, got {len(self.train)} and {tests}")
        store = self.train_activations
        if store is not None:
            if not isinstance(store, ActivationStore):
                raise TypeError(
                    f"PipelineInputs train_activations must be an ActivationStore, got {type(store).__name__}"
                )
            if store.site != HEAD_INPUT or len(store) != len(self.train) or store.labels is None:
                raise ValueError(
                    f"PipelineInputs train_activations must hold the labelled head-input activations of the "
                    f"{len(self.train)} training images, one row each; {store!r} holds {len(store)} rows "
                    f"read at {store.site!r}" + (" without labels" if store.labels is None else "")
                )
            width, label = find_head(self.model)[1].in_features, model_label(self.model)
            if store.dim != width or (store.model is not None and store.model != label):
                raise ValueError(
                    f"PipelineInputs train_activations were read from {store.model!r} ({store.dim} wide), but the "
                    f"model is {label!r} with a {width}-wide head input; collect them from this model"
                )
        for name, value, rank in (("masks", self.masks, 3), ("planted_cue", self.planted_cue, 1)):
            if value is None:
                continue
            if not isinstance(value, Tensor) or value.dtype != torch.bool or value.dim() != rank or len(value) != tests:
                kind = "(N_test, H, W)" if rank == 3 else "(N_test,)"
                raise ValueError(
                    f"PipelineInputs {name} must be a boolean {kind} tensor, one row per test image ({tests}), "
                    f"got {shape_of(value)}" + (f" of {value.dtype}" if isinstance(value, Tensor) else "")
                )


# The demo's probe draws the test digits at other places than the scored test images.
PROBE_SEED = 1


def digits_inputs(
    arch: str = "resnet18",
    *,
    train: Dataset | None = None,
    canvas: CanvasConfig | None = None,
    model_seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> PipelineInputs:
    """The demo's inputs: the digits-canvas classifier of ``arch`` and its canvas (train drawn twice).

    The classifier is trained once per canvas and cached (:func:`~captum_salve.zoo.digits_classifier`);
    ``canvas`` draws another canvas than the demo's (one of :data:`~captum_salve.data.CUE_VARIANTS`, say),
    ``model_seed`` trains another classifier on it (another initialisation and batch order).
    Its Grad-FAM layers are :data:`DIGITS_CAM_LAYERS`; the test set's digit boxes are the
    pointing game's masks and its shared cue is the planted cue. The probe of the shortcuts
    stage pairs the test digits redrawn elsewhere (seed 1) with and without the cue, with
    the cue's masks, as a user with a suspicion would collect them. ``train`` replaces the
    training canvases (``benchmarks/scale_run.py`` gives many redrawn ones).

    Example:
        >>> summary = run_pipeline(digits_inputs("vit"), "salve-report/digits-vit", PipelineConfig(seeds=3))
        >>> tint = digits_inputs("resnet18", canvas=CUE_VARIANTS["tuning"]["tint-yellow-0-6"])
    """
    if arch not in DIGITS_CAM_LAYERS:
        raise ValueError(f"digits_inputs arch must be one of {tuple(DIGITS_CAM_LAYERS)}, got {arch!r}")
    classifier = digits_classifier(arch, config=canvas, device=device, progress=progress, seed=model_seed)
    train = DigitsCanvas("train", config=canvas, copies=2) if train is None else train
    test = DigitsCanvas("test", config=canvas)
    probe = None
    if test.config.cue_classes:
        with_cue = DigitsCanvas("test", config=canvas, seed=PROBE_SEED, cue="all")
        without_cue = DigitsCanvas("test", config=canvas, seed=PROBE_SEED, cue="none")
        name = f"the planted {test.config.cue_kind}"
        probe = CueProbe(with_cue.images, without_cue.images, with_cue.cue_masks(), name)
    return PipelineInputs(
        name=f"digits-{arch}",
        model=classifier.model,
        train=train,
        test=test,
        class_names=DigitsCanvas.classes,
        to_display=lambda x: x,
        cam_layers=DIGITS_CAM_LAYERS[arch],
        masks=test.masks(),
        planted_cue=test.has_cue,
        probe=probe,
        description={
            "model": f"timm {classifier.model.default_cfg.get('architecture', arch)} trained on the digits canvas",
            "classifier training seconds": round(classifier.train_seconds, 1),
            "classes with the planted cue": ", ".join(str(c) for c in test.config.cue_classes),
        },
    )

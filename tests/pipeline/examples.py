"""Pipeline inputs and results for the tests: a toy model and data, and a hand-built summary with known numbers."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from captum_salve.analysis import ControlGoal
from captum_salve.pipeline import (
    AlphaCritResult,
    AtStrength,
    ClassAlphaCrit,
    ClassControl,
    ClassFeatures,
    ControlResult,
    CrossClassEdit,
    CrossClassEntry,
    CrossClassResult,
    CueProbe,
    DiscoverResult,
    DominantFeature,
    EditOutcome,
    FaithfulnessResult,
    GoalCount,
    LayerFaithfulness,
    Maximization,
    PipelineConfig,
    PipelineInputs,
    PipelineSummary,
    PlantedCue,
    SAESummary,
    SeedsResult,
    ShortcutsResult,
    SuspectedFeature,
    ValidateResult,
)
from tests.helpers import small_timm_vit

# Small enough that a whole run takes seconds; every stage still does real work.
TOY_CONFIG = PipelineConfig(
    sae_latents=16,
    sae_epochs=2,
    seeds=2,
    sweep_alphas=(0.0, 1.0, 10.0),
    faithfulness_images=6,
    maximization_steps=2,
    batch_size=16,
)


def toy_inputs(classes: int, *, seed: int = 0, name: str | None = None) -> PipelineInputs:
    """A random two-block ViT on 32×32 images whose brightness grows with the class, with masks and a cue."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = small_timm_vit(num_classes=classes)

    def data(n: int) -> TensorDataset:
        labels = torch.arange(n) % classes
        images = torch.randn(n, 3, 32, 32, generator=generator) * 0.5 + labels.view(-1, 1, 1, 1).float()
        return TensorDataset(images, labels)

    train, test = data(16 * classes), data(8 * classes)
    masks = torch.zeros(len(test), 32, 32, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    without_cue = data(6).tensors[0]
    cue_masks = torch.zeros(6, 32, 32, dtype=torch.bool)
    cue_masks[:, :8, :8] = True  # a bright corner patch is the suspected cue
    with_cue = without_cue + 3.0 * cue_masks[:, None].float()
    return PipelineInputs(
        name=name or f"toy{classes}",
        model=model,
        train=train,
        test=test,
        class_names=[f"c{k}" for k in range(classes)],
        to_display=lambda x: (x.cpu() * 0.2 + 0.5).clamp(0, 1),
        masks=masks,
        planted_cue=torch.arange(len(test)) % 2 == 0,
        probe=CueProbe(with_cue, without_cue, cue_masks, "a bright corner"),
        description={"model": "random two-block ViT", "images": "32×32 noise, brighter per class"},
    )


def write_png(path: Path) -> None:
    """A 1×1 PNG at ``path`` (the report embeds figures, so they must exist)."""
    from matplotlib.figure import Figure

    path.parent.mkdir(parents=True, exist_ok=True)
    Figure(figsize=(0.1, 0.1)).savefig(path, format="png", dpi=10)


def hand_built_summary(folder: Path, *, name: str = "hand") -> PipelineSummary:
    """A three-class summary with chosen numbers (their formatted forms are in the report tests); writes its figures."""
    names = ["cat", "dog", "eel"]
    fig = "figures/f.png"
    write_png(folder / fig)
    outcome = EditOutcome("project", [4, 9], 3.5, True, 0.95, 0.04, -0.015, -0.025)
    paper = EditOutcome("salve", [4], 12.0, False, 0.95, 0.31, -0.2, -0.45)
    never_right = EditOutcome("project", [2], 1.0, True, 0.0, 0.0, 0.0, 0.0)  # eel: 0% before any edit
    at = AtStrength(0.45, 0.5, 0.014)
    dominant = DominantFeature(
        "project", 2.75, {"sae_feature": at, "random direction": at, "principal direction": at}, float("inf"), 0.6
    )
    edit = CrossClassEdit(
        5.0, {"cat": -0.3, "dog": -0.2, "eel": 0.0}, ["cat", "dog", "eel"], {"cat": -0.1, "dog": 0.0, "eel": 0.1}, fig
    )
    crit = ClassAlphaCrit("cat", 4, 40, 1.23456, 1.5, 2, 3, True, 1.2e-9, 2.25, 2.5, 0.01, 0.2)
    config = PipelineConfig(sae_latents=64, seeds=3, goal=ControlGoal(class_accuracy=0.05, off_target=0.03))
    control = ControlResult(
        rule="project",
        classes=[ClassControl(n, 5, never_right if n == "eel" else outcome, paper, dominant, fig, fig) for n in names],
    )
    return PipelineSummary(
        name=name,
        description={"model": "hand-built", "note": "no model was run"},
        class_names=names,
        config=config,
        discover=DiscoverResult(
            train_images=300,
            test_images=90,
            head_input_width=32,
            accuracy=0.9123,
            saes={
                "relu": SAESummary(0.87654, 0.0123, 12.5, 0.0634, 0.9123, 0.9012, 0.71, 0.82),
                "linear": SAESummary(0.95, 0.004, 60.0, 0.0, 0.9123, 0.91, 0.5, 0.6),
            },
            classes=[ClassFeatures(n, [1, 2, 3, 4, 5], [5, 4, 3, 2, 1], 0.66) for n in names],
            cross_class=[CrossClassEntry(7, ["cat", "dog"], 0.875)],
            heatmaps={"relu": fig, "linear": fig},
        ),
        validate=ValidateResult(
            features=[5, 11, 13],
            test_q99=[1.0, 2.0, 3.0],
            maximization={
                "fourier": Maximization([4.0, 5.0, 1.5], 2, fig),
                "pixel": Maximization([0.5, 1.0, 1.0], 0, fig),
            },
            galleries=[fig, fig, fig],
            overlays=[fig, None, fig],
        ),
        faithfulness=FaithfulnessResult(
            images=30,
            images_per_class=[10, 10, 10],
            layers={
                "blocks.1": LayerFaithfulness(
                    [4, 4],
                    {"grad_fam": 0.21, "class_grad_cam": 0.3, "other_feature": 0.55, "random": 0.5},
                    {"grad_fam": 0.875, "class_grad_cam": 0.5, "other_feature": 0.25, "random": 0.125},
                ),
                "blocks.0": LayerFaithfulness(
                    [4, 4], {"grad_fam": 0.2, "class_grad_cam": 0.3, "other_feature": 0.5, "random": 0.5}
                ),
            },
        ),
        control=control,
        suppression_goal=GoalCount.of(control, config.goal),
        alpha_crit=AlphaCritResult("salve", "zero_logit", [crit], fig),
        cross_class=CrossClassResult(
            feature=7,
            classes=["cat", "dog"],
            score=1.75,
            suppress=edit,
            enhance=edit,
            planted_cue=PlantedCue(["dog", "eel"], 2.5, 0.25),
        ),
        seeds=SeedsResult(3, [3, 1, 0], [2.5, 4.0, None], [0.5, None, None], 0.8126, 2 / 3, [0.9, 0.91, 0.92], fig),
        shortcuts=ShortcutsResult(
            cue="a watermark",
            pairs=40,
            mask_area={"blocks.1": 0.0625},
            features=[
                SuspectedFeature(7, 2.5, 0.75, 0.9, ["cat", "dog"], 1, {"blocks.1": 0.8125}),
                SuspectedFeature(3, -0.5, -0.125, 0.0, ["eel", "cat"], 12, {"blocks.1": 0.05}),
            ],
        ),
        seconds={"discover": 1.0, "validate": 2.0},
    )

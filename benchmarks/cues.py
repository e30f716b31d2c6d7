"""Does the unsupervised cross-class ranking find a planted cue? Checked against cue_reliance, on canvas variants.

For the demo canvas and each chosen :data:`~captum_salve.data.CUE_VARIANTS` canvas, the
digits ResNet-18 is trained (or read from the cache, ``$CAPTUM_SALVE_CACHE``) and SAEs
of several seeds are trained exactly as the pipeline trains them (``PipelineConfig()``'s
width, variant and epochs, through :class:`~captum_salve.pipeline.run.Run`). For each
SAE the cue's feature is the top of :func:`~captum_salve.analysis.cue_reliance` on the
test images with and without the cue; the table shows where that feature stands in the
unsupervised cross-class ranking (:func:`~captum_salve.analysis.cross_class_features` on
the training profile), and what the cross-class ranking puts first (with its own rank
by cue_reliance). The classifier's reliance on the cue is shown beside it: accuracy on the
test split as drawn, on the same images without any cue, and on cue-conflicting images
(the cue on the other classes only), and the share of the other classes' test images
whose prediction changes when the cue is added.

Held-out variants are only reported: never choose a default by them.

Example:
    $ python -m benchmarks.cues --out /tmp/cues --variant patch-corner-green-1-7 --variant tint-cyan-1-4
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from benchmarks.results import markdown_table
from captum_salve.analysis import class_profile, cross_class_features, cue_reliance
from captum_salve.data import CUE_VARIANTS, CanvasConfig, DigitsCanvas
from captum_salve.pipeline import PipelineConfig, digits_inputs
from captum_salve.pipeline.run import Run

DEMO = "demo (patch-random-red-3-8)"


@torch.no_grad()
def predictions(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """(N,) the model's predicted classes on a batch of images."""
    return torch.cat([model(images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


def cue_scores(predicted: Mapping[str, Tensor], labels: Tensor, cue_classes: Sequence[int]) -> dict[str, float]:
    """How much predictions lean on a cue, from predictions on one canvas's images in several cue modes.

    ``predicted`` maps a ``DigitsCanvas`` cue mode to the predictions on that canvas's
    images (one split, config and seed, so image i is the same digit in every mode):
    ``"none"`` and ``"conflicting"`` are needed, ``"config"`` (the split as drawn) is
    optional. The flip rate is the share of the other classes' images (those outside
    ``cue_classes``, on which ``"conflicting"`` adds the cue) whose prediction changes
    when the cue is added.

    Example:
        >>> labels = torch.tensor([0, 1])
        >>> cue_scores({"none": torch.tensor([0, 1]), "conflicting": torch.tensor([0, 0])}, labels, (0,))
        {'no-cue accuracy': 1.0, 'cue-conflicting accuracy': 0.5, 'flip rate': 1.0}
    """
    others = ~torch.isin(labels, torch.tensor(list(cue_classes), dtype=labels.dtype))
    scores = {"test accuracy": float((predicted["config"] == labels).double().mean())} if "config" in predicted else {}
    clean, conflicting = predicted["none"], predicted["conflicting"]
    return {
        **scores,
        "no-cue accuracy": float((clean == labels).double().mean()),
        "cue-conflicting accuracy": float((conflicting == labels).double().mean()),
        "flip rate": float((clean[others] != conflicting[others]).double().mean()),
    }


def variant_run(name: str, canvas: CanvasConfig, out: Path, model_seed: int = 0) -> Run:
    """The pipeline's run (default ``PipelineConfig``) of the digits ResNet-18 of a canvas, in ``out / name``.

    The classifier (of ``model_seed``) comes from the cache (``$CAPTUM_SALVE_CACHE``) or is trained;
    the run keeps its training activations and SAEs in its folder, so a second benchmark reuses them.
    """
    inputs = digits_inputs("resnet18", canvas=canvas, model_seed=model_seed, device="cpu", progress=False)
    folder = name if model_seed == 0 else f"{name} (model seed {model_seed})"
    return Run(inputs, out / folder, PipelineConfig())


def chosen_canvases(names: Sequence[str] | None) -> list[tuple[str, str, CanvasConfig]]:
    """(name, group, config) of the demo canvas and the named variants (default: every variant)."""
    groups = {name: group for group, variants in CUE_VARIANTS.items() for name in variants}
    chosen = [(DEMO, "demo", CanvasConfig())]
    return chosen + [(name, groups[name], CUE_VARIANTS[groups[name]][name]) for name in names or groups]


def measure(name: str, group: str, canvas: CanvasConfig, out: Path, seeds: int, model_seed: int = 0) -> list[dict]:
    """One row per SAE seed: the cue's feature by cue_reliance and its rank in the cross-class ranking."""
    start = time.perf_counter()
    run = variant_run(name, canvas, out, model_seed)
    inputs, model, config = run.inputs, run.model, run.config
    clean = DigitsCanvas("test", config=canvas, cue="none")
    cued = DigitsCanvas("test", config=canvas, cue="all")
    predicted = {
        "config": predictions(model, inputs.test.images),
        "none": predictions(model, clean.images),
        "conflicting": predictions(model, DigitsCanvas("test", config=canvas, cue="conflicting").images),
    }
    figures = {
        "variant": name if model_seed == 0 else f"{name} (model seed {model_seed})",
        "group": group,
        "cue classes": list(canvas.cue_classes),
        **cue_scores(predicted, clean.labels, canvas.cue_classes),
    }
    saes = run.saes_of([(config.sae_activation, seed) for seed in range(seeds)])
    rows = []
    for seed, sae in enumerate(saes):
        reliance = cue_reliance(model, sae, cued.images, clean.images)
        ranking = cross_class_features(class_profile(sae, run.train_acts), top=sae.d_latent)
        ranked = [shared.feature for shared in ranking]
        cue_feature = reliance.top(1)[0]
        rows.append(
            {
                **figures,
                "sae seed": seed,
                "cue feature": cue_feature,
                "its effect / turns on": [round(float(reliance.effect[0]), 2), round(float(reliance.turns_on[0]), 3)],
                "its cross-class rank": ranked.index(cue_feature) + 1,
                "its cross-class classes": list(ranking[ranked.index(cue_feature)].classes),
                "cross-class top": ranking[0].feature,
                "cross-class top classes": list(ranking[0].classes),
                "its cue_reliance rank": reliance.rank_of(ranking[0].feature),
            }
        )
    print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    """The rows as one Markdown table."""
    header = ["variant", "group", "cue classes", "accuracy: test / no cue / cue-conflicting", "flip rate"]
    header += ["SAE seed", "cue feature (effect, turns on)", "its cross-class rank (classes)"]
    header += ["cross-class top (classes)", "its cue_reliance rank"]
    cells = []
    for row in rows:
        effect, turns_on = row["its effect / turns on"]
        accuracies = (row["test accuracy"], row["no-cue accuracy"], row["cue-conflicting accuracy"])
        cells.append(
            [row["variant"], row["group"], str(tuple(row["cue classes"])), " / ".join(f"{a:.1%}" for a in accuracies)]
            + [f"{row['flip rate']:.1%}", str(row["sae seed"]), f"f{row['cue feature']} ({effect:.2f}, {turns_on:.0%})"]
            + [f"{row['its cross-class rank']} {tuple(row['its cross-class classes'])}"]
            + [f"f{row['cross-class top']} {tuple(row['cross-class top classes'])}", str(row["its cue_reliance rank"])]
        )
    return markdown_table(header, "llllrrlrlr", cells)


def main(argv: list[str] | None = None) -> list[dict]:
    """Measure the demo canvas and the chosen variants; print the table (and optionally save the rows)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cues", description=__doc__.splitlines()[0])
    names = [name for group in CUE_VARIANTS.values() for name in group]
    parser.add_argument("--variant", action="append", choices=names, help="repeatable; default: every variant")
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs (activations and SAEs)")
    parser.add_argument("--seeds", type=int, default=3, help="SAE seeds per canvas")
    parser.add_argument("--model-seed", type=int, default=0, help="seed of the classifiers (0: the cached demo's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    chosen = chosen_canvases(args.variant)
    rows = [
        row
        for name, group, canvas in chosen
        for row in measure(name, group, canvas, args.out, args.seeds, args.model_seed)
    ]
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()

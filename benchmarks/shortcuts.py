"""Removing a planted shortcut, measured as shortcut benchmarks do: SALVE against DFR, LEACE and random directions.

For the demo canvas and the chosen :data:`~captum_salve.data.CUE_VARIANTS` canvases, with
the digits ResNet-18 and the pipeline's ReLU SAE on the head input (both from
:func:`benchmarks.cues.variant_run`, so cached classifiers and SAEs are reused), every
method is an edit of the head and is scored on the test split (seed 0): accuracy on
cue-conflicting images, the share of the other classes' images whose prediction the cue
flips, and clean accuracy (no cue) overall and per class. The data are drawn apart:

- selection (which features): training digits at seed 1000, with and without the cue;
- validation (α, DFR's C, k): training digits at seed 1001, without the cue and cue-conflicting;
- DFR's and LEACE's fit: training digits at seed 1002, a cue-balanced subset;
- test: the test digits at seed 0, never seen by any choice.

Methods (the rows):

- ``SALVE``: :func:`~captum_salve.analysis.choose_cue_edit` on the validation images: the
  top 8 features of :func:`~captum_salve.analysis.cue_reliance` on the selection pairs,
  suppressed together under ``rule="project"``, each at its own strength. No cue label is
  used beyond choosing the features and the strengths.
- ``SALVE one α``: the same search stopped after its first stage (``rounds=0``): the best
  prefix of the 8 features at one shared strength.
- ``SALVE, best of 3 SAEs``: ``SALVE`` with each of the run's SAEs of seeds 0, 1 and 2 (its
  own features), keeping the one whose edit scores highest on the validation images.
- ``SALVE gated (hook)``: SALVE's features and strengths, removing only the active part
  ``α_l·relu(z_l)·d_l``; not linear in the head input, so a run-time hook and not a weight edit.
- ``random directions``: as ``SALVE``, with random unit directions whose codes have the
  features' root-mean-square (:func:`~captum_salve.analysis.control_directions`), averaged
  over seeds.
- ``DFR`` (Kirichenko et al. 2022): the last layer refitted by logistic regression on head
  inputs of a group-balanced subset (each class × cue present/absent group equally large).
- ``LEACE`` (Belrose et al. 2023, ``concept-erasure``): the eraser of the cue label, fitted
  on the same subset, folded into the head (:func:`leace_head`).

The validation rule, for SALVE's strengths and DFR's C alike: the highest cue-conflicting
accuracy among the candidates whose clean accuracy is within 3 points of the unedited
model's overall and within 5 points on every single class (for DFR the first such in the
order given, the strongest regularisation).

Held-out variants are only reported: never choose a default by them.

Example:
    $ PYTHONPATH=.:/work/bench-site python -m benchmarks.shortcuts --out /tmp/cues-out --json shortcuts.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from sklearn.linear_model import LogisticRegression
from torch import Tensor, nn

from benchmarks.cues import chosen_canvases, cue_scores, variant_run
from benchmarks.results import markdown_table
from captum_salve.activations import ActivationSet, collect_activations
from captum_salve.analysis import choose_cue_edit, control_directions, cue_reliance
from captum_salve.analysis.cues import CLASS_LIMIT, CLEAN_TOLERANCE, within_clean_limits
from captum_salve.data import CUE_VARIANTS, CanvasConfig, CueMode, DigitsCanvas
from captum_salve.edit import FeatureDirections, HeadEdit
from captum_salve.edit.head_edit import head_of, head_tensors64
from captum_salve.pipeline.control import ControlResult, GoalCount, control
from captum_salve.sae.model import SparseAutoencoder

SELECTION_SEED, VALIDATION_SEED, BALANCED_SEED = 1000, 1001, 1002
CANDIDATES = 8
SAE_SEEDS = 3
DFR_C = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
RANDOM_SEEDS = 3

Logits = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class CueActs:
    """Head inputs of one canvas's images in several cue modes: image i is the same digit in each.

    Attributes:
        labels: (N,) digits.
        features: Cue mode → (N, M) float64 head inputs.
        cue_classes: The canvas's cue classes.
    """

    labels: Tensor
    features: dict[str, Tensor]
    cue_classes: tuple[int, ...]

    @classmethod
    def of(cls, model: nn.Module, canvas: CanvasConfig, split: str, seed: int, modes: Sequence[CueMode]) -> CueActs:
        """Draw the canvas in each mode and read the model's head inputs."""
        features, labels = {}, None
        for mode in modes:
            images = DigitsCanvas(split, config=canvas, seed=seed, cue=mode)
            labels = images.labels
            acts = collect_activations(model, images.images, batch_size=256, progress=False)
            features[mode] = acts.features.double()
        return cls(labels, features, canvas.cue_classes)

    def scores(self, logits: Logits) -> dict[str, float]:
        """:func:`~benchmarks.cues.cue_scores` of a head on these images."""
        predicted = {mode: logits(a).argmax(1) for mode, a in self.features.items()}
        return cue_scores(predicted, self.labels, self.cue_classes)

    def clean_per_class(self, logits: Logits) -> Tensor:
        """(K,) accuracy of each class without the cue."""
        right = (logits(self.features["none"]).argmax(1) == self.labels).double()
        k = int(self.labels.max()) + 1
        return torch.zeros(k, dtype=torch.float64).index_add_(0, self.labels, right) / torch.bincount(
            self.labels, minlength=k
        )


def affine_head(weight: Tensor, bias: Tensor) -> Logits:
    """The head ``a ↦ W a + b`` in float64."""
    weight, bias = weight.double(), bias.double()
    return lambda a: torch.addmm(bias, a, weight.T)


def choose(
    candidates: Sequence[Logits],
    validation: CueActs,
    reference: Logits,
    tolerance: float,
    class_limit: float | None = None,
) -> int:
    """The validation rule: which candidate head to keep.

    The first candidate of highest cue-conflicting accuracy among those whose clean
    accuracy is within ``tolerance`` of ``reference``'s and, with ``class_limit``, whose
    clean accuracy on every single class is within ``class_limit`` of ``reference``'s
    (none within: the first).

    Example:
        >>> i = choose([edited(alpha) for alpha in alphas], validation, unedited, 0.03, 0.05)
    """
    before = (validation.scores(reference)["no-cue accuracy"], validation.clean_per_class(reference))
    limit = 1.0 if class_limit is None else class_limit  # no class can lose more than all of it
    best, best_score = 0, -1.0
    for i, logits in enumerate(candidates):
        scores = validation.scores(logits)
        after = (scores["no-cue accuracy"], validation.clean_per_class(logits))
        if within_clean_limits(after, before, tolerance, limit) and scores["cue-conflicting accuracy"] > best_score:
            best, best_score = i, scores["cue-conflicting accuracy"]
    return best


def balanced_groups(labels: Tensor, cued: Tensor, generator: torch.Generator) -> Tensor:
    """Indices of a group-balanced subset: every (class, cue present/absent) group cut to the smallest one's size.

    Example:
        >>> labels, cued = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([1, 1, 0, 1, 0, 0]).bool()
        >>> len(balanced_groups(labels, cued, torch.Generator().manual_seed(0)))    # one image of each of 4 groups
        4
    """
    group = labels * 2 + cued.long()
    present = group.unique()
    size = min(int((group == g).sum()) for g in present)
    picked = []
    for g in present:
        members = (group == g).nonzero()[:, 0]
        picked.append(members[torch.randperm(len(members), generator=generator)[:size]])
    return torch.cat(picked).sort().values


def balanced_set(model: nn.Module, canvas: CanvasConfig, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(features, labels, cued) of a cue-balanced set: each image with or without the cue at random, then balanced."""
    acts = CueActs.of(model, canvas, "train", seed, ("all", "none"))
    generator = torch.Generator().manual_seed(seed)
    cued = torch.rand(len(acts.labels), generator=generator) < 0.5
    features = torch.where(cued[:, None], acts.features["all"], acts.features["none"])
    keep = balanced_groups(acts.labels, cued, generator)
    return features[keep], acts.labels[keep], cued[keep]


def dfr_head(features: Tensor, labels: Tensor, c: float) -> tuple[Tensor, Tensor]:
    """A new last layer: logistic regression (L2, inverse strength ``c``) on standardised head inputs, folded back.

    With the inputs standardised as ``(a − μ) / σ``, the fitted ``(C, c₀)`` is the head
    ``W = C / σ``, ``b = c₀ − W μ`` on the raw head inputs.
    """
    mean, std = features.mean(0), features.std(0).clamp_min(1e-12)
    fitted = LogisticRegression(C=c, max_iter=2000).fit(((features - mean) / std).numpy(), labels.numpy())
    weight = torch.from_numpy(fitted.coef_) / std
    return weight, torch.from_numpy(fitted.intercept_) - weight @ mean


def leace_head(weight: Tensor, bias: Tensor, eraser) -> tuple[Tensor, Tensor]:
    """The head ``W a + b`` after a LEACE eraser, as one affine head.

    The eraser maps ``a ↦ a − L R (a − μ)`` (``L = proj_left``, ``R = proj_right``,
    ``μ = bias``), so ``W eraser(a) + b = (W − (W L) R) a + b + (W L) R μ``.
    """
    left, right = eraser.proj_left.double(), eraser.proj_right.double()
    pushed = weight.double() @ left
    mean = eraser.bias.double() if eraser.bias is not None else torch.zeros(weight.shape[1], dtype=torch.float64)
    return weight.double() - pushed @ right, bias.double() + pushed @ (right @ mean)


def random_directions(sae: SparseAutoencoder, features: Sequence[int], acts, seed: int) -> FeatureDirections:
    """One random unit direction per feature, its code scaled to that feature's (see ``control_directions``)."""
    controls = [
        control_directions(sae, f, acts, seed=seed * len(features) + i)["random direction"]
        for i, f in enumerate(features)
    ]
    return FeatureDirections(*(torch.cat([getattr(c, part) for c in controls], dim=axis) for part, axis in _PARTS))


_PARTS = (("decoder", 1), ("encoder", 0), ("offset", 0))


def gated_project(weight: Tensor, bias: Tensor, directions: FeatureDirections, alphas: Tensor) -> Logits:
    """The head after removing only the active part of each code, ``a − Σ α_l relu(z_l(a)) d_l``.

    Not linear in ``a``, so a run-time hook, not a weight edit.
    """
    d, e, beta = (t.double() for t in (directions.decoder, directions.encoder, directions.offset))
    head, alphas = affine_head(weight, bias), alphas.double()
    return lambda a: head(a - ((a @ e.T + beta).clamp_min(0) * alphas) @ d.T)


def measure(name: str, group: str, canvas: CanvasConfig, out: Path, model_seed: int = 0) -> tuple[list[dict], dict]:
    """The rows of one canvas's classifier of ``model_seed``, and the facts beside them (features, suppression goal)."""
    start = time.perf_counter()
    run = variant_run(name, canvas, out, model_seed)
    label = name if model_seed == 0 else f"{name} (model seed {model_seed})"
    model, sae = run.model, run.sae
    weight, bias = head_tensors64(head_of(model))
    unedited = affine_head(weight, bias)
    selection = [DigitsCanvas("train", config=canvas, seed=SELECTION_SEED, cue=c).images for c in ("all", "none")]
    reliance = cue_reliance(model, sae, *selection)
    validation = CueActs.of(model, canvas, "train", VALIDATION_SEED, ("none", "conflicting"))
    test = CueActs.of(model, canvas, "test", 0, ("config", "none", "conflicting"))
    before = test.clean_per_class(unedited)

    def row(method: str, logits: Logits, **extra) -> dict:
        drop = float((test.clean_per_class(logits) - before).min())
        return {
            "variant": label,
            "group": group,
            "method": method,
            **test.scores(logits),
            "worst class drop": drop,
            **extra,
        }

    features = reliance.top(CANDIDATES)
    clean, conflicting = (
        ActivationSet(validation.features[mode], validation.labels) for mode in ("none", "conflicting")
    )

    one_alpha, chosen = (choose_cue_edit(model, sae, features, clean, conflicting, rounds=r) for r in (0, 4))
    edit = chosen.edit
    rows = [row("unedited", unedited), row("SALVE one α", affine_head(*one_alpha.edit.weights(model)))]
    rows.append(row("SALVE", affine_head(*edit.weights(model)), features=features, alpha=edit.alpha.tolist()))
    choices = [chosen]
    for other in run.saes_of([(run.config.sae_activation, seed) for seed in range(1, SAE_SEEDS)]):
        candidates = cue_reliance(model, other, *selection).top(CANDIDATES)
        choices.append(choose_cue_edit(model, other, candidates, clean, conflicting))
    best = max(range(SAE_SEEDS), key=lambda i: (choices[i].conflicting_accuracy[1], -i))
    rows.append(row(f"SALVE, best of {SAE_SEEDS} SAEs", affine_head(*choices[best].edit.weights(model)), sae_seed=best))
    rows.append(row("SALVE gated (hook)", gated_project(weight, bias, edit.directions, edit.alpha)))
    rows.append(_random_row(row, weight, bias, sae, features, edit.alpha, run.train_acts))
    fit_x, fit_y, fit_cued = balanced_set(model, canvas, BALANCED_SEED)
    dfr = [affine_head(*dfr_head(fit_x, fit_y, c)) for c in DFR_C]
    i = choose(dfr, validation, unedited, CLEAN_TOLERANCE, CLASS_LIMIT)
    rows.append(row("DFR", dfr[i], C=DFR_C[i], fit_images=len(fit_y)))
    try:
        from concept_erasure import LeaceEraser
    except ImportError:
        print("concept-erasure is not installed (pip install concept-erasure): no LEACE row", flush=True)
    else:
        eraser = LeaceEraser.fit(fit_x, fit_cued.double()[:, None])
        rows.append(row("LEACE", affine_head(*leace_head(weight, bias, eraser))))
    facts = {
        "variant": label,
        "group": group,
        "cue features (top 8 by cue_reliance)": features,
        "SALVE's strengths": edit.alpha.tolist(),
        "SALVE one α's strengths": one_alpha.edit.alpha.tolist(),
        f"validation cue-conflicting accuracy of SAE seeds 0-{SAE_SEEDS - 1}": [
            c.conflicting_accuracy[1] for c in choices
        ],
        "inactive": inactive_effect(test, unedited, edit, weight, bias),
        "suppression goal": _goal_count(run),
    }
    print(f"{label}: {time.perf_counter() - start:.0f} s", flush=True)
    return rows, facts


def _random_row(row, weight, bias, sae, features, alpha, acts) -> dict:
    scores = []
    for seed in range(RANDOM_SEEDS):
        edit = HeadEdit.of(random_directions(sae, features, acts, seed), None, alpha, rule="project")
        scores.append(
            row(
                "random directions",
                affine_head(*edit.rule.weights(weight, bias, edit.directions, edit.alpha, edit.sign)),
            )
        )
    mean = {key: sum(s[key] for s in scores) / len(scores) for key in scores[0] if isinstance(scores[0][key], float)}
    return {**scores[0], **mean, "seeds": RANDOM_SEEDS}


def inactive_effect(test: CueActs, unedited: Logits, edit: HeadEdit, weight: Tensor, bias: Tensor) -> dict:
    """Where the "project" edit pushes: test images on which an edited feature's code affine part is negative.

    There ``−α z_l d_l`` adds ``α |z_l| d_l``: evidence the code never carried. Reported on
    the no-cue and cue-conflicting test images together, over the features of non-zero
    strength: the share of images with at least one such feature, and accuracy on those
    images unedited, under the weight edit and under the gated hook.
    """
    a = torch.cat([test.features["none"], test.features["conflicting"]])
    labels = test.labels.repeat(2)
    edited = edit.alpha > 0
    codes = (a @ edit.directions.encoder.double().T + edit.directions.offset.double())[:, edited]
    pushed = (codes < 0).any(dim=1)
    heads = {
        "unedited": unedited,
        "project": affine_head(*edit.rule.weights(weight, bias, edit.directions, edit.alpha, edit.sign)),
        "gated": gated_project(weight, bias, edit.directions, edit.alpha),
    }
    return {
        "share of images": float(pushed.double().mean()),
        "share of (image, feature)": float((codes < 0).double().mean()),
        **{
            f"accuracy {name}": float((h(a[pushed]).argmax(1) == labels[pushed]).double().mean())
            for name, h in heads.items()
        },
    }


def _goal_count(run) -> dict:
    result = run.stage("control", ControlResult, control)
    return GoalCount.of(result, run.config.goal).to_json()


def table(rows: list[dict]) -> str:
    """The rows as one Markdown table."""
    header = ["variant", "group", "method", "cue-conflicting acc", "flip rate", "clean acc"]
    header += ["worst class clean drop", "test acc"]
    cells = [
        [r["variant"], r["group"], r["method"], f"{r['cue-conflicting accuracy']:.1%}", f"{r['flip rate']:.1%}"]
        + [f"{r['no-cue accuracy']:.1%}", f"{r['worst class drop']:+.1%}", f"{r['test accuracy']:.1%}"]
        for r in rows
    ]
    return markdown_table(header, "lllrrrrr", cells)


def aim(rows: list[dict]) -> list[dict]:
    """Per canvas and SALVE row (one SAE, best of several), whether the issue's aim is met.

    The aim: SALVE's cue-conflicting accuracy at least DFR's, its clean accuracy within
    3 points of DFR's, and better than LEACE's on both.
    """
    verdicts = []
    for name in dict.fromkeys(r["variant"] for r in rows):
        by = {r["method"]: r for r in rows if r["variant"] == name}
        dfr, leace = by["DFR"], by.get("LEACE")
        for method in ("SALVE", f"SALVE, best of {SAE_SEEDS} SAEs"):
            salve = by[method]
            verdict = {
                "variant": name,
                "method": method,
                "conflicting >= DFR": salve["cue-conflicting accuracy"] >= dfr["cue-conflicting accuracy"],
                "clean within 3 points of DFR": salve["no-cue accuracy"] >= dfr["no-cue accuracy"] - CLEAN_TOLERANCE,
            }
            if leace is not None:
                verdict["better than LEACE on both"] = (
                    salve["cue-conflicting accuracy"] > leace["cue-conflicting accuracy"]
                    and salve["no-cue accuracy"] > leace["no-cue accuracy"]
                )
            verdicts.append(verdict)
    return verdicts


def main(argv: list[str] | None = None) -> dict:
    """Measure the demo canvas and the chosen variants; print the table, the facts and the aim."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shortcuts", description=__doc__.splitlines()[0])
    names = [name for group in CUE_VARIANTS.values() for name in group]
    parser.add_argument("--variant", action="append", choices=names, help="repeatable; default: every variant")
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs (shared with benchmarks.cues)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--model-seed", type=int, default=0, help="classifiers of another seed (held out)")
    args = parser.parse_args(argv)
    rows, facts = [], []
    for name, group, canvas in chosen_canvases(args.variant):
        canvas_rows, canvas_facts = measure(name, group, canvas, args.out, args.model_seed)
        rows += canvas_rows
        facts.append(canvas_facts)
    result = {"rows": rows, "facts": facts, "aim": aim(rows)}
    print(table(rows))
    print(json.dumps({"facts": facts, "aim": result["aim"]}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

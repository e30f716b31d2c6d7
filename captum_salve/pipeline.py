"""The whole job on one model: discover → validate → control, with outputs that a rerun reuses.

Every stage writes its numbers to ``<out>/stages/<stage>.json`` and its figures as
PNG next to them; a stage whose JSON is already there is not run again, and the
activations and SAEs are reloaded from their files. :func:`run_pipeline` returns
the merged summary that :mod:`captum_salve.report` renders.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from captum_salve import plots
from captum_salve.activations import ActivationSet, collect_activations
from captum_salve.analysis import (
    alpha_50,
    alpha_sweep,
    class_profile,
    control_directions,
    cross_class_features,
    crossing_50,
    seed_study,
    select_edit,
    select_feature,
    top_activating,
)
from captum_salve.attr import GradFAM, TokenGradCam, deletion_curve, deletion_score, maximize_feature, pointing_game
from captum_salve.edit import EditRuleName, alpha_crit
from captum_salve.files import atomic_path, ensure_directory
from captum_salve.models import default_cam_layer, find_head, model_device, module_name
from captum_salve.sae import (
    VARIANTS,
    ActivationName,
    CodeActivation,
    SparseAutoencoder,
    code_activation,
    sae_metrics,
    train_sae,
)

__all__ = ["PipelineConfig", "PipelineInputs", "run_pipeline"]


@dataclass
class PipelineConfig:
    """Settings of one pipeline run (defaults: what reaches the editing goal on the digits canvas).

    Attributes:
        sae_latents: SAE width d.
        sae_activation: ``"relu"``, ``"linear"`` or ``"topk"`` for the SAE the analysis uses
            (a "linear" SAE, the paper's, is always trained too, for comparison).
        sae_epochs: SAE training epochs.
        topk: k for a TopK SAE.
        rule: Edit rule of the control stage (the paper's "salve" is always measured too).
        seeds: SAE initialisations in the robustness study (the paper uses 10).
        sweep_alphas: Strengths of the suppression sweeps.
        cam_layers: Grad-FAM layers (dotted names); empty: the model family's default.
        faithfulness_images: Test images used for the pointing game and deletion curves.
        maximization_steps: Steps of activation maximisation.
        batch_size: Images per forward pass.
    """

    sae_latents: int = 256
    sae_activation: ActivationName = "relu"
    sae_epochs: int = 40
    topk: int | None = None
    rule: EditRuleName = "project"
    seeds: int = 10
    sweep_alphas: tuple[float, ...] = (0, 0.25, 0.5, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 100)
    cam_layers: tuple[str, ...] = ()
    faithfulness_images: int = 200
    maximization_steps: int = 512
    batch_size: int = 64


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
        masks: Optional (N_test, H, W) ground-truth object masks (pointing game).
        description: Facts about the model and data shown in the report.
    """

    name: str
    model: nn.Module
    train: Dataset
    test: Dataset
    class_names: list[str]
    to_display: Callable[[Tensor], Tensor]
    masks: Tensor | None = None
    description: dict = field(default_factory=dict)


class _Run:
    """One pipeline run's folder, cached stages and shared state."""

    def __init__(self, inputs: PipelineInputs, out: Path, config: PipelineConfig) -> None:
        self.inputs, self.out, self.config = inputs, ensure_directory(out), config
        self.model = inputs.model.eval()
        self.device = model_device(self.model)
        self._check_settings()

    def _check_settings(self) -> None:
        """Refuse to mix cached stages computed with other settings into this run."""
        settings = _plain(asdict(self.config))
        path = self.out / "config.json"
        if path.is_file():
            before = json.loads(path.read_text())
            changed = [
                f"{key} {before.get(key)} → {value}" for key, value in settings.items() if before.get(key) != value
            ]
            if changed:
                raise ValueError(
                    f"{str(self.out)!r} holds a run made with other settings ({'; '.join(changed)}); "
                    "use another output folder, or delete this one to start over"
                )
            return
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(settings, indent=2))

    def stage(self, name: str, compute: Callable[[], dict]) -> dict:
        path = self.out / "stages" / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        result = _plain(compute())
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(result, indent=2))
        return result

    def figure(self, fig: Figure, name: str) -> str:
        relative = f"figures/{name}.png"
        with atomic_path(self.out / relative) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        return relative

    def activations(self, split: str) -> ActivationSet:
        path = self.out / "activations" / f"{split}.safetensors"
        if path.is_file():
            return ActivationSet.load(path)
        data = self.inputs.train if split == "train" else self.inputs.test
        acts = collect_activations(self.model, data, batch_size=self.config.batch_size, progress=False)
        acts.save(path)
        return acts

    def variant(self, activation: str) -> CodeActivation:
        """The SAE variant of that name with its settings for this run's width (``topk`` overrides k)."""
        settings = VARIANTS[activation].default_settings(self.config.sae_latents)
        if "k" in settings and self.config.topk is not None:
            settings["k"] = self.config.topk
        return code_activation(activation, **settings)

    def train_sae(self, activation: str, seed: int) -> tuple[SparseAutoencoder, list[dict]]:
        """An SAE of this run's settings trained on the training activations from one seed (not saved)."""
        return train_sae(
            self.activations("train"),
            self.config.sae_latents,
            activation=self.variant(activation),
            epochs=self.config.sae_epochs,
            seed=seed,
            device=self.device,
            progress=False,
        )

    def sae(self, activation: str) -> SparseAutoencoder:
        directory = self.out / f"sae-{activation}"
        if (directory / "cfg.json").is_file():
            return SparseAutoencoder.load(directory, device=self.device)
        sae, history = self.train_sae(activation, seed=0)
        sae.metadata.update(run=self.inputs.name, final_epoch=history[-1])
        sae.save(directory)
        return sae

    def images(self, indices: Sequence[int]) -> Tensor:
        return torch.stack([self.inputs.test[int(i)][0] for i in indices])


def run_pipeline(
    inputs: PipelineInputs, out: str | Path, config: PipelineConfig | None = None, *, progress: bool = True
) -> dict:
    """Discover, validate and control on one model; write figures and stage results under ``out``.

    Returns:
        The summary: every number the report shows, by stage.

    Example:
        >>> summary = run_pipeline(inputs, "salve-report/resnet18")
        >>> summary["control"]["goal_met"]
    """
    run = _Run(inputs, Path(out), config or PipelineConfig())
    stages = [
        ("discover", _discover),
        ("validate", _validate),
        ("faithfulness", _faithfulness),
        ("control", _control),
        ("alpha_crit", _alpha_crit_stage),
        ("cross_class", _cross_class),
        ("seeds", _seeds),
    ]
    summary: dict = {"name": inputs.name, "description": inputs.description, "config": asdict(run.config)}
    bar = tqdm(stages, desc=f"{inputs.name}", disable=not progress, unit="stage")
    for name, compute in bar:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        summary[name] = run.stage(name, partial(compute, run))
        summary.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 2)
    return summary


def _discover(run: _Run) -> dict:
    train, test = run.activations("train"), run.activations("test")
    names = run.inputs.class_names
    result: dict = {"train_images": len(train), "test_images": len(test), "head_input_width": train.dim}
    profiles = {}
    for activation in dict.fromkeys([run.config.sae_activation, "linear"]):
        sae = run.sae(activation)
        profile = profiles[activation] = class_profile(sae, train, class_names=names)
        metrics = sae_metrics(sae, test, head=run.model)
        metrics["specificity_by_magnitude"] = float(profile.specificity(by="magnitude").mean())
        metrics["specificity_by_contrast"] = float(profile.specificity(by="contrast").mean())
        result.setdefault("sae", {})[activation] = metrics
        result.setdefault("figures", {})[f"heatmap_{activation}"] = run.figure(
            plots.class_heatmap(profile, title=f"μ of the {activation} SAE (Fig. 1a)"), f"heatmap_{activation}"
        )
    profile = profiles[run.config.sae_activation]
    result["accuracy"] = result["sae"][run.config.sae_activation]["accuracy"]
    result["classes"] = [
        {
            "class": names[k],
            "dominant_by_magnitude": profile.dominant(k, 5).tolist(),
            "dominant_by_contrast": profile.dominant(k, 5, by="contrast").tolist(),
            "selectivity_of_top": float(profile.selectivity(int(profile.dominant(k, 1, by="contrast")[0]))[k]),
        }
        for k in range(len(names))
    ]
    result["cross_class"] = [
        {"feature": c.feature, "classes": [names[i] for i in c.classes], "score": c.score}
        for c in (cross_class_features(profile, top=3) if len(names) >= _MIN_CROSS_CLASSES else [])
    ]
    return result


def _validate(run: _Run) -> dict:
    train, test = run.activations("train"), run.activations("test")
    sae = run.sae(run.config.sae_activation)
    profile = class_profile(sae, train, class_names=run.inputs.class_names)
    names = run.inputs.class_names
    features = [select_feature(profile, k)[0] for k in range(len(names))]
    codes = sae.encode_all(test)
    figures: dict = {"galleries": [], "overlays": []}
    fam = GradFAM(run.model, _cam_layers(run)[0], sae)
    for k, feature in enumerate(features):
        index, values = top_activating(sae, test, feature, k=min(8, len(test)))
        shown = run.inputs.to_display(run.images(index))
        labels = [names[int(test.labels[i])] for i in index]
        fig = plots.gallery(
            shown,
            values,
            labels=labels,
            title=f"Top-activating test images of feature {feature} (class {names[k]}; Fig. 3a)",
        )
        figures["galleries"].append(run.figure(fig, f"gallery_class{k}"))
        mine = (test.labels == k).nonzero()
        if len(mine) == 0:  # no test image of this class: no overlay
            figures["overlays"].append(None)
            continue
        first = int(mine[0])
        image = run.images([first]).to(run.device)
        top4 = codes[first].topk(4).indices.tolist()
        maps = fam.attribute_features(image, top4)[0]
        fig = plots.grad_fam_overlays(
            run.inputs.to_display(image)[0].cpu(), maps.detach().cpu(), top4, codes[first, top4]
        )
        figures["overlays"].append(run.figure(fig, f"grad_fam_class{k}"))
    q99 = codes.quantile(0.99, dim=0)[features]
    maximization = {"test_q99": q99.tolist()}
    for parameterization in ("fourier", "pixel"):
        result = maximize_feature(
            run.model, sae, features, steps=run.config.maximization_steps, parameterization=parameterization
        )
        maximization[parameterization] = {
            "activation": result.activations.tolist(),
            "above_q99": int((result.activations > q99).sum()),
        }
        figures[f"maximization_{parameterization}"] = run.figure(
            plots.maximization_evolution(
                result, names=[f"class {n}: f{f}" for n, f in zip(names, features, strict=True)]
            ),
            f"maximization_{parameterization}",
        )
    return {"features": features, "maximization": maximization, "figures": figures}


def _faithfulness(run: _Run) -> dict:
    test = run.activations("test")
    sae = run.sae(run.config.sae_activation)
    features = run.stage("validate", lambda: _validate(run))["features"]
    n = min(run.config.faithfulness_images, len(test))
    index = torch.arange(n)
    images = run.images(index).to(run.device)
    labels = test.labels[:n]
    own = torch.tensor(features)[labels]
    other = torch.tensor(features)[(labels + 1) % len(features)]
    generator = torch.Generator().manual_seed(0)
    result: dict = {"images": n, "layers": {}}
    for layer in _cam_layers(run):
        fam = GradFAM(run.model, layer, sae)
        maps = _batched(fam, images, own, run.config.batch_size)
        other_maps = _batched(fam, images, other, run.config.batch_size)
        class_cam = TokenGradCam(run.model, fam.layer, fam.reshape_transform)
        class_maps = _batched(class_cam, images, labels, run.config.batch_size)
        random_maps = torch.rand(maps.shape, generator=generator)
        entry: dict = {"map_size": list(maps.shape[-2:])}
        candidates = {
            "grad_fam": maps,
            "class_grad_cam": class_maps,
            "random": random_maps,
            "other_feature": other_maps,
        }
        if run.inputs.masks is not None:
            masks = run.inputs.masks[:n]
            entry["pointing_game"] = {
                name: float(pointing_game(m.cpu(), masks).float().mean()) for name, m in candidates.items()
            }
        scores = {}
        for name, m in candidates.items():
            steps = min(16, m.shape[-2] * m.shape[-1])
            curves = [
                deletion_curve(run.model, sae, int(own[i]), images[i : i + 1], m[i : i + 1].to(run.device), steps=steps)
                for i in range(n)
            ]
            scores[name] = float(deletion_score(torch.cat(curves)).nanmean())
        entry["deletion_auc"] = scores
        result["layers"][layer] = entry
    return result


def _cam_layers(run: _Run) -> list[str]:
    if run.config.cam_layers:
        return list(run.config.cam_layers)
    return [module_name(run.model, default_cam_layer(run.model))]


def _batched(attribution: TokenGradCam, images: Tensor, targets: Tensor, batch_size: int) -> Tensor:
    """Maps of ``images`` for one target each, a batch at a time, on the CPU."""
    return torch.cat(
        [
            attribution.attribute(images[s : s + batch_size], target=targets[s : s + batch_size].tolist())
            .detach()
            .cpu()
            for s in range(0, len(images), batch_size)
        ]
    )


def _context(run: _Run) -> tuple[ActivationSet, ActivationSet, SparseAutoencoder, list[int]]:
    features = run.stage("validate", lambda: _validate(run))["features"]
    return run.activations("train"), run.activations("test"), run.sae(run.config.sae_activation), features


def _at(sweep_alphas: Sequence[float], *extra: float) -> list[float]:
    return sorted(set(float(a) for a in sweep_alphas) | {float(e) for e in extra if e == e and e != float("inf")})


def _control(run: _Run) -> dict:
    train, test, sae, features = _context(run)
    names = run.inputs.class_names
    profile = class_profile(sae, train, class_names=names)
    rule = run.config.rule
    rows, figures = [], {"accuracy": [], "predictions": []}
    for k, feature in enumerate(features):
        row: dict = {"class": names[k], "feature": feature}
        for label, edit_rule in (("chosen", rule), ("paper_rule", "salve")):
            choice = select_edit(run.model, sae, profile, k, train, rule=edit_rule)
            sweep = alpha_sweep(run.model, sae, list(choice.features), test, [0.0, choice.alpha], rule=edit_rule)
            row[label] = {
                "rule": edit_rule,
                "features": list(choice.features),
                "alpha": choice.alpha,
                "reached_on_train": choice.reached,
                "test_accuracy": float(sweep.per_class_accuracy[1, k]),
                "baseline_accuracy": float(sweep.baseline_accuracy[k]),
                "off_target_change": float(sweep.off_target_change(k)[1]),
            }
        single = alpha_sweep(run.model, sae, feature, test, run.config.sweep_alphas, rule=rule, class_names=names)
        a50 = alpha_50(single, k)
        control_edits = control_directions(sae, feature, train)
        controls = {
            name: alpha_sweep(run.model, directions, None, test, run.config.sweep_alphas, rule=rule, class_names=names)
            for name, directions in control_edits.items()
        }
        at_a50 = {}
        for name, edit in {"sae_feature": (sae, feature), **{n: (d, None) for n, d in control_edits.items()}}.items():
            strength = a50 if a50 != float("inf") else float(run.config.sweep_alphas[-1])
            sweep = alpha_sweep(run.model, edit[0], edit[1], test, [0.0, strength], rule=rule)
            at_a50[name] = {
                "target_accuracy": float(sweep.per_class_accuracy[1, k]),
                "target_drop": float(sweep.baseline_accuracy[k] - sweep.per_class_accuracy[1, k]),
                "off_target_change": float(sweep.off_target_change(k)[1]),
            }
        paper = alpha_sweep(run.model, sae, feature, test, run.config.sweep_alphas, rule="salve")
        row["dominant_feature"] = {
            "rule": rule,
            "alpha_50": a50,
            "at_alpha_50": at_a50,
            "paper_rule_alpha_50": alpha_50(paper, k),
            "paper_rule_accuracy_at_max_alpha": float(paper.per_class_accuracy[-1, k]),
        }
        figures["accuracy"].append(
            run.figure(plots.accuracy_vs_alpha(single, k, controls=controls), f"accuracy_vs_alpha_class{k}")
        )
        figures["predictions"].append(run.figure(plots.prediction_distribution(single, k), f"predictions_class{k}"))
        rows.append(row)
    goal = {
        label: sum(r[label]["test_accuracy"] < 0.1 and abs(r[label]["off_target_change"]) <= 0.02 for r in rows)
        for label in ("chosen", "paper_rule")
    }
    return {"rule": rule, "classes": rows, "goal_met": goal, "figures": figures}


def _alpha_crit_stage(run: _Run) -> dict:
    _, test, sae, features = _context(run)
    names = run.inputs.class_names
    _, head = find_head(run.model)
    with torch.no_grad():
        predicted = head(test.features.to(head.weight.device)).argmax(1).cpu()
    analytical, numerical, a50s, rows = {}, {}, {}, []
    for k, feature in enumerate(features):
        mine = test.subset((test.labels == k) & (predicted == k))
        if len(mine) == 0:
            continue
        linear = alpha_crit(run.model, sae, feature, mine, k, method="linear")
        start = time.perf_counter()
        exact = alpha_crit(run.model, sae, feature, mine, k, method="exact")
        exact_seconds = time.perf_counter() - start
        start = time.perf_counter()
        bisect = alpha_crit(run.model, sae, feature, mine, k, method="bisect")
        bisect_seconds = time.perf_counter() - start
        flip = alpha_crit(run.model, sae, feature, mine, k, criterion="flip")
        grid = _at(torch.logspace(-1, 3, 81).tolist(), *flip[torch.isfinite(flip)].tolist())
        sweep = alpha_sweep(run.model, sae, feature, mine, grid)
        finite = torch.isfinite(exact)
        agree = torch.equal(finite, torch.isfinite(bisect)) and bool(
            torch.allclose(exact[finite], bisect[finite], rtol=1e-6, atol=1e-9)
        )
        analytical[names[k]], numerical[names[k]] = linear, bisect
        a50s[names[k]] = alpha_50(sweep, k)
        rows.append(
            {
                "class": names[k],
                "feature": feature,
                "samples": len(mine),
                "median_linear": float(linear.median()),
                "median_exact": float(exact.median()),
                "never_zero": int((~finite).sum()),
                "linear_above_exact": int((linear > exact * (1 + 1e-9)).sum()),
                "exact_equals_bisect": agree,
                "max_relative_difference": float(
                    ((exact - bisect).abs() / exact.clamp_min(1e-12))[finite & (exact > 0)].max()
                )
                if (finite & (exact > 0)).any()
                else 0.0,
                "median_flip": float(flip.median()),
                "alpha_50": a50s[names[k]],
                "exact_seconds": exact_seconds,
                "bisect_seconds": bisect_seconds,
            }
        )
    figure = run.figure(plots.alpha_crit_boxplots(analytical, numerical, a50s), "alpha_crit")
    return {"rule": "salve", "criterion": "zero_logit", "classes": rows, "figure": figure}


# A feature shared by two classes is only "cross-class" when some class does not share it.
_MIN_CROSS_CLASSES = 3


def _cross_class(run: _Run) -> dict:
    train, test, sae, _ = _context(run)
    names = run.inputs.class_names
    if len(names) < _MIN_CROSS_CLASSES:
        return {
            "skipped": f"cross-class features need at least {_MIN_CROSS_CLASSES} classes; this data has {len(names)}"
        }
    profile = class_profile(sae, train, class_names=names)
    found = cross_class_features(profile, top=1)[0]
    rule = run.config.rule
    result: dict = {
        "feature": found.feature,
        "classes": [names[c] for c in found.classes],
        "score": found.score,
        "figures": {},
    }
    for mode in ("suppress", "enhance"):
        sweep = alpha_sweep(
            run.model, sae, found.feature, test, run.config.sweep_alphas, mode=mode, rule=rule, class_names=names
        )
        changes = sweep.per_class_accuracy - sweep.baseline_accuracy
        # the first strength at which some class moves by 10 points (else the strongest)
        visible = (changes.abs().amax(dim=1) >= 0.1).nonzero()
        i = int(visible[0]) if len(visible) else len(sweep.alphas) - 1
        change = changes[i]
        shares = sweep.confusion[i].sum(0).double() / len(test)
        base_shares = sweep.baseline.sum(0).double() / len(test)
        result[mode] = {
            "alpha": float(sweep.alphas[i]),
            "accuracy_change": {names[c]: float(change[c]) for c in range(len(names))},
            "most_changed": [names[int(c)] for c in change.abs().argsort(descending=True)[:3]],
            "prediction_share_change": {names[c]: float(shares[c] - base_shares[c]) for c in range(len(names))},
        }
        result["figures"][mode] = run.figure(plots.accuracy_change_bars(sweep, i), f"cross_class_{mode}")
    if run.inputs.description.get("cue_test") is not None:
        cue = torch.as_tensor(run.inputs.description["cue_test"])
        codes = sae.encode_all(test)
        within = torch.isin(test.labels, torch.tensor(found.classes))
        on, off = codes[within & cue, found.feature], codes[within & ~cue, found.feature]
        result["planted_cue"] = {
            "classes": run.inputs.description.get("cue_classes"),
            "mean_code_with_cue": float(on.mean()),
            "mean_code_without_cue": float(off.mean()) if len(off) else None,
        }
    return result


def _seeds(run: _Run) -> dict:
    train, test, _, _ = _context(run)
    names = run.inputs.class_names
    saes = [run.train_sae(run.config.sae_activation, seed)[0] for seed in range(run.config.seeds)]
    study = seed_study(run.model, saes, train, test, run.config.sweep_alphas, rule=run.config.rule)
    a50 = torch.tensor(
        [
            [crossing_50(study.alphas, study.accuracy[s, k, :, k]) for k in range(len(names))]
            for s in range(run.config.seeds)
        ]
    )
    crossed = [a50[:, k][torch.isfinite(a50[:, k])] for k in range(len(names))]  # seeds whose sweep crossed 50%
    return {
        "seeds": run.config.seeds,
        "alpha_50_seeds_crossed": [len(c) for c in crossed],
        "alpha_50_mean": [float(c.mean()) if len(c) else None for c in crossed],
        "alpha_50_std": [float(c.std()) if len(c) > 1 else None for c in crossed],
        "match_similarity_mean": float(study.match_similarity[1:].mean()),
        "matched_is_own_choice": float(study.own_choice[1:].float().mean()),
        "explained_variance": [m["explained_variance"] for m in study.metrics],
        "figure": run.figure(plots.seed_bands(study, names), "seed_bands"),
    }


def _plain(value):
    """JSON-ready values: tensors to lists, infinities to the string "inf", NaN to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Tensor):
        return _plain(value.tolist())
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    return value

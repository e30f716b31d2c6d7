"""The settings of a pipeline run."""

from __future__ import annotations

from dataclasses import dataclass

from captum_salve.analysis.goal import ControlGoal
from captum_salve.checks import check_int, check_strengths
from captum_salve.edit import DEFAULT_RULE, RULES, EditRuleName
from captum_salve.pipeline.record import Record
from captum_salve.sae import VARIANTS, ActivationName

__all__ = ["MIN_LATENTS", "PipelineConfig"]

# The control stage's select_edit weighs each class's top 6 features, and Grad-FAM overlays show the top 4.
MIN_LATENTS = 8


@dataclass(frozen=True)
class PipelineConfig(Record):
    """Settings of one pipeline run (defaults: what reaches the control goal on the digits canvas).

    A run records its settings in ``<out>/config.json`` and refuses to resume in that
    folder with other ones. Settings that cannot work are refused when the config is
    made, before any stage runs.

    Attributes:
        sae_latents: SAE width d.
        sae_activation: The SAE variant the analysis uses (a "linear" SAE, the
            paper's, is always trained too, for comparison).
        sae_epochs: SAE training epochs.
        topk: k for a variant of the TopK family ("topk", "batchtopk", "matryoshka", "archetypal"; default:
            the variant's own for this width). Their other settings are their defaults.
        rule: Edit rule of the control stage (the paper's "salve" is always measured too).
        goal: What suppressing a class must achieve; the control stage, :func:`select_edit`
            and the report all read it.
        seeds: SAE initialisations in the robustness study (the paper uses 10).
        sweep_alphas: Strengths of the suppression sweeps.
        faithfulness_images: Test images used for the pointing game and deletion curves.
        maximization_steps: Steps of activation maximisation.
        batch_size: Images per forward pass.

    Example:
        >>> config = PipelineConfig(seeds=3, sae_epochs=10)
        >>> PipelineConfig.from_json(config.to_json()) == config
        True
    """

    sae_latents: int = 256
    sae_activation: ActivationName = "relu"
    sae_epochs: int = 40
    topk: int | None = None
    rule: EditRuleName = DEFAULT_RULE
    goal: ControlGoal = ControlGoal()
    seeds: int = 10
    sweep_alphas: tuple[float, ...] = (0, 0.25, 0.5, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 100)
    faithfulness_images: int = 200
    maximization_steps: int = 512
    batch_size: int = 64

    def __post_init__(self) -> None:
        # Checked here, before a run writes anything or spends minutes on the first stages.
        for name, least, why in (
            ("sae_latents", MIN_LATENTS, "the control stage weighs each class's top 6 features"),
            ("sae_epochs", 1, ""),
            ("seeds", 2, "the seed study compares SAEs from two seeds or more"),
            ("faithfulness_images", 1, ""),
            ("maximization_steps", 1, ""),
            ("batch_size", 1, ""),
        ):
            object.__setattr__(self, name, check_int(getattr(self, name), f"PipelineConfig {name}", least, why=why))
        if self.sae_activation not in VARIANTS:
            raise ValueError(
                f"PipelineConfig sae_activation must be one of {tuple(VARIANTS)}, got {self.sae_activation!r}"
            )
        if self.rule not in RULES:
            raise ValueError(f"PipelineConfig rule must be one of {tuple(RULES)}, got {self.rule!r}")
        if self.topk is not None:
            topk = check_int(self.topk, "PipelineConfig topk", 1, self.sae_latents, why="None, or at most sae_latents")
            object.__setattr__(self, "topk", topk)
            if "k" not in VARIANTS[self.sae_activation].default_settings(self.sae_latents):
                raise ValueError(
                    f"PipelineConfig topk is only read by the TopK family, not sae_activation "
                    f"{self.sae_activation!r}; leave it None"
                )
        if not isinstance(self.goal, ControlGoal):
            raise TypeError(f"PipelineConfig goal must be a ControlGoal, got {type(self.goal).__name__}")
        strengths = check_strengths(self.sweep_alphas, "PipelineConfig sweep_alphas").tolist()
        if strengths != [float(a) for a in self.sweep_alphas] or len(set(strengths)) != len(strengths):
            raise ValueError(
                f"PipelineConfig sweep_alphas must be increasing, finite strengths >= 0, got {self.sweep_alphas!r}"
            )
        object.__setattr__(self, "sweep_alphas", tuple(strengths))

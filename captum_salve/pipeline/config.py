"""The settings of a pipeline run."""

from __future__ import annotations

from dataclasses import dataclass

from captum_salve.analysis.goal import ControlGoal
from captum_salve.edit import EditRuleName
from captum_salve.pipeline.record import Record
from captum_salve.sae import ActivationName

__all__ = ["PipelineConfig"]


@dataclass(frozen=True)
class PipelineConfig(Record):
    """Settings of one pipeline run (defaults: what reaches the control goal on the digits canvas).

    A run records its settings in ``<out>/config.json`` and refuses to resume in that
    folder with other ones.

    Attributes:
        sae_latents: SAE width d.
        sae_activation: The SAE variant the analysis uses (a "linear" SAE, the
            paper's, is always trained too, for comparison).
        sae_epochs: SAE training epochs.
        topk: k for a TopK SAE (default: the variant's own for this width).
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
    rule: EditRuleName = "project"
    goal: ControlGoal = ControlGoal()
    seeds: int = 10
    sweep_alphas: tuple[float, ...] = (0, 0.25, 0.5, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 100)
    faithfulness_images: int = 200
    maximization_steps: int = 512
    batch_size: int = 64

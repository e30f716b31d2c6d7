"""The stages in order, :func:`run_pipeline`, and the summary it returns."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from captum_salve.files import PARTIAL_SUFFIX, folder_lock
from captum_salve.pipeline.alpha_crit import AlphaCritResult, alpha_crit_stage
from captum_salve.pipeline.config import PipelineConfig
from captum_salve.pipeline.control import ControlResult, GoalCount, control
from captum_salve.pipeline.cross_class import CrossClassResult, cross_class
from captum_salve.pipeline.discover import DiscoverResult, discover
from captum_salve.pipeline.faithfulness import FaithfulnessResult, faithfulness
from captum_salve.pipeline.inputs import PipelineInputs
from captum_salve.pipeline.record import Record
from captum_salve.pipeline.run import Run
from captum_salve.pipeline.seeds import SeedsResult, seeds
from captum_salve.pipeline.shortcuts import ShortcutsResult, shortcuts
from captum_salve.pipeline.validate import ValidateResult, validate
from captum_salve.sites import eval_mode

__all__ = ["STAGES", "PipelineSummary", "Stage", "run_pipeline"]


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline: its name (and file name), its result type and the function computing it.

    Example:
        >>> [stage.name for stage in STAGES]
        ['discover', 'validate', 'faithfulness', 'control', 'alpha_crit', 'cross_class', 'seeds', 'shortcuts']
    """

    name: str
    result: type[Record]
    compute: Callable[[Run], Record]


STAGES = (
    Stage("discover", DiscoverResult, discover),
    Stage("validate", ValidateResult, validate),
    Stage("faithfulness", FaithfulnessResult, faithfulness),
    Stage("control", ControlResult, control),
    Stage("alpha_crit", AlphaCritResult, alpha_crit_stage),
    Stage("cross_class", CrossClassResult, cross_class),
    Stage("seeds", SeedsResult, seeds),
    Stage("shortcuts", ShortcutsResult, shortcuts),
)


@dataclass(frozen=True)
class PipelineSummary(Record):
    """Everything one model's run found: what :func:`run_pipeline` returns and the report shows.

    Attributes:
        name: The inputs' name (the run's folder name).
        description: Facts about the model and data.
        class_names: The class names, in label order.
        config: The run's settings.
        discover, validate, faithfulness, control, alpha_crit, cross_class, seeds, shortcuts: Each stage's result.
        suppression_goal: How many classes the control stage took to ``config.goal``, and which
            classes it left out (below the goal's target before any edit).
        seconds: Seconds each stage took in this call (near 0 for a stage read from its file).

    Example:
        >>> summary = run_pipeline(digits_inputs("resnet18"), "salve-report/digits-resnet18")
        >>> summary.suppression_goal.met, summary.suppression_goal.measured, summary.suppression_goal.left_out
    """

    name: str
    description: dict[str, Any]
    class_names: list[str]
    config: PipelineConfig
    discover: DiscoverResult
    validate: ValidateResult
    faithfulness: FaithfulnessResult
    control: ControlResult
    alpha_crit: AlphaCritResult
    cross_class: CrossClassResult
    seeds: SeedsResult
    shortcuts: ShortcutsResult
    suppression_goal: GoalCount
    seconds: dict[str, float]


def run_pipeline(
    inputs: PipelineInputs, out: str | Path, config: PipelineConfig | None = None, *, progress: bool = True
) -> PipelineSummary:
    """Discover, validate and control on one model; write figures and stage results under ``out``.

    A stage whose file is already in ``out`` (from an earlier, perhaps interrupted,
    call with the same settings, model weights and data) is read instead of computed.
    The model is put in eval mode for the run and given back in the mode it came in.
    One run at a time holds ``out`` (:func:`~captum_salve.files.folder_lock`).

    Args:
        inputs: The model and data.
        out: The run's folder.
        config: The settings (default :class:`PipelineConfig`).
        progress: Show a progress bar over the stages.

    Returns:
        Every stage's result.

    Raises:
        ValueError: ``out`` holds a run with other settings, weights or data, or files
            of another version; or another run holds ``out`` now.

    Example:
        >>> summary = run_pipeline(inputs, "salve-report/resnet18")
        >>> summary.suppression_goal.met, summary.suppression_goal.measured
    """
    config = PipelineConfig() if config is None else config
    if not isinstance(inputs, PipelineInputs):
        raise TypeError(f"inputs must be PipelineInputs, got {type(inputs).__name__}")
    if not isinstance(config, PipelineConfig):
        raise TypeError(f"config must be a PipelineConfig (e.g. PipelineConfig(seeds=2)), got {type(config).__name__}")
    with folder_lock(out), eval_mode(inputs.model):
        for partial in Path(out).rglob(f"*{PARTIAL_SUFFIX}"):  # left by a killed run: no one else writes here now
            partial.unlink()
        run = Run(inputs, out, config)
        results: dict[str, Record] = {}
        seconds: dict[str, float] = {}
        bar = tqdm(STAGES, desc=inputs.name, disable=not progress, unit="stage")
        for stage in bar:
            bar.set_postfix_str(stage.name)
            start = time.perf_counter()
            results[stage.name] = run.stage(stage.name, stage.result, stage.compute)
            seconds[stage.name] = round(time.perf_counter() - start, 2)
    return PipelineSummary(
        name=inputs.name,
        description=dict(inputs.description),
        class_names=list(inputs.class_names),
        config=config,
        suppression_goal=GoalCount.of(results["control"], config.goal),
        seconds=seconds,
        **results,
    )

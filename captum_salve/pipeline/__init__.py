"""The whole job on one model: discover → validate → control, with outputs a rerun reuses.

A :class:`Run` owns the output folder and what the stages share; each stage is a
module with a function ``stage(run) -> Result`` and a typed, JSON-round-tripping
result (:class:`~captum_salve.pipeline.record.Record`). :func:`run_pipeline` runs
:data:`STAGES` in order and returns a :class:`PipelineSummary`, which
:func:`captum_salve.report.write_report` renders.
"""

from captum_salve.pipeline.alpha_crit import AlphaCritResult, ClassAlphaCrit, alpha_crit_stage
from captum_salve.pipeline.config import PipelineConfig
from captum_salve.pipeline.control import (
    AtStrength,
    ClassControl,
    ControlResult,
    DominantFeature,
    EditOutcome,
    GoalCount,
    control,
)
from captum_salve.pipeline.cross_class import CrossClassEdit, CrossClassResult, PlantedCue, cross_class
from captum_salve.pipeline.discover import ClassFeatures, CrossClassEntry, DiscoverResult, SAESummary, discover
from captum_salve.pipeline.faithfulness import FaithfulnessResult, LayerFaithfulness, faithfulness
from captum_salve.pipeline.inputs import DIGITS_CAM_LAYERS, CueProbe, PipelineInputs, digits_inputs
from captum_salve.pipeline.record import Record, RecordFormatError
from captum_salve.pipeline.run import Run
from captum_salve.pipeline.seeds import SeedsResult, seeds
from captum_salve.pipeline.shortcuts import ShortcutsResult, SuspectedFeature, shortcuts
from captum_salve.pipeline.summary import STAGES, PipelineSummary, Stage, run_pipeline
from captum_salve.pipeline.validate import ClassFigures, Maximization, ValidateResult, validate

__all__ = [
    "DIGITS_CAM_LAYERS",
    "STAGES",
    "AlphaCritResult",
    "AtStrength",
    "ClassAlphaCrit",
    "ClassControl",
    "ClassFeatures",
    "ClassFigures",
    "ControlResult",
    "CrossClassEdit",
    "CrossClassEntry",
    "CrossClassResult",
    "CueProbe",
    "DiscoverResult",
    "DominantFeature",
    "EditOutcome",
    "FaithfulnessResult",
    "GoalCount",
    "LayerFaithfulness",
    "Maximization",
    "PipelineConfig",
    "PipelineInputs",
    "PipelineSummary",
    "PlantedCue",
    "Record",
    "RecordFormatError",
    "Run",
    "SAESummary",
    "SeedsResult",
    "ShortcutsResult",
    "Stage",
    "SuspectedFeature",
    "ValidateResult",
    "alpha_crit_stage",
    "control",
    "cross_class",
    "digits_inputs",
    "discover",
    "faithfulness",
    "run_pipeline",
    "seeds",
    "shortcuts",
    "validate",
]

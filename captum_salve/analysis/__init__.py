"""From codes to findings: class profiles, α sweeps, the control goal and edit selection, controls, seeds, cues."""

from captum_salve.analysis.controls import control_directions
from captum_salve.analysis.cues import CueEdit, CueReliance, choose_cue_edit, cue_reliance
from captum_salve.analysis.goal import ControlGoal
from captum_salve.analysis.profiles import (
    ClassProfile,
    CrossClassFeature,
    RankBy,
    class_profile,
    cross_class_features,
    select_feature,
    top_activating,
)
from captum_salve.analysis.seeds import SeedStudy, match_features, seed_study
from captum_salve.analysis.sweeps import (
    DEFAULT_EDIT_ALPHAS,
    EditChoice,
    SweepResult,
    alpha_50,
    alpha_sweep,
    crossing_50,
    select_edit,
)

__all__ = [
    "DEFAULT_EDIT_ALPHAS",
    "ClassProfile",
    "ControlGoal",
    "CrossClassFeature",
    "CueEdit",
    "CueReliance",
    "EditChoice",
    "RankBy",
    "SeedStudy",
    "SweepResult",
    "alpha_50",
    "alpha_sweep",
    "choose_cue_edit",
    "class_profile",
    "control_directions",
    "cross_class_features",
    "crossing_50",
    "cue_reliance",
    "match_features",
    "seed_study",
    "select_edit",
    "select_feature",
    "top_activating",
]

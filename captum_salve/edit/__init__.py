"""Control: permanent weight edits of the head, their rules, and the critical suppression threshold."""

from captum_salve.edit.head_edit import HeadEdit, edit_model, edited, head_of
from captum_salve.edit.rules import (
    DEFAULT_RULE,
    MODES,
    RULES,
    EditMode,
    EditRule,
    EditRuleName,
    FeatureDirections,
    LogitPieces,
    ProjectOut,
    ScaleColumns,
    edit_rule,
)
from captum_salve.edit.threshold import CRITERIA, METHODS, Criterion, Method, alpha_crit

__all__ = [
    "CRITERIA",
    "DEFAULT_RULE",
    "METHODS",
    "MODES",
    "RULES",
    "Criterion",
    "EditMode",
    "EditRule",
    "EditRuleName",
    "FeatureDirections",
    "HeadEdit",
    "LogitPieces",
    "Method",
    "ProjectOut",
    "ScaleColumns",
    "alpha_crit",
    "edit_model",
    "edit_rule",
    "edited",
    "head_of",
]

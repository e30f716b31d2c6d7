"""Validate: Grad-FAM, activation maximisation and faithfulness scores."""

from captum_salve.attr.activation_max import MaximizationResult, maximize_feature
from captum_salve.attr.faithfulness import deletion_curve, deletion_score, pointing_game
from captum_salve.attr.grad_fam import GradFAM

__all__ = ["GradFAM", "MaximizationResult", "deletion_curve", "deletion_score", "maximize_feature", "pointing_game"]

"""Validate: SAE features as Captum targets, Grad-FAM, activation maximisation and faithfulness scores."""

from captum_salve.attr.activation_max import MaximizationResult, maximize_feature
from captum_salve.attr.faithfulness import deletion_curve, deletion_score, mask_mass, pointing_game
from captum_salve.attr.feature_codes import FeatureCodes
from captum_salve.attr.grad_cam import TokenGradCam, channels_last_to_first, render_maps, tokens_to_grid
from captum_salve.attr.grad_fam import GradFAM

__all__ = [
    "FeatureCodes",
    "GradFAM",
    "MaximizationResult",
    "TokenGradCam",
    "channels_last_to_first",
    "deletion_curve",
    "deletion_score",
    "mask_mass",
    "maximize_feature",
    "pointing_game",
    "render_maps",
    "tokens_to_grid",
]

"""Control: permanent weight edits of the head, and the critical suppression threshold."""

from captum_salve.edit.threshold import alpha_crit
from captum_salve.edit.weights import FeatureDirections, edit_model, edited, edited_weights

__all__ = ["FeatureDirections", "alpha_crit", "edit_model", "edited", "edited_weights"]

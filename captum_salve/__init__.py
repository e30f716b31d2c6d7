"""captum_salve: SALVE (Sparse Autoencoder-Latent Vector Editing) for Captum and timm.

Discover features with a sparse autoencoder, validate them with Grad-FAM (or any
Captum attribution, through :class:`FeatureCodes`) and activation maximisation,
and control the classifier with permanent weight edits (:class:`HeadEdit`).
"""

from captum_salve.activations import ActivationSet, collect_activations
from captum_salve.analysis import (
    ClassProfile,
    EditChoice,
    SeedStudy,
    SweepResult,
    alpha_50,
    alpha_sweep,
    class_profile,
    control_directions,
    cross_class_features,
    match_features,
    seed_study,
    select_edit,
    select_feature,
    top_activating,
)
from captum_salve.attr import FeatureCodes, GradFAM
from captum_salve.edit import EditRule, FeatureDirections, HeadEdit, alpha_crit, edit_model, edited
from captum_salve.sae import SparseAutoencoder, sae_metrics, train_sae
from captum_salve.sites import Site

__version__ = "0.1.0"

__all__ = [
    "ActivationSet",
    "ClassProfile",
    "EditChoice",
    "EditRule",
    "FeatureCodes",
    "FeatureDirections",
    "GradFAM",
    "HeadEdit",
    "SeedStudy",
    "Site",
    "SparseAutoencoder",
    "SweepResult",
    "alpha_50",
    "alpha_crit",
    "alpha_sweep",
    "class_profile",
    "collect_activations",
    "control_directions",
    "cross_class_features",
    "edit_model",
    "edited",
    "match_features",
    "sae_metrics",
    "seed_study",
    "select_edit",
    "select_feature",
    "top_activating",
    "train_sae",
]

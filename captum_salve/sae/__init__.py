"""Sparse autoencoders: the model and its variants, its training and its metrics."""

from captum_salve.sae.metrics import ReconstructionStats, sae_metrics
from captum_salve.sae.model import SparseAutoencoder
from captum_salve.sae.train import SAEConfig, train_sae, train_saes
from captum_salve.sae.variants import VARIANTS, ActivationName, CodeActivation, code_activation

__all__ = [
    "VARIANTS",
    "ActivationName",
    "CodeActivation",
    "ReconstructionStats",
    "SAEConfig",
    "SparseAutoencoder",
    "code_activation",
    "sae_metrics",
    "train_sae",
    "train_saes",
]

"""Sparse autoencoders: the model, its training and its metrics."""

from captum_salve.sae.metrics import sae_metrics
from captum_salve.sae.model import SparseAutoencoder
from captum_salve.sae.train import train_sae

__all__ = ["SparseAutoencoder", "sae_metrics", "train_sae"]

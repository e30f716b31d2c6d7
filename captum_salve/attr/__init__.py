"""Validate: Grad-FAM, activation maximisation and faithfulness scores."""

from captum_salve.attr.grad_fam import GradFAM

__all__ = ["GradFAM"]

"""captum_salve: SALVE (Sparse Autoencoder-Latent Vector Editing) for Captum and timm.

Discover features with a sparse autoencoder, validate them with Grad-FAM (or any
Captum attribution, through :class:`FeatureCodes`) and activation maximisation,
and control the classifier with permanent weight edits (:class:`HeadEdit`).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see (``X as X``: re-exported); at run time names load lazily
    from captum_salve.activations import (
        ActivationSet as ActivationSet,
        collect_activations as collect_activations,
    )
    from captum_salve.analysis import (
        ClassProfile as ClassProfile,
        CueEdit as CueEdit,
        CueReliance as CueReliance,
        EditChoice as EditChoice,
        SeedStudy as SeedStudy,
        SweepResult as SweepResult,
        alpha_50 as alpha_50,
        alpha_sweep as alpha_sweep,
        choose_cue_edit as choose_cue_edit,
        class_profile as class_profile,
        control_directions as control_directions,
        cross_class_features as cross_class_features,
        cue_reliance as cue_reliance,
        match_features as match_features,
        seed_study as seed_study,
        select_edit as select_edit,
        select_feature as select_feature,
        top_activating as top_activating,
    )
    from captum_salve.attr import (
        FeatureCodes as FeatureCodes,
        GradFAM as GradFAM,
        channels_last_to_first as channels_last_to_first,
        tokens_to_grid as tokens_to_grid,
    )
    from captum_salve.edit import (
        EditRule as EditRule,
        FeatureDirections as FeatureDirections,
        HeadEdit as HeadEdit,
        alpha_crit as alpha_crit,
        edit_model as edit_model,
        edited as edited,
    )
    from captum_salve.sae import (
        SAEConfig as SAEConfig,
        SparseAutoencoder as SparseAutoencoder,
        sae_metrics as sae_metrics,
        train_sae as train_sae,
        train_saes as train_saes,
    )
    from captum_salve.sites import (
        Site as Site,
    )
    from captum_salve.store import (
        ActivationStore as ActivationStore,
        write_activations as write_activations,
    )

__version__ = "0.1.0"

# Where each public name lives. Importing captum_salve loads none of these modules (nor
# torch): a name's module is imported the first time the name is used (PEP 562), so a
# torchrun worker that trains an SAE does not pay for Captum, plotting or reporting.
_HOMES = {
    "captum_salve.activations": ("ActivationSet", "collect_activations"),
    "captum_salve.analysis": (
        "ClassProfile",
        "CueEdit",
        "CueReliance",
        "EditChoice",
        "SeedStudy",
        "SweepResult",
        "alpha_50",
        "alpha_sweep",
        "choose_cue_edit",
        "class_profile",
        "control_directions",
        "cross_class_features",
        "cue_reliance",
        "match_features",
        "seed_study",
        "select_edit",
        "select_feature",
        "top_activating",
    ),
    "captum_salve.attr": ("FeatureCodes", "GradFAM", "channels_last_to_first", "tokens_to_grid"),
    "captum_salve.edit": ("EditRule", "FeatureDirections", "HeadEdit", "alpha_crit", "edit_model", "edited"),
    "captum_salve.sae": ("SAEConfig", "SparseAutoencoder", "sae_metrics", "train_sae", "train_saes"),
    "captum_salve.sites": ("Site",),
    "captum_salve.store": ("ActivationStore", "write_activations"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}


@functools.cache
def _submodules() -> frozenset[str]:
    """The package's modules (``captum_salve.plots`` and the rest), listed on first need, not at import."""
    return frozenset(info.name for info in pkgutil.iter_modules(__path__))


def __getattr__(name: str) -> Any:
    """A public name or a submodule, imported on first use and kept."""
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    elif name in _submodules():
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF, *_submodules()})


__all__ = sorted(_MODULE_OF)

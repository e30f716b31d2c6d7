"""Where activations are read, and the hooks that read them.

A :class:`Site` names a place in a model: by default the classifier head's input
(the pre-logits, read with a forward pre-hook), or the output of any module,
reduced to one vector per image. :func:`recording` attaches the hook for the
length of a ``with`` block and always removes it, also when the forward raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from einops import reduce
from torch import Tensor, nn

from captum_salve.checks import shape_of
from captum_salve.models import find_head, get_module, model_device, module_name, token_layout

__all__ = [
    "HEAD_INPUT",
    "REDUCERS",
    "BoundSite",
    "Recording",
    "ReducerName",
    "Site",
    "as_device",
    "eval_mode",
    "on_device",
    "recording",
]

ReducerName = Literal["none", "cls", "mean_tokens", "spatial_mean", "flatten"]
REDUCERS: tuple[ReducerName, ...] = get_args(ReducerName)
HEAD_INPUT = "head_input"

_EXPECTED_RANK = {
    "none": (2, "an (N, M) output"),
    "cls": (3, "an (N, tokens, C) output"),
    "mean_tokens": (3, "an (N, tokens, C) output"),
    "spatial_mean": (4, "an (N, C, H, W) output"),
}


@dataclass(frozen=True)
class Site:
    """A place in a model whose activations become one vector per image.

    Args:
        module: None for the classifier head's input (the default SAE site), or a
            module of the model, by object or dotted name (``"layer3"``, ``"blocks.6"``).
        reducer: How the module's output becomes an (N, M) matrix: ``"none"`` (already
            2-D), ``"cls"`` (token 0), ``"mean_tokens"`` (mean over the patch tokens,
            prefix tokens excluded), ``"spatial_mean"`` (mean over H, W),
            ``"flatten"``, or a callable from the output to an (N, M) tensor.

    Example:
        >>> Site()  # the head input
        Site(module=None, reducer='none')
        >>> Site("layer3", reducer="spatial_mean")
        Site(module='layer3', reducer='spatial_mean')
    """

    module: str | nn.Module | None = None
    reducer: ReducerName | Callable[[Tensor], Tensor] = "none"

    def __post_init__(self) -> None:
        if not callable(self.reducer) and self.reducer not in REDUCERS:
            raise ValueError(f"reducer must be one of {REDUCERS} or a callable, got {self.reducer!r}")
        if self.module is None and self.reducer != "none":
            raise ValueError("the head input is already one vector per image: use reducer='none' with module=None")

    def bind(self, model: nn.Module) -> BoundSite:
        """Resolve the site on a model (finds the head, the module and the token layout)."""
        if self.module is None:
            name, head = find_head(model)
            module = model.get_submodule(name)  # a 1×1 convolution head is found as a linear view of it
            reducer = "none" if module is head else _pooled(name)
            return BoundSite(module, HEAD_INPUT, HEAD_INPUT, pre_hook=True, reduce=_as_matrix(HEAD_INPUT, reducer, 0))
        module = get_module(model, self.module)
        name = module_name(model, module)
        layout = token_layout(model)
        prefix = layout.prefix_tokens if layout is not None else 0
        # A callable reducer is named in angle brackets, so its key never reads as a built-in one.
        reducer = (
            self.reducer if isinstance(self.reducer, str) else f"<{getattr(self.reducer, '__name__', 'callable')}>"
        )
        return BoundSite(
            module, name, f"{name}:{reducer}", pre_hook=False, reduce=_as_matrix(name, self.reducer, prefix)
        )

    @classmethod
    def from_key(cls, key: str) -> Site:
        """The site a stored key names (the inverse of :attr:`BoundSite.key`).

        Raises:
            ValueError: The key names a custom reducer, which cannot be rebuilt from its name.

        Example:
            >>> Site.from_key("layer3:spatial_mean")
            Site(module='layer3', reducer='spatial_mean')
        """
        if key == HEAD_INPUT:
            return cls()
        module, _, reducer = key.rpartition(":")
        if not module or reducer not in REDUCERS:
            raise ValueError(
                f"the site {key!r} was read with a custom reducer (or is not a site key), so it cannot be rebuilt "
                "from its name; pass site=Site(module, reducer) explicitly"
            )
        return cls(module, reducer)


@dataclass(frozen=True)
class BoundSite:
    """A :class:`Site` resolved on one model: the hooked module and the reducer to apply.

    Attributes:
        module: The hooked module (the head, for the head input).
        name: The module's dotted name, or ``"head_input"``.
        key: What activation sets and SAEs store to name the site:
            ``"head_input"``, ``"<module>:<reducer>"``, or ``"<module>:<function>"``
            in angle brackets for a callable reducer.
        pre_hook: Whether the module's input (not its output) is read.
        reduce: Turns the hooked tensor into an (N, M) matrix.

    Example:
        >>> bound = Site("layer3", reducer="spatial_mean").bind(timm.create_model("resnet18", num_classes=3))
        >>> bound.name, bound.key, bound.pre_hook
        ('layer3', 'layer3:spatial_mean', False)
    """

    module: nn.Module
    name: str
    key: str
    pre_hook: bool
    reduce: Callable[[Tensor], Tensor]


@dataclass
class Recording:
    """The value a hooked site took in the latest forward pass (grad-connected).

    Attributes:
        site: The site it records.
        value: The latest (N, M) value, None until a forward pass reaches the site.

    Example:
        >>> model = timm.create_model("resnet18", num_classes=3)
        >>> with recording(model, Site("layer3", reducer="spatial_mean")) as rec:
        ...     _ = model(torch.rand(2, 3, 64, 64))
        >>> rec.site.key, rec.take().shape
        ('layer3:spatial_mean', torch.Size([2, 256]))
        >>> rec.value is None    # take() cleared it
        True
    """

    site: BoundSite
    value: Tensor | None = field(default=None, repr=False)

    def take(self) -> Tensor:
        """Return the recorded (N, M) value and clear it, so a stale value is never reused."""
        if self.value is None:
            raise RuntimeError(
                f"the site {self.site.name!r} was not reached by the forward pass; "
                "check that the module is used by the model's forward"
            )
        value, self.value = self.value, None
        return value


@contextmanager
def recording(model: nn.Module, site: Site | BoundSite | None = None) -> Iterator[Recording]:
    """Record a site's (N, M) value on every forward pass inside the block.

    The hook is removed on exit, also when the block raises.

    Example:
        >>> model = timm.create_model("resnet18", num_classes=3)
        >>> with recording(model) as rec:
        ...     _ = model(torch.rand(2, 3, 64, 64))
        >>> rec.take().shape
        torch.Size([2, 512])
    """
    bound = site if isinstance(site, BoundSite) else (site or Site()).bind(model)
    rec = Recording(bound)
    # The model continues with a clone, so an in-place op further on cannot
    # change the recorded value (which stays connected to the graph).
    if bound.pre_hook:

        def hook(module: nn.Module, args: tuple) -> tuple:
            rec.value = bound.reduce(args[0])
            return (args[0].clone(), *args[1:])

        handle = bound.module.register_forward_pre_hook(hook)
    else:

        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            rec.value = bound.reduce(output)
            return output.clone()

        handle = bound.module.register_forward_hook(hook)
    try:
        yield rec
    finally:
        handle.remove()


def as_device(device: torch.device | str, name: str = "device") -> torch.device:
    """``device`` as a :class:`torch.device` that can hold data here, or a ValueError naming ``name``.

    Example:
        >>> as_device("cpu")
        device(type='cpu')
        >>> as_device("gpu", "--device")
        Traceback (most recent call last):
        ValueError: --device 'gpu' is not a device torch knows; use 'cpu', 'cuda' or 'cuda:<index>' (or 'mps')
    """
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"{name} {device!r} is not a device torch knows; use 'cpu', 'cuda' or 'cuda:<index>' (or 'mps')"
        ) from None
    if target.type == "meta":
        raise ValueError(f"{name} {device!r} cannot hold data (tensors on 'meta' have no values); use 'cpu' or 'cuda'")
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name} {device} asked for CUDA, but torch sees no GPU here")
    return target


@contextmanager
def on_device(model: nn.Module, device: torch.device | str | None) -> Iterator[torch.device]:
    """Move the model to ``device`` (default: where it is) for the block, and back after.

    Example:
        >>> home = model_device(model)
        >>> with on_device(model, "cuda" if torch.cuda.is_available() else "cpu") as device:
        ...     logits = model(images.to(device))
        >>> model_device(model) == home
        True
    """
    home = model_device(model)
    target = as_device(device) if device is not None else home
    if target != home:
        model.to(target)
    try:
        yield target
    finally:
        if target != home:
            model.to(home)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode for the block and give each its own mode back after.

    Example:
        >>> model = timm.create_model("resnet18", num_classes=3).train()
        >>> with eval_mode(model):
        ...     logits = model(torch.rand(2, 3, 64, 64))
        >>> model.training
        True
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.train(training)


def _as_matrix(name: str, reducer: str | Callable[[Tensor], Tensor], prefix_tokens: int) -> Callable[[Tensor], Tensor]:
    def apply(output: Tensor) -> Tensor:
        if not isinstance(output, Tensor):
            raise TypeError(
                f"site {name!r} produced a {type(output).__name__}, not a tensor; "
                "pass a callable reducer that picks the tensor out of it"
            )
        if callable(reducer):
            value = reducer(output)
            if not isinstance(value, Tensor) or value.dim() != 2 or value.shape[0] != output.shape[0]:
                raise ValueError(f"the reducer for site {name!r} must return an (N, M) tensor, got {shape_of(value)}")
            return value
        if reducer == "flatten":
            return output.flatten(1)
        rank, wanted = _EXPECTED_RANK[reducer]
        if output.dim() != rank:
            raise ValueError(
                f"reducer {reducer!r} expects {wanted}, but site {name!r} gave shape "
                f"{tuple(output.shape)}; {_suggest_reducer(output)}"
            )
        if reducer == "none":
            return output
        if reducer == "cls":
            return output[:, 0]
        if reducer == "mean_tokens":
            return output[:, prefix_tokens:].mean(dim=1)
        return reduce(output, "n c h w -> n c", "mean")

    return apply


def _pooled(head_name: str) -> Callable[[Tensor], Tensor]:
    """Pooled (N, M, 1, 1) features, as a 1×1 convolution head reads them, to (N, M)."""

    def flatten(features: Tensor) -> Tensor:
        if features.dim() != 4 or features.shape[2:] != (1, 1):
            raise ValueError(
                f"the head {head_name!r} is a 1×1 convolution and reads {tuple(features.shape)}, not pooled "
                "(N, M, 1, 1) features, so it is not a linear head on one vector per image"
            )
        return features.flatten(1)

    return flatten


def _suggest_reducer(output: Tensor) -> str:
    suggestion = {
        2: "use reducer='none'",
        3: "use reducer='cls' or 'mean_tokens' for token outputs",
        4: "use reducer='spatial_mean' or 'flatten' for feature maps",
    }
    return suggestion.get(output.dim(), "pass a callable reducer")

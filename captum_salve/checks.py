"""Argument checks shared by every public function: one wording, one rule for each kind of value.

Each check returns the value in the form the caller uses (a Python ``int``, a
``float``, a long tensor) or raises an error that names the argument, says what was
expected and shows what was given. Booleans are never numbers here: ``True`` where
a count or a class is expected is a mistake, not 1.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "check_class_names",
    "check_class_with_samples",
    "check_fraction",
    "check_int",
    "check_labels",
    "check_real",
    "check_strengths",
    "raised_in",
    "shape_of",
]


def check_int(value: Any, name: str, least: int | None = None, most: int | None = None, *, why: str = "") -> int:
    """``value`` as an ``int`` (Python or NumPy integers, 0-d integer tensors), within [least, most].

    ``why``, when given, is added to the message in parentheses.

    Example:
        >>> check_int(np.int64(3), "k", least=1)
        3
        >>> check_int(2.5, "k", least=1)
        Traceback (most recent call last):
        ValueError: k must be an integer >= 1, got 2.5
    """
    if isinstance(value, Tensor) and value.dim() == 0 and not value.dtype.is_floating_point:
        value = value.item()
    reason = f" ({why})" if why else ""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer{_range(least, most)}{reason}, got {value!r}")
    value = int(value)
    if (least is not None and value < least) or (most is not None and value > most):
        raise ValueError(f"{name} must be an integer{_range(least, most)}{reason}, got {value}")
    return value


def check_real(value: Any, name: str, least: float | None = None, *, above: bool = False) -> float:
    """``value`` as a finite ``float``, at least ``least`` (strictly above it with ``above=True``).

    Example:
        >>> check_real(1e-3, "lr", 0.0, above=True)
        0.001
        >>> check_real("0.1", "lr", 0.0, above=True)
        Traceback (most recent call last):
        ValueError: lr must be a finite number > 0, got '0.1'
    """
    if isinstance(value, Tensor) and value.dim() == 0 and not value.dtype.is_complex:
        value = value.item()
    bound = "" if least is None else f" {'>' if above else '>='} {least:g}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or (least is not None and (value <= least if above else value < least)):
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return value


def check_fraction(value: Any, name: str, *, above_zero: bool = False) -> float:
    """``value`` as a ``float`` share in [0, 1] (in (0, 1] with ``above_zero``): an accuracy, a tolerance.

    Example:
        >>> check_fraction(0.02, "off_target")
        0.02
        >>> check_fraction(2, "off_target")
        Traceback (most recent call last):
        ValueError: off_target must be a number in [0, 1], got 2
    """
    bounds = "(0, 1]" if above_zero else "[0, 1]"
    try:
        fraction = check_real(value, name, 0.0, above=above_zero)
    except ValueError:
        fraction = math.nan
    if not fraction <= 1:  # NaN: refused
        raise ValueError(f"{name} must be a number in {bounds}, got {value!r}")
    return fraction


def check_labels(labels: Any, name: str = "labels", classes: int | None = None) -> Tensor:
    """Class labels as a 1-D long tensor: integers (not floats, not booleans) in [0, classes).

    Example:
        >>> check_labels([0, 2, 1], classes=3)
        tensor([0, 2, 1])
        >>> check_labels(torch.tensor([0.0, 1.5]))
        Traceback (most recent call last):
        ValueError: labels must be integer class indices, got torch.float32 values [0.0, 1.5]
    """
    try:
        values = labels if isinstance(labels, Tensor) else torch.as_tensor(np.asarray(labels))
        if values.numel() == 0:
            values = values.long()  # an empty list reads as float64
    except (TypeError, ValueError, RuntimeError):  # strings, ragged lists, objects
        raise ValueError(f"{name} must be integer class indices, got {labels!r:.80}") from None
    if values.dim() != 1:
        raise ValueError(f"{name} must be a 1-D sequence of class indices, got shape {tuple(values.shape)}")
    if values.dtype == torch.bool or values.dtype.is_floating_point or values.dtype.is_complex:
        raise ValueError(f"{name} must be integer class indices, got {values.dtype} values {values[:6].tolist()}")
    values = values.long()
    if len(values) and (values.min() < 0 or (classes is not None and values.max() >= classes)):
        upper = f", {classes - 1}]" if classes is not None else ", ...)"
        raise ValueError(
            f"{name} must be class indices in [0{upper}, got values from {int(values.min())} to {int(values.max())}"
        )
    return values


def check_class_names(names: Any, name: str = "class_names", count: int | None = None) -> list[str]:
    """Class names as a list of strings (a single string is refused, not split into letters).

    Example:
        >>> check_class_names(("cat", "dog"), count=2)
        ['cat', 'dog']
    """
    if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{name} must be a list of strings, one per class, got {names!r}")
    if count is not None and len(names) != count:
        raise ValueError(f"{name} must have {count} entries, one per class, got {len(names)}: {list(names)[:6]}")
    return list(names)


def check_class_with_samples(
    class_index: Any,
    counts: Tensor,
    where: str,
    why: str,
    *,
    class_names: Sequence[str] | None = None,
    name: str = "class_index",
) -> int:
    """``class_index`` as an ``int`` in [0, len(counts)), refusing a class whose count of samples is 0.

    Args:
        class_index: The class.
        counts: (K,) samples per class in the data the caller measures on.
        where: That data, for the message ("the profile", "acts").
        why: What cannot be done without samples, for the message.
        class_names: Names to show beside the index.
        name: The argument's name.

    Example:
        >>> check_class_with_samples(1, torch.tensor([4, 0]), "acts", "its accuracy cannot be measured")
        Traceback (most recent call last):
        ValueError: class 1 has no samples in acts (count 0): its accuracy cannot be measured
    """
    class_index = check_int(class_index, name, 0, len(counts) - 1)
    if counts[class_index] == 0:
        shown = f" ({class_names[class_index]!r})" if class_names is not None else ""
        raise ValueError(f"class {class_index}{shown} has no samples in {where} (count 0): {why}")
    return class_index


def check_strengths(alphas: Any, name: str = "alphas") -> Tensor:
    """Edit strengths as a sorted float64 tensor: a non-empty 1-D sequence of finite numbers >= 0.

    Example:
        >>> check_strengths(np.array([2, 0.5, 0]))
        tensor([0.0000, 0.5000, 2.0000], dtype=torch.float64)
    """
    values = alphas.tolist() if isinstance(alphas, (Tensor, np.ndarray)) else alphas
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of strengths, got {alphas!r}")
    strengths = [check_real(a, f"{name}[{i}]", 0.0) for i, a in enumerate(values)]
    return torch.tensor(strengths, dtype=torch.float64).sort().values


def shape_of(value: Any) -> object:
    """A tensor's shape as a tuple, or the type name of anything else (an array too): for error messages.

    Example:
        >>> shape_of(torch.zeros(2, 3)), shape_of([1, 2])
        ((2, 3), 'list')
    """
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def raised_in(error: BaseException) -> Path | None:
    """The file of the innermost frame that raised ``error`` (None without a traceback).

    Tells whose error it is: one of this package's checks, or a library's.

    Example:
        >>> try:
        ...     check_int(2.5, "k")
        ... except ValueError as error:
        ...     raised_in(error).name
        'checks.py'
    """
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return Path(frame.tb_frame.f_code.co_filename).resolve() if frame is not None else None


def _range(least: int | None, most: int | None) -> str:
    if least is not None and most is not None:
        return f" in [{least}, {most}]"
    if least is not None:
        return f" >= {least}"
    return f" <= {most}" if most is not None else ""


def non_finite_error(name: str, count: int, first: tuple[int, ...], hint: str = "") -> ValueError:
    """The error for ``count`` NaN or Inf entries in ``name``, the first at index ``first``.

    Example:
        >>> raise non_finite_error("acts", 2, (3, 1))
        Traceback (most recent call last):
        ValueError: acts holds 2 non-finite values (NaN or Inf); the first at index (3, 1)
    """
    plural = "s" if count > 1 else ""
    return ValueError(f"{name} holds {count} non-finite value{plural} (NaN or Inf); the first at index {first}{hint}")

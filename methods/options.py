"""Typed options: bounds and choices declared once, in a signature, and one checker for them.

A learning rule (or a network builder) declares what each option accepts in its signature with
``typing.Annotated`` markers, next to its default::

    def __init__(self, model, loss, optimizer: OptimizerConfig,
                 mu: Annotated[float, Bounds(gt=0)] = 0.003,
                 top_code_loss: Annotated[str, OneOf("scaled_loss", "scaled_mismatch")] = ...)

:func:`check_value` is the only place these markers are enforced. It runs when a
:class:`~methods.base.Method` is constructed (``methods.base.MethodMeta``, so direct library use
is checked too) and, for the whole run config, in the harness (``experiments.schema``), which
also turns the same signatures into the Hydra schema of ``method=<name>`` and ``model=<name>``.

Pure Python (no torch, Hydra or OmegaConf): the markers are plain frozen dataclasses.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any


@dataclass(frozen=True)
class Bounds:
    """Numeric bounds of an option (for a sequence: of each element); ``None`` = unbounded.

    ``gt``/``lt`` are strict, ``ge``/``le`` inclusive.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, value: float) -> bool:
        """Whether ``value`` lies within every bound."""
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def describe(self, integer: bool = False) -> str:
        """What follows "must": ``be >= 1``, ``be an integer >= 1``, ``lie in [0, 1)``."""
        if (self.ge, self.gt) != (None, None) and (self.le, self.lt) != (None, None):
            low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}"
            high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})"
            return f"lie in {low}, {high}"
        kind = "an integer " if integer else ""
        for op, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)):
            if bound is not None:
                return f"be {kind}{op} {bound:g}"
        return "be a number"


@dataclass(frozen=True)
class OneOf:
    """The option must be one of ``choices``."""

    choices: tuple[Any, ...]

    def __init__(self, *choices: Any) -> None:
        object.__setattr__(self, "choices", tuple(choices))


@dataclass(frozen=True)
class NonEmpty:
    """A sequence option must have at least one element."""


@dataclass(frozen=True)
class Optimizer:
    """A free-form optimiser config ``{_target_: torch.optim.Adam, lr: ..., ...}``.

    Only the keys every torch optimiser shares are checked: ``lr > 0``, ``weight_decay >= 0``,
    ``momentum`` in ``[0, 1]``; the optimiser class checks the rest when it is built.
    """


# The type of every optimiser option of a method.
OptimizerConfig = Annotated[Mapping[str, Any], Optimizer()]
Marker = Bounds | OneOf | NonEmpty | Optimizer
_OPTIMIZER_BOUNDS = {
    "lr": (Bounds(gt=0), "learning rate must be > 0"),
    "weight_decay": (Bounds(ge=0), "must be >= 0"),
    "momentum": (Bounds(ge=0, le=1), "must lie in [0, 1]"),
}


@dataclass(frozen=True)
class OptionSpec:
    """One keyword option of a signature.

    Attributes:
        name: the keyword.
        annotation: its type without the ``Annotated`` markers (``typing`` form).
        default: its default, or ``inspect.Parameter.empty``.
        markers: the :class:`Bounds` / :class:`OneOf` / ... markers declared for it.
    """

    name: str
    annotation: Any
    default: Any
    markers: tuple[Any, ...]


def _function_of(target: Callable[..., Any]) -> Callable[..., Any]:
    """The plain function whose annotations describe ``target`` (a class: its ``__init__``).

    A ``functools.partialmethod`` ``__init__`` (a subclass that only changes a default, e.g.
    drl) is followed to the function it wraps.
    """
    if not isinstance(target, type):
        return target
    for klass in target.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        return getattr(init, "func", init)
    return target.__init__


def option_specs(target: Callable[..., Any], skip: Sequence[str] = ()) -> list[OptionSpec]:
    """The keyword options of a class's constructor or a function, with types and markers.

    Args:
        target: a class (its ``__init__`` is read) or a function.
        skip: parameters supplied by the caller, not options (e.g. ``model``, ``loss``).

    Returns:
        One :class:`OptionSpec` per named parameter, in signature order (``self``, ``*args`` and
        ``**kwargs`` left out); defaults as the signature states them (a ``partialmethod``'s
        bound defaults included).
    """
    function = _function_of(target)
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except (NameError, TypeError):  # an annotation that cannot be resolved: no types
        hints = {}
    specs = []
    for name, param in signature(target).parameters.items():
        if name in ("self", *skip) or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        hint = hints.get(name, Any)
        markers: tuple[Any, ...] = ()
        if typing.get_origin(hint) is Annotated:
            markers = tuple(m for m in hint.__metadata__ if isinstance(m, Marker))
            hint = hint.__origin__
        specs.append(OptionSpec(name, hint, param.default, markers))
    return specs


def signature(target: Callable[..., Any]) -> inspect.Signature:
    """The signature of a function, or of a class's ``__init__`` (``self`` included).

    Not ``inspect.signature(cls)``, which a metaclass ``__call__`` would hide.
    """
    return inspect.signature(target.__init__ if isinstance(target, type) else target)


def accepts_any_keyword(target: Callable[..., Any]) -> bool:
    """Whether ``target`` (a class or a function) takes ``**kwargs``."""
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature(target).parameters.values()
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_error(annotation: Any, value: Any) -> str | None:
    """Why ``value`` is not of type ``annotation``, or ``None``.

    Only int, float, bool, str, their optional forms and sequences of them are checked; other
    types (optimiser configs, modules, ...) pass.
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _type_error(inner[0], value) if len(inner) == 1 else None
    if annotation is int and not _is_int(value):
        return f"must be an integer, got {value!r}"
    if annotation is float and not (_is_number(value) and math.isfinite(value)):
        return f"must be a finite number, got {value!r}"
    if annotation is bool and not isinstance(value, bool):
        return f"must be true or false, got {value!r}"
    if annotation is str and not isinstance(value, str):
        return f"must be a string, got {value!r}"
    if origin in (list, tuple, Sequence, typing.Sequence) and args:
        if isinstance(value, str) or not isinstance(value, Sequence):
            return f"must be a list, got {value!r}"
        for item in value:
            if _type_error(args[0], item) is not None:
                return f"must be a list of {getattr(args[0], '__name__', args[0])}, got {value!r}"
    return None


def check_value(
    key: str, value: Any, annotation: Any, markers: Sequence[Any], optimizer_bounds: bool = True
) -> str | None:
    """Check one option against its type and markers.

    Args:
        key: the option's dotted config key, e.g. ``method.target_stepsize`` (for messages).
        value: its value (plain Python: dicts, lists, scalars).
        annotation: its type (see :func:`option_specs`); ``Any`` checks nothing.
        markers: :class:`Bounds`, :class:`OneOf`, :class:`NonEmpty`, :class:`Optimizer`.
        optimizer_bounds: enforce :class:`Optimizer`'s bounds. A run needs ``lr > 0`` (the
            harness passes ``True``); a library user may freeze a network with ``lr = 0``
            (the construction check passes ``False``; torch still rejects a negative one).

    Returns:
        ``"<key>: <why>"`` (one line) for a bad value, else ``None``. ``None`` passes every
        marker (an optional option left unset).
    """
    problem = _type_error(annotation, value)
    if problem is not None:
        return f"{key}: {problem}"
    if value is None:
        return None
    args = typing.get_args(annotation)
    integer = annotation is int or int in args or any(int in typing.get_args(a) for a in args)
    for marker in markers:
        if isinstance(marker, OneOf) and value not in marker.choices:
            choices = ", ".join(str(c) for c in marker.choices)
            return f"{key}: must be one of {choices}, got {value!r}"
        if isinstance(marker, NonEmpty) and len(value) == 0:
            return f"{key}: must be a non-empty list, got {list(value)!r}"
        if isinstance(marker, Bounds):
            sequence = isinstance(value, Sequence)
            for item in value if sequence else [value]:
                if not (_is_number(item) and marker.holds(item)):
                    whose = "every element must" if sequence else "must"
                    return f"{key}: {whose} {marker.describe(integer)}, got {value!r}"
        if isinstance(marker, Optimizer) and optimizer_bounds:
            if not isinstance(value, Mapping):
                return f"{key}: must be an optimiser config {{_target_: ...}}, got {value!r}"
            for name, (bounds, why) in _OPTIMIZER_BOUNDS.items():
                item = value.get(name)
                if name not in value:
                    continue
                if not (_is_number(item) and math.isfinite(item)):
                    return f"{key}.{name}: must be a finite number, got {item!r}"
                if not bounds.holds(item):
                    return f"{key}.{name}: {why}, got {item!r}"
    return None


def check_options(
    target: Callable[..., Any],
    options: Mapping[str, Any],
    prefix: str,
    skip: Sequence[str] = (),
    optimizer_bounds: bool = True,
) -> str | None:
    """Check the given keyword options of ``target`` with :func:`check_value`.

    Unknown keys are not checked here (:func:`methods.base.check_method_options` does).

    Args:
        target: the class or function whose signature declares the options.
        options: the options given, by name.
        prefix: the config key above them, e.g. ``method``.
        skip: parameters that are not options (:func:`option_specs`).
        optimizer_bounds: as :func:`check_value`.

    Returns:
        The first problem as one line ``"<prefix>.<name>: <why>"``, or ``None``.
    """
    for spec in option_specs(target, skip):
        if spec.name in options:
            problem = check_value(
                f"{prefix}.{spec.name}",
                options[spec.name],
                spec.annotation,
                spec.markers,
                optimizer_bounds,
            )
            if problem is not None:
                return problem
    return None

"""The contract every learning rule implements, and the registry that selects one by name.

A *method* owns a model's parameters, its auxiliary modules (inverses, synthetic-gradient
modules, feedback weights, ...) and all of its optimisers. The shared training loop only ever
calls :meth:`Method.step` on a batch and :meth:`Method.forward` for evaluation, so it never needs
to know which rule is training the network.

Each step is split in two so that diagnostics can inspect a method's update without knowing the
method:

1. :meth:`Method.compute_update` writes the method's update *direction* for every model
   parameter into ``param.grad`` (the true gradient for backprop, a pseudo-gradient for the
   alternatives: the sign convention is that of a gradient, i.e. the optimiser moves against it);
2. :meth:`Method.apply_update` lets the configured optimiser apply it.

Comparing ``param.grad`` after step 1 with the backprop gradient on the same batch gives the
alignment angle of Meulemans et al. (2020, Sec. 5) for any method. That comparison, and every
other diagnostic that does not depend on the method (gradient and update norms), is the harness's
(``experiments.diagnostics``); a method reports only what only it knows (inverse losses, code
shifts, synthetic-gradient losses, ...), through :meth:`Method.epoch_metrics`.

The loop drives a method through these calls, in this order (the lifecycle contract)::

    check_budget(epochs, batches_per_epoch)   # pure; the entry point calls it early too
    on_train_start(epochs, batches_per_epoch) # exactly once per training run
    for epoch in 1..epochs:
        on_epoch_start(epoch)                 # sets Method.epoch: the only epoch counter
        step(x, y) for each batch             # compute_update, then apply_update
        epoch_metrics()                       # pure getter, read once the epoch is trained
        reset_epoch_metrics()                 # after the epoch was logged: clear accumulators
        state_dict()                          # a checkpoint, every train.checkpoint_every epochs

A resumed run builds the method afresh from the same config, calls ``on_train_start`` with the
same budget, then :meth:`Method.load_state_dict` with what :meth:`Method.state_dict` returned at
the end of the checkpointed epoch, and goes on with the next epoch.

A method never counts epochs itself: it reads :attr:`Method.epoch`, which the loop sets. Its
per-epoch scalars accumulate during the epoch (in :attr:`Method.means`, an :class:`EpochMeans`)
and are cleared only by :meth:`Method.reset_epoch_metrics`, so reading them changes nothing.

This package is a torch-only library: nothing in ``methods/`` imports the harness
(``experiments``), the analysis, Hydra or MLflow (``tests/test_layers.py``).
"""

from __future__ import annotations

import importlib
import inspect
from abc import ABCMeta, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from methods.losses import Loss
from methods.options import accepts_any_keyword, check_options, signature

_REGISTRY: dict[str, type[Method]] = {}


class MethodConfigError(ValueError):
    """A method was asked for by an unknown name or with options it does not accept."""


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator that makes a :class:`Method` selectable as ``method=<name>``.

    Args:
        name: the name used in ``conf/method/<name>.yaml`` (its ``name:`` key).

    Raises:
        ValueError: if ``name`` is already registered to a different class.
    """

    def decorator(cls: type[Method]) -> type[Method]:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"method name {name!r} is already registered to {existing!r}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def available_methods() -> list[str]:
    """Return the sorted names of all registered methods."""
    return sorted(_REGISTRY)


def get_method_class(name: str) -> type[Method]:
    """Look a method class up by its registered name.

    Raises:
        MethodConfigError: if no method of that name is registered; the message lists the
            registered names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MethodConfigError(
            f"method.name: unknown method {name!r}; registered methods: "
            f"{', '.join(available_methods())}"
        ) from None


# Constructor parameters that the harness supplies; every other one is a method option.
NOT_OPTIONS = ("model", "loss")


def _option_error(cls: type[Method], options: Mapping[str, Any]) -> str | None:
    """The first unknown or out-of-range option of ``cls``'s constructor, or ``None``."""
    if not accepts_any_keyword(cls):
        accepted = [p for p in signature(cls).parameters if p not in ("self", *NOT_OPTIONS)]
        for key in options:
            if key not in accepted and key not in NOT_OPTIONS:
                return (
                    f"method.{key}: method {cls.name!r} has no option {key!r}; "
                    f"its options are: {', '.join(accepted) or '(none)'}"
                )
    return check_options(cls, options, "method", NOT_OPTIONS)


def check_method_options(name: str, options: Mapping[str, Any]) -> None:
    """Check ``options`` against method ``name``'s constructor signature.

    Every option must be a keyword of the constructor, and satisfy its type and the bounds or
    choices declared with it (:mod:`methods.options` markers).

    Raises:
        MethodConfigError: naming the first unknown option (listing the accepted ones) or the
            first bad value, as ``method.<key>: <why>``.
    """
    problem = _option_error(get_method_class(name), options)
    if problem is not None:
        raise MethodConfigError(problem)


def build_method(name: str, model: nn.Module, loss: Loss, options: Mapping[str, Any]) -> Method:
    """Instantiate the method registered as ``name`` around ``model``.

    Args:
        name: registered method name.
        model: the network to train, already on its device.
        loss: the task loss, shared with evaluation.
        options: the method's hyperparameters (the method config without ``name``).

    Raises:
        MethodConfigError: unknown name, unknown option or bad value (checked on construction,
            :class:`MethodMeta`).
    """
    return get_method_class(name)(model=model, loss=loss, **dict(options))


class MethodMeta(ABCMeta):
    """Checks a method's options against its signature whenever one is constructed.

    The bounds and choices declared in the constructor's signature (:mod:`methods.options`) are
    thus enforced for direct library use too, in one place, before ``__init__`` runs.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        """Bind the arguments to the signature, check the options, then construct."""
        try:
            bound = signature(cls).bind(None, *args, **kwargs)
        except TypeError as error:
            problem = _option_error(cls, kwargs)
            raise MethodConfigError(problem or f"method={cls.name}: {error}") from None
        options = {k: v for k, v in bound.arguments.items() if k not in ("self", *NOT_OPTIONS)}
        # lr = 0 is legitimate in library use (a frozen network); a run's lr > 0 is the
        # harness's check (check_method_options).
        problem = check_options(cls, options, "method", NOT_OPTIONS, optimizer_bounds=False)
        if problem is not None:
            raise MethodConfigError(problem)
        return super().__call__(*args, **kwargs)


def locate(path: str) -> Any:
    """The object named by a dotted path, e.g. ``"torch.optim.Adam"``.

    The longest importable module prefix is imported, then the rest is read as attributes (so a
    class nested in a class works too), as Hydra's ``_target_`` lookup does.

    Args:
        path: ``"package.module.Name"`` (at least one dot-separated part, none empty).

    Raises:
        ImportError: if no prefix of ``path`` is an importable module, or a part is missing.
    """
    parts = path.split(".")
    if not all(parts):
        raise ImportError(f"not a dotted path: {path!r}")
    for stop in range(len(parts), 0, -1):
        module_name = ".".join(parts[:stop])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            # Only "this prefix is not a module" moves on to a shorter one; a module that exists
            # but fails to import itself is an error of its own.
            missing = error.name or module_name
            if module_name != missing and not module_name.startswith(f"{missing}."):
                raise
            continue
        for index in range(stop, len(parts)):
            try:
                obj = getattr(obj, parts[index])
            except AttributeError:
                owner = ".".join(parts[:index])
                raise ImportError(f"{owner!r} has no attribute {parts[index]!r}") from None
        return obj
    raise ImportError(f"no module named {parts[0]!r}")


def make_optimizer(
    params: Iterator[nn.Parameter] | list[nn.Parameter],
    config: Mapping[str, Any],
    key: str = "method.optimizer",
) -> torch.optim.Optimizer:
    """Build a ``torch.optim`` optimiser from a Hydra-style config.

    Where the optimiser has a fused implementation (``fused=True``: Adam, AdamW, SGD, Adagrad
    on CPU and CUDA) and the config sets neither ``fused`` nor ``foreach``, the fused one is
    used: the same update rule in one kernel per tensor, where the default implementation
    runs about eight elementwise passes from Python. On a 784-256-256-10 MLP at batch 64
    (one CPU thread) Adam's step drops from about 3.4 ms to 0.9 ms, which was a third of
    backprop's step and more of DNI's. The result is not bit-identical to the per-tensor
    implementation (different rounding, about 4e-8 in the weights after 20 Adam steps); set
    ``fused: false`` in the optimiser's config for the unfused form. Parameters the fused
    kernels do not support fall back to the default implementation.

    Args:
        params: the parameters it will update.
        config: ``{"_target_": "torch.optim.Adam", "lr": 1e-3, ...}``; any optimiser class
            importable by dotted path works (looked up by :func:`locate`); ``_partial_`` is
            ignored.
        key: the config key of ``config``, used in error messages.

    Raises:
        MethodConfigError: if ``_target_`` is missing, cannot be imported, is not an optimiser,
            or the optimiser rejects the given keyword arguments.
    """
    options = dict(config)
    target = options.pop("_target_", None)
    options.pop("_partial_", None)
    if not target:
        raise MethodConfigError(f"{key}._target_ is missing (e.g. torch.optim.Adam)")
    try:
        cls = locate(str(target))
    except ImportError as error:
        raise MethodConfigError(f"{key}._target_: cannot import {target!r}") from error
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise MethodConfigError(f"{key}._target_: {target!r} is not a torch optimiser")
    params = list(params)
    if "fused" not in options and "foreach" not in options and _has_fused(cls):
        try:
            return cls(params, fused=True, **options)
        except (RuntimeError, TypeError, ValueError):
            pass  # unsupported parameters (device, dtype) or options: the default form decides
    try:
        return cls(params, **options)
    except (TypeError, ValueError) as error:
        raise MethodConfigError(f"{key} ({target}): {error}") from error


def _has_fused(cls: type[torch.optim.Optimizer]) -> bool:
    """Whether the optimiser class takes ``fused`` (torch's fused implementations)."""
    try:
        return "fused" in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False


class EpochMeans:
    """Per-key means of scalars logged during an epoch, for :meth:`Method.epoch_metrics`.

    :meth:`values` reads them without side effects; :meth:`reset` (called through
    :meth:`Method.reset_epoch_metrics` by the loop, once the epoch is logged) clears them.

    Each key is averaged over the number of times it was added, so a quantity measured only in
    some steps (e.g. in one phase of a schedule) is not diluted by the others.
    """

    def __init__(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def state_dict(self) -> dict[str, dict[str, float | int]]:
        """The sums and counts so far, as plain dicts (for a checkpoint)."""
        return {"sums": dict(self._sums), "counts": dict(self._counts)}

    def load_state_dict(self, state: Mapping[str, Mapping[str, float | int]]) -> None:
        """Replace the sums and counts by those of :meth:`state_dict`."""
        self.reset()
        self._sums.update(state["sums"])
        self._counts.update(state["counts"])

    def add(self, key: str, value: float) -> None:
        """Record one value of ``key``."""
        self._sums[key] += value
        self._counts[key] += 1

    def values(self) -> dict[str, float]:
        """The means so far, sorted by key; changes nothing (read them as often as needed)."""
        return {key: total / self._counts[key] for key, total in sorted(self._sums.items())}

    def reset(self) -> None:
        """Forget every value, for the next epoch."""
        self._sums.clear()
        self._counts.clear()


class Method(metaclass=MethodMeta):
    """Base class of a learning rule.

    Subclasses implement :meth:`compute_update`; most also create ``self.optimizer`` for the
    model's parameters (with :func:`make_optimizer`) and inherit :meth:`apply_update`.

    See the module docstring for the order in which the loop calls the hooks.

    Attributes:
        name: the registered name (set by :func:`register_method`).
        model: the network being trained; its ``forward`` maps ``(batch, *features)`` to
            ``(batch, outputs)``.
        model_parameters: ``tuple(model.parameters())``, taken when the method is built (the
            model's parameters are never replaced; loading weights copies into them).
        loss: the task loss.
        optimizer: the optimiser that applies the update written into ``.grad``, or ``None``.
        epoch: the current epoch, 1-based, set by the loop through :meth:`on_epoch_start`; 1
            before training starts (a method used outside the loop behaves as in its first
            epoch). Methods with phases or epoch schedules read it; none keeps a counter.
        means: per-epoch means of the method's own scalars (:class:`EpochMeans`), reported by
            :meth:`epoch_metrics` and cleared by :meth:`reset_epoch_metrics`.
        probe: a fixed batch (the first seen, see :meth:`keep_probe`) for the method's own
            per-epoch diagnostics, or ``None``.
    """

    name: ClassVar[str] = "abstract"
    # False for a method that replaces its optimiser objects during training (see optimizers()).
    persistent_optimizers: bool = True
    # Attributes that carry nothing from one step to the next (rebuilt from the config), which
    # state_dict() leaves out; any other attribute of a type it cannot save is an error.
    transient_attributes: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, model: nn.Module, loss: Loss) -> None:
        self.model = model
        self.loss = loss
        # The model's parameters, listed once: walking the module tree costs about as much as a
        # small MLP's whole metric computation, on every step (zero_grad).
        self.model_parameters: tuple[nn.Parameter, ...] = tuple(model.parameters())
        self.optimizer: torch.optim.Optimizer | None = None
        self.epoch = 1
        self.means = EpochMeans()
        # A fixed batch for a method's own per-epoch diagnostics (see keep_probe).
        self.probe: tuple[torch.Tensor, torch.Tensor] | None = None

    def require_model(
        self,
        kind: type[nn.Module] | tuple[type[nn.Module], ...],
        choice: str | tuple[str, ...],
        why: str | None = None,
    ) -> None:
        """Check the model type early.

        Args:
            kind: the accepted network class, or a tuple of them.
            choice: the ``model=`` option(s) that build one, for the message.
            why: why other networks are refused, appended to the message (one line).

        Raises:
            MethodConfigError: ``method=<name> needs model=<choice>[ or model=...][: why]``
                unless ``self.model`` is a ``kind``.
        """
        if not isinstance(self.model, kind):
            choices = (choice,) if isinstance(choice, str) else choice
            message = f"method={self.name} needs " + " or ".join(f"model={c}" for c in choices)
            raise MethodConfigError(f"{message}: {why}" if why else message)

    @property
    def device(self) -> torch.device:
        """Device of the model's first parameter."""
        return next(self.model.parameters()).device

    @abstractmethod
    def compute_update(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Write this method's update direction for each model parameter into ``param.grad``.

        Auxiliary modules (inverses, synthetic-gradient modules, ...) may be trained here; the
        model's own parameters must not change until :meth:`apply_update`.

        Args:
            x: inputs, ``(batch, *features)``.
            y: targets, ``(batch,)`` class indices or ``(batch, outputs)`` regression targets.

        Returns:
            Scalar metrics of this batch. ``"loss"`` (the task loss before the update) is
            required; the loop checks it for divergence and averages it into ``train_loss``.
        """

    def keep_probe(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Keep the first batch seen as ``self.probe``, for diagnostics that need a fixed one."""
        if self.probe is None:
            self.probe = (x.detach().clone(), y.detach().clone())

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimiser this method owns (model and auxiliary modules); ``[self.optimizer]``.

        The shared loop attaches the run's learning-rate schedule (``train.lr_schedule``) to each
        of them identically, so a method with auxiliary optimisers (inverses, synthetic-gradient
        modules, per-layer optimisers) must list them all here. A method that replaces its
        optimiser objects during training cannot be scheduled: it sets
        :attr:`persistent_optimizers` to ``False`` and the entry point refuses a schedule.
        """
        return [self.optimizer] if self.optimizer is not None else []

    def apply_update(self) -> None:
        """Apply the update written by :meth:`compute_update` with ``self.optimizer``."""
        if self.optimizer is not None:
            self.optimizer.step()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Perform one full training update on a batch; returns :meth:`compute_update`'s metrics.

        The model is put in training mode first. ``train()`` walks every submodule (about 3% of
        a small MLP's step), so it is only called when the root is not in training mode already:
        :meth:`forward` switches the whole tree with ``eval()``, so the root's flag tells the
        tree's mode unless a submodule's was set on its own.
        """
        if not self.model.training:
            self.model.train()
        metrics = self.compute_update(x, y)
        self.apply_update()
        return metrics

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate the model: ``(batch, *features) -> (batch, outputs)``, no gradients kept."""
        self.model.eval()
        return self.model(x)

    def zero_grad(self) -> None:
        """Clear ``.grad`` of every model parameter (set to ``None``)."""
        for param in self.model_parameters:
            param.grad = None

    def check_budget(self, epochs: int, batches_per_epoch: int) -> None:
        """Check that this method can train for the given budget; nothing by default.

        Pure (no state is set), so the entry point can call it before any run is created and
        the loop again before training.

        Args:
            epochs: the run's budget in epochs (``train.epochs``).
            batches_per_epoch: number of updates per epoch.

        Raises:
            MethodConfigError: if the method cannot use this budget.
        """
        return

    def on_train_start(self, epochs: int, batches_per_epoch: int) -> None:
        """Hook called exactly once by the loop, before the first epoch, with the budget; no-op.

        For methods with phases (e.g. a split of the epochs). The loop has already called
        :meth:`check_budget` with the same budget.

        Args:
            epochs: the run's budget in epochs (``train.epochs``).
            batches_per_epoch: number of updates per epoch.
        """
        return

    def on_epoch_start(self, epoch: int) -> None:
        """Called by the loop before each epoch's first batch: sets :attr:`epoch` (1-based).

        The loop owns the epoch count; an override must call this implementation.
        """
        self.epoch = epoch

    def artifacts(self) -> dict[str, Any]:
        """Objects saved with the run at its start (``torch.save``), by file name; none by default.

        For fixed parameters a comparison must be able to inspect, e.g. feedback matrices.
        """
        return {}

    def epoch_metrics(self) -> dict[str, float]:
        """Method-specific scalars of the current epoch, logged once per epoch by the loop.

        Only what the method alone knows (inverse losses, code shifts, synthetic-gradient
        losses, ...); method-agnostic diagnostics belong to the harness. A pure getter: the
        default returns the epoch means accumulated in :attr:`means` (empty if none) and
        nothing is reset; the loop calls :meth:`reset_epoch_metrics` once the epoch is logged.
        """
        return self.means.values()

    def reset_epoch_metrics(self) -> None:
        """Clear the per-epoch accumulators; called by the loop after logging each epoch.

        The default resets :attr:`means`; a method that accumulates more (e.g. votes) clears
        it here too, and an override must call this implementation.
        """
        self.means.reset()

    def state_dict(self) -> dict[str, Any]:
        """Everything this method carries between steps, except the model, for a checkpoint.

        The default saves every instance attribute but ``model``, ``model_parameters`` and
        ``loss`` (the checkpoint saves the model itself; the loss has no state) and those in
        :attr:`transient_attributes`: modules and optimisers by their ``state_dict()``,
        :class:`EpochMeans` by theirs, tensors, ``None``, numbers, strings, and lists, tuples
        and string-keyed dicts of these (e.g. per-layer optimisers, feedback matrices, the
        probe batch, vote counts, :attr:`epoch`). The result holds only what
        ``torch.load(weights_only=True)`` accepts.

        Raises:
            TypeError: naming the attribute, for one of any other type (a method keeping such
                state lists it in :attr:`transient_attributes` or overrides this pair).
        """
        return {
            key: _export(value, f"{type(self).__name__}.{key}")
            for key, value in vars(self).items()
            if key not in _NOT_METHOD_STATE and key not in self.transient_attributes
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, on a method built from the same config.

        Modules, optimisers and :class:`EpochMeans` are loaded in place (so optimisers keep
        their parameters and any learning-rate scheduler attached to them); other values
        replace the attribute. Tensors are expected on the model's device already
        (``torch.load(..., map_location=device)``).

        Raises:
            ValueError: if ``state`` lacks an attribute of this method or has one it does not.
        """
        expected = set(self.state_dict())
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(
                f"method={self.name}: checkpoint state does not match the method "
                f"(missing: {missing or 'none'}, unexpected: {extra or 'none'})"
            )
        for key, value in state.items():
            setattr(self, key, _restore(getattr(self, key), value))


# Attributes the default Method.state_dict leaves out: the checkpoint saves the model itself.
_NOT_METHOD_STATE = frozenset({"model", "loss", "model_parameters"})
_PLAIN = (type(None), bool, int, float, str)


def _export(value: Any, where: str) -> Any:
    """``value`` as plain data for a checkpoint (see :meth:`Method.state_dict`)."""
    if isinstance(value, nn.Module | torch.optim.Optimizer | EpochMeans):
        return value.state_dict()
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, _PLAIN):
        return value
    if type(value) in (list, tuple):
        return type(value)(_export(item, f"{where}[{i}]") for i, item in enumerate(value))
    if type(value) is dict and all(isinstance(k, str) for k in value):
        return {k: _export(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(
        f"{where}: cannot checkpoint a {type(value).__name__}; list it in "
        "transient_attributes if it carries nothing between steps, else override state_dict"
    )


def _restore(live: Any, saved: Any) -> Any:
    """The attribute's new value: ``live`` loaded in place, or ``saved`` itself."""
    if isinstance(live, nn.Module | torch.optim.Optimizer | EpochMeans):
        live.load_state_dict(saved)
        return live
    if type(live) in (list, tuple) and len(live) == len(saved):
        return type(live)(_restore(a, b) for a, b in zip(live, saved))
    return saved

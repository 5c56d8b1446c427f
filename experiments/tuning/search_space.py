"""Sweeper overrides (``key=tag(log, interval(a, b))``) to Optuna distributions, and back.

The syntax is the one hydra-optuna-sweeper 1.2/1.3 read (conf/search/*.yaml), parsed by Hydra's
own override parser; the distributions are Optuna 3+'s ``FloatDistribution``,
``IntDistribution`` and ``CategoricalDistribution``.
"""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    ChoiceSweep,
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from experiments.errors import ConfigError


def _choices(override: Override) -> CategoricalDistribution:
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    for value in values:
        if not isinstance(value, (str, int, float, bool, type(None))):
            raise ConfigError(
                f"{override.get_key_element()}: a choice holds str, int, float, bool or null, "
                f"not {type(value).__name__}"
            )
    return CategoricalDistribution(values)


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override.

    ``choice(a, b, ...)`` and ``shuffle(range(...))``: categorical. ``range(start, stop[, step])``:
    integers (floats if any bound or the step is a float) from ``start`` to ``stop`` *inclusive*
    in steps of ``step``, as hydra-optuna-sweeper read it (unlike Hydra's basic sweeper, whose
    ``stop`` is exclusive). ``interval(a, b)``: uniform floats in ``[a, b]`` (Hydra parses the
    bounds as floats); ``int(interval(a, b))``: uniform integers; ``tag(log, ...)``: the same
    on a log scale.

    Raises:
        ConfigError: for a sweep Optuna cannot sample (``glob``), naming the key.
    """
    value = override.value()
    key = override.get_key_element()
    if isinstance(value, ChoiceSweep):  # not a glob(), which needs Hydra's config loader
        return _choices(override)
    if isinstance(value, RangeSweep):
        if value.shuffle:
            return _choices(override)
        if any(isinstance(x, float) for x in (value.start, value.stop, value.step)):
            return FloatDistribution(value.start, value.stop, step=value.step)
        return IntDistribution(int(value.start), int(value.stop), step=int(value.step))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(value.start, value.end, log=log)
    raise ConfigError(f"{key}: Optuna cannot sample {override.input_line!r}")


def parse_search_space(
    arguments: list[str],
) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """Split overrides into the searched keys and the fixed ones; a later override of a key wins.

    Args:
        arguments: ``hydra.sweeper.params`` as ``key=value`` strings first, then the command
            line's overrides (so the command line replaces a preset's search space).

    Returns:
        ``(search space {key: distribution}, fixed {key: the override as typed})``.

    Raises:
        ConfigError: as :func:`distribution`; Hydra's ``OverrideParseException`` for text
            that is no override at all.
    """
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        if override.is_sweep_override():
            space[key] = distribution(override)
            fixed.pop(key, None)
        else:
            fixed[key] = override.input_line
            space.pop(key, None)
    return space, fixed


def format_value(value: Any) -> str:
    """A sampled value as Hydra reads it back on the command line (``repr`` keeps full floats)."""
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def trial_overrides(params: dict[str, Any], fixed: dict[str, str]) -> list[str]:
    """The overrides of one trial's job: ``key=<sampled value>``, then the fixed overrides.

    The order of hydra-optuna-sweeper, so a job's recorded overrides (``config/overrides.yaml``)
    read as before.
    """
    return [*(f"{key}={format_value(v)}" for key, v in params.items()), *fixed.values()]

"""The typed schema of a run config: Hydra structured configs, checked by one function.

Composition (``conf/config.yaml``'s defaults list) starts from :class:`RunConfig` and, for each
of the method, model and data groups, from a schema generated from the code that consumes the
group, so a key or a type that nothing reads is rejected by OmegaConf while Hydra composes:

* ``method=<name>``: the registered method's constructor signature (types and defaults; the
  ``model`` and ``loss`` arguments are the harness's), so a method's defaults live only in its
  constructor and ``conf/method/<name>.yaml`` holds only what differs;
* ``model=<name>``, ``data=<name>``: the signature of the builder or loader named by the
  option's ``_target_`` (a builder that forwards ``**options`` to the class it returns: that
  class's keyword options), plus the harness's keys (``name``, ``_target_``; for data
  ``val_fraction`` and ``split_seed``). Adding a model or a dataset needs no edit here.

Bounds and choices are declared once, next to each field: ``typing.Annotated`` markers of
:mod:`methods.options` in the signatures, the same markers in ``field(metadata=...)`` here.
:func:`validate_config` checks them all (and the cross-field rules of :meth:`RunConfig`'s
protocol) after composition, and reports the first problem as one :class:`ConfigError` line
``<key>: <why>``.

Sources: Hydra's "Structured Configs" tutorial (config groups with a schema in the ConfigStore,
https://hydra.cc/docs/tutorials/structured_config/schema/) and OmegaConf's structured configs.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional  # noqa: UP035 (OmegaConf reads these forms)

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from experiments.errors import ConfigError
from methods import MethodConfigError, available_methods, check_method_options, get_method_class
from methods.base import NOT_OPTIONS, locate
from methods.options import (
    Bounds,
    NonEmpty,
    OneOf,
    OptionSpec,
    accepts_any_keyword,
    check_value,
    option_specs,
)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# Seeds from here on are for tuning only; evaluation seeds (a comparison's ``seed=0,1,...``)
# stay below, so a study never selects hyperparameters on the seeds it is judged on.
FIRST_TUNING_SEED = 1000
LR_SCHEDULES = ("none", "step", "cosine")
# Arguments the harness passes to every model builder (from the dataset), not options.
MODEL_INPUTS = ("input_shape", "output_size")
# Keys of a data option consumed by the harness, not passed to its loader.
DATA_HARNESS_KEYS = ("name", "val_fraction", "split_seed")


def checked(*markers: Any, default: Any = MISSING) -> Any:
    """A dataclass field whose value must satisfy ``markers`` (:mod:`methods.options`)."""
    return field(default=default, metadata={"check": markers})


@dataclass
class TrainConfig:
    """``train``: the budget and schedule shared by every method (values: conf/config.yaml)."""

    epochs: int = checked(Bounds(ge=1))
    batch_size: int = checked(Bounds(ge=1))
    eval_batch_size: int = checked(Bounds(ge=1))
    lr_schedule: str = checked(OneOf(*LR_SCHEDULES))
    lr_step_epochs: int = checked(Bounds(ge=1))
    lr_step_factor: float = checked(Bounds(gt=0, le=1))
    objective: Optional[str] = MISSING  # noqa: UP045
    objective_seeds: List[int] = MISSING  # noqa: UP006
    # Epochs between two checkpoints; 0 = none (docs/resume.md).
    checkpoint_every: int = checked(Bounds(ge=0), default=0)
    # Where checkpoints go; null: <Hydra output dir>/checkpoints.
    checkpoint_dir: Optional[str] = checked(NonEmpty(), default=None)  # noqa: UP045


@dataclass
class DiagnosticsConfig:
    """``diagnostics``: alignment and gradient norms on a probe batch."""

    every_steps: int = checked(Bounds(ge=0))
    probe_size: int = checked(Bounds(ge=1))


@dataclass
class MlflowConfig:
    """``mlflow``: where and under which names the run is tracked."""

    tracking_uri: str = MISSING
    experiment_name: str = checked(NonEmpty())
    run_name: Optional[str] = MISSING  # noqa: UP045


@dataclass
class RunConfig:
    """The whole run config; ``method``, ``model`` and ``data`` get their group's schema.

    The values live in ``conf/config.yaml`` (with the reason for each); this class only says
    what each key accepts. ``resume`` (a run id, a checkpoint path or ``auto``:
    docs/resume.md) has its default here.
    """

    seed: int = checked(Bounds(ge=0))
    # auto | cpu | cuda | cuda:N, checked by experiments.validation.resolve_device
    device: str = MISSING
    deterministic: bool = MISSING
    cpu_threads: Optional[int] = checked(Bounds(ge=1))  # noqa: UP045
    tuned: Optional[Dict[str, Any]] = MISSING  # noqa: UP006, UP045
    resume: Optional[str] = checked(NonEmpty(), default=None)  # noqa: UP045
    train: TrainConfig = field(default_factory=TrainConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    method: Any = MISSING
    model: Any = MISSING
    data: Any = MISSING


def omegaconf_type(annotation: Any) -> Any:
    """The OmegaConf field type for a signature's annotation (``Any`` where none fits).

    ``Sequence[int]`` becomes ``List[int]``, a mapping ``Dict[str, Any]`` (free-form, e.g. an
    optimiser config), ``X | None`` ``Optional[X]``.
    """
    if annotation in (int, float, bool, str):
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and type(None) in args:
            converted = omegaconf_type(inner[0])
            return Optional[converted] if converted is not Any else Any  # noqa: UP045
        return Any
    if origin in (list, tuple, Sequence):
        item = omegaconf_type(args[0]) if args else Any
        return List[item]  # noqa: UP006
    if origin in (dict, Mapping):
        return Dict[str, Any]  # noqa: UP006
    return Any


def _field_of(spec: OptionSpec) -> tuple[str, Any, Any]:
    """A ``make_dataclass`` field for one option: type, default (``???`` without one), markers."""
    default: Any = spec.default
    if default is inspect.Parameter.empty:
        made = field(default=MISSING, metadata={"check": spec.markers})
    elif isinstance(default, list | tuple | dict):
        copy = dict(default) if isinstance(default, dict) else list(default)
        made = field(default_factory=lambda c=copy: c, metadata={"check": spec.markers})
    else:
        made = field(default=default, metadata={"check": spec.markers})
    return spec.name, omegaconf_type(spec.annotation), made


def _schema(name: str, specs: list[OptionSpec], head: list[tuple[str, Any, Any]]) -> type:
    fields = head + [_field_of(s) for s in specs if s.name not in {h[0] for h in head}]
    return dataclasses.make_dataclass(name, fields)


def method_schema(name: str) -> type:
    """The schema of ``method=<name>``: ``name`` and the constructor's options."""
    specs = option_specs(get_method_class(name), NOT_OPTIONS)
    return _schema(f"method_{name}", specs, [("name", str, field(default=name))])


def target_specs(target: Callable[..., Any], given: Sequence[str] = ()) -> list[OptionSpec]:
    """The options of a builder or loader, read from its signature.

    A builder taking ``**options`` forwards them to the class it returns: that class's keyword
    options with a default are added.

    Args:
        target: the function named by a ``_target_``.
        given: its arguments supplied by the harness (not options).
    """
    specs = option_specs(target, given)
    if accepts_any_keyword(target):
        returned = typing.get_type_hints(target).get("return")
        if isinstance(returned, type):
            own = {s.name for s in specs} | set(given)
            specs += [
                s
                for s in option_specs(returned)
                if s.name not in own and s.default is not inspect.Parameter.empty
            ]
    return specs


def group_schema(group: str, option: str, conf_dir: Path = CONF_DIR) -> type:
    """The schema of ``model=<option>`` or ``data=<option>`` from its ``_target_``'s signature.

    Raises:
        ConfigError: if the option's file names no importable ``_target_``.
    """
    target = OmegaConf.load(conf_dir / group / f"{option}.yaml").get("_target_")
    try:
        function = locate(str(target))
    except ImportError as error:
        raise ConfigError(f"{group}._target_: cannot import {target!r} ({error})") from None
    head = [("name", str, field(default=option)), ("_target_", str, field(default=target))]
    if group == "model":
        return _schema(f"model_{option}", target_specs(function, MODEL_INPUTS), head)
    head += [
        ("val_fraction", float, checked(Bounds(ge=0, lt=1), default=0.0)),
        ("split_seed", int, checked(Bounds(ge=0), default=0)),
    ]
    return _schema(f"data_{option}", target_specs(function, DATA_HARNESS_KEYS), head)


# Every schema by class name, for the error of a key that a config file adds (Hydra then reports
# only the schema's name).
SCHEMAS: dict[str, type] = {
    schema.__name__: schema for schema in (RunConfig, TrainConfig, DiagnosticsConfig, MlflowConfig)
}


def schema_keys(name: str) -> list[str] | None:
    """The sorted keys of the schema class called ``name``, or ``None`` if there is none."""
    schema = SCHEMAS.get(name)
    return sorted(f.name for f in dataclasses.fields(schema)) if schema else None


def register_schemas(conf_dir: Path = CONF_DIR) -> None:
    """Store :class:`RunConfig` and every group's schema in Hydra's ConfigStore.

    ``conf/config.yaml`` names them in its defaults list (``run_schema`` first, then
    ``schema/<group>@<group>: ${<group>}``, resolved to the chosen option). Idempotent.
    """
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    groups = {("method", name): method_schema(name) for name in available_methods()}
    for group in ("model", "data"):
        for path in sorted((conf_dir / group).glob("*.yaml")):
            groups[group, path.stem] = group_schema(group, path.stem, conf_dir)
    for (group, option), schema in groups.items():
        store.store(group=f"schema/{group}", name=option, node=schema)
        SCHEMAS[schema.__name__] = schema


def _walk(node: Any, prefix: str) -> Iterator[tuple[str, Any, Any]]:
    """``(key, node, schema)`` for every config node typed by a dataclass schema."""
    if not isinstance(node, DictConfig):
        return
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        yield prefix, node, schema
    for key in node:
        if OmegaConf.is_missing(node, key):
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            yield from _walk(child, f"{prefix}.{key}" if prefix else str(key))


def check_fields(cfg: DictConfig) -> None:
    """Every key of a typed node is a field of its schema, and every value meets its markers.

    ``+key=value`` on the command line adds a key that the schema does not have; it is caught
    here, with the valid keys.

    Raises:
        ConfigError: ``<key>: unknown key; <parent> has only: ...`` or ``<key>: <why>``.
    """
    for prefix, node, schema in _walk(cfg, ""):
        fields = {f.name: f for f in dataclasses.fields(schema)}
        types_ = typing.get_type_hints(schema)  # the fields' types, not their source strings
        values = OmegaConf.to_container(node, resolve=True)
        for key in node:
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in fields:
                raise ConfigError(
                    f"{where}: unknown key; {prefix or 'the top level'} has only: "
                    f"{', '.join(sorted(fields))}"
                )
            markers = fields[key].metadata.get("check", ())
            if markers:
                problem = check_value(where, values[key], types_[key], markers)
                if problem is not None:
                    raise ConfigError(problem)


def check_protocol(cfg: DictConfig) -> None:
    """The cross-field rules of the comparison protocol.

    * a tuning objective is a validation metric (``val_...``), needs ``data.val_fraction > 0``
      and distinct tuning seeds ``>= FIRST_TUNING_SEED`` (evaluation seeds stay below);
    * tuned defaults (``conf/tuned/<method>_<model>_<data>.yaml``) apply only to their own
      method, model and data.

    Raises:
        ConfigError: naming the key.
    """
    objective = cfg.train.objective
    if objective is not None:
        if not objective.startswith("val_"):
            raise ConfigError(
                f"train.objective: must be a validation metric (val_...), got {objective!r}: "
                "tuning on the test set would make the comparison worthless"
            )
        if cfg.data.val_fraction == 0.0:
            raise ConfigError("train.objective: needs a validation split (data.val_fraction > 0)")
        seeds = list(cfg.train.objective_seeds)
        if not seeds or any(s < FIRST_TUNING_SEED for s in seeds):
            raise ConfigError(
                f"train.objective_seeds: must be a non-empty list of tuning seeds >= "
                f"{FIRST_TUNING_SEED} (evaluation seeds stay below), got {seeds!r}"
            )
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"train.objective_seeds: seeds must differ, got {seeds!r}")
    tuned = cfg.tuned
    if tuned is None:
        return
    if not {"method", "model", "data"} <= set(tuned):
        raise ConfigError(
            f"tuned: must be null or a block with method, model and data, got {tuned}"
        )
    triple = (cfg.method.name, cfg.model.name, cfg.data.name)
    if (tuned.method, tuned.model, tuned.data) != triple:
        raise ConfigError(
            f"tuned: {tuned.get('name')} holds the tuned defaults of method={tuned.method} "
            f"model={tuned.model} data={tuned.data}, not of method={triple[0]} "
            f"model={triple[1]} data={triple[2]}; drop the tuned= override (the matching file "
            "is picked automatically) or opt out with ~tuned"
        )


def validate_config(cfg: DictConfig) -> None:
    """Check a composed run config before anything is built; the one check of every key.

    Types and unknown keys were mostly rejected by composition already; this adds what a
    type cannot say, in order: mandatory values (``???``) and interpolations, the method's
    options against the class ``method.name`` selects (which a test may swap), every
    declared bound and choice (:func:`check_fields`), the device, and the protocol
    (:func:`check_protocol`).

    Raises:
        ConfigError: the first problem, one line starting with its key.
    """
    from experiments.validation import resolve_device

    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))
    if missing:
        raise ConfigError(f"{missing[0]}: missing mandatory value (set it with {missing[0]}=...)")
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{getattr(error, 'full_key', None) or 'config'}: {error}") from None
    method = dict(plain["method"])
    try:
        check_method_options(method.pop("name", None), method)
    except MethodConfigError as error:
        raise ConfigError(str(error)) from None
    check_fields(cfg)
    resolve_device(cfg.device)
    check_protocol(cfg)


register_schemas()

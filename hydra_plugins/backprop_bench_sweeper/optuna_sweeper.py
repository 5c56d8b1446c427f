"""``hydra/sweeper=optuna``: its config schema and the thin plugin class Hydra instantiates.

Hydra imports every module of ``hydra_plugins`` on each start, so this one imports neither
Optuna nor the implementation (:class:`experiments.tuning.sweeper.OptunaStudySweeper`) until a
sweep uses it. The keys are those of hydra-optuna-sweeper 1.2/1.3 that conf/ and the tests use.
No ``from __future__ import annotations``: Hydra's plugin scanner runs this module before it is
in ``sys.modules``, where ``dataclasses`` cannot resolve string annotations.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import MISSING, DictConfig


@dataclass
class TPESamplerConfig:
    """``optuna.samplers.TPESampler``; a partial, so each worker can derive its own seed."""

    _target_: str = "optuna.samplers.TPESampler"
    _partial_: bool = True
    seed: int | None = None
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool = False


@dataclass
class RandomSamplerConfig:
    """``optuna.samplers.RandomSampler``."""

    _target_: str = "optuna.samplers.RandomSampler"
    _partial_: bool = True
    seed: int | None = None


@dataclass
class OptunaSweeperConf:
    """``hydra.sweeper`` with ``hydra/sweeper=optuna`` (docs/tuning.md, docs/cluster.md).

    ``storage``: a SQLAlchemy URL shared by every worker of one study (with ``study_name``), or
    null for an in-memory study; ``n_trials`` counts per worker; ``n_jobs`` trials are launched
    at once; ``params`` is the search space (``key: interval(a, b)``, ``tag(log, ...)``,
    ``choice(...)``, ``range(...)``, ``int(interval(...))``).
    """

    _target_: str = "hydra_plugins.backprop_bench_sweeper.optuna_sweeper.OptunaSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])
    sampler: Any = MISSING
    direction: Any = "minimize"
    storage: str | None = None
    study_name: str | None = None
    n_trials: int = 20
    n_jobs: int = 1
    max_failure_rate: float = 0.0
    params: dict[str, str] | None = None


class OptunaSweeper(Sweeper):
    """Delegates to :class:`experiments.tuning.sweeper.OptunaStudySweeper` (same arguments)."""

    def __init__(self, **kwargs: Any) -> None:
        from experiments.tuning.sweeper import OptunaStudySweeper

        self.sweeper = OptunaStudySweeper(**kwargs)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """Hydra's hook: keep the config, instantiate the launcher."""
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        """Run the study (:meth:`OptunaStudySweeper.sweep`)."""
        return self.sweeper.sweep(arguments)


_store = ConfigStore.instance()
_store.store(
    group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="backprop_bench"
)
_store.store(
    group="hydra/sweeper/sampler", name="tpe", node=TPESamplerConfig, provider="backprop_bench"
)
_store.store(
    group="hydra/sweeper/sampler",
    name="random",
    node=RandomSamplerConfig,
    provider="backprop_bench",
)

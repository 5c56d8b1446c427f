"""Hydra plugin ``hydra/sweeper=optuna``: backprop-bench's Optuna sweeper (Optuna 5).

Hydra instantiates plugins only from the ``hydra_plugins`` namespace package; the
implementation lives in :mod:`experiments.tuning`.
"""

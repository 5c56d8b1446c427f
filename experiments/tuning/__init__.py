"""Optuna studies driven by ask-and-tell around Hydra's job function (``experiment=tune``).

:mod:`~experiments.tuning.search_space` turns sweeper overrides into Optuna distributions,
:mod:`~experiments.tuning.storage` opens a study (in memory, or shared through a database by
several workers), :mod:`~experiments.tuning.sweeper` runs the trials through Hydra's launcher.
The Hydra plugin that users select (``hydra/sweeper=optuna``) is the thin
``hydra_plugins.backprop_bench_sweeper`` package: Hydra only loads plugins from that namespace.
"""

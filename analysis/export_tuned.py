"""Turn Optuna tuning studies into tuned defaults: ``conf/tuned/<method>_<model>_<data>.yaml``.

After a study (``python -m experiments.train -m experiment=tune method=M search=M ...``)::

    python -m analysis.export_tuned               # every study in experiment 'tune'
    python -m analysis.export_tuned --method dtp  # one method

For each method x model x data, the newest study in the MLflow experiment is used (its jobs
share a parent run, one per sweep invocation; a study shared by several workers through
``hydra.sweeper.storage`` pools the runs of every worker's parent run tagged with its name). A
trial trains once per tuning seed (``train.objective_seeds``), one MLflow run per seed; its
score is the mean of the study's objective (``train.objective``, the last logged value,
maximised unless its name ends in ``loss``) over those seeds, and only trials whose every seed
finished count (a diverged or killed seed fails the trial). The file holds the best trial's
values of exactly the keys of ``conf/search/<method>.yaml``, rounded to 4 significant digits,
and a ``tuned`` block saying where they came from (logged with every run that uses them).
``conf/config.yaml`` applies the file automatically to every run of that method, model and
data; ``~tuned`` on the command line opts out.
"""

from __future__ import annotations

import argparse
import ast
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from analysis.runs import load_runs
from experiments.tracking import STUDY_TAG, make_client

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# Overrides of a trial that say nothing about the study's setting: where it was tracked, the
# study itself, and the values Optuna sampled.
NOT_SETTINGS = ("mlflow.", "hydra.", "experiment=", "search=", "method=")


def search_space_keys(method: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """Dotted config keys that ``conf/search/<method>.yaml`` lets Optuna tune.

    Raises:
        ValueError: if the method has no search space.
    """
    path = conf_dir / "search" / f"{method}.yaml"
    if not path.is_file():
        raise ValueError(f"method {method!r} has no search space ({path} does not exist)")
    return list(yaml.safe_load(path.read_text()) or {})


def protocol_trials(conf_dir: Path = CONF_DIR) -> int | None:
    """The number of trials the tuning protocol gives every method (``conf/experiment/tune.yaml``).

    Returns:
        ``hydra.sweeper.n_trials`` of the preset, or None if it does not set one.
    """
    preset = yaml.safe_load((conf_dir / "experiment" / "tune.yaml").read_text()) or {}
    return ((preset.get("hydra") or {}).get("sweeper") or {}).get("n_trials")


def parse_param(text: str) -> Any:
    """An MLflow param string back to the Python value it was logged from (``'1e-05'`` -> 1e-05)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def trial_scores(study: pd.DataFrame, objective: str, searched: list[str]) -> pd.DataFrame:
    """One row per trial of a study: its runs (one per tuning seed) grouped by sampled values.

    Args:
        study: the study's job runs (:func:`~analysis.runs.load_runs` rows).
        objective: the metric column the study optimised.
        searched: the searched config keys (the trial's identity within its study).

    Returns:
        Columns ``trial_key`` (the sampled values), ``score`` (mean of ``objective`` over the
        trial's seeds), ``seeds`` (how many finished), ``complete`` (every tuning seed finished
        and logged the objective) and ``run_id`` (the trial's first run, for provenance).
    """
    columns = [f"param.{key}" for key in searched if f"param.{key}" in study]
    expected = study.get("param.train.objective_seeds")
    rows = []
    for key, runs in study.groupby(columns, dropna=False, sort=False) if columns else []:
        finished = runs[(runs["status"] == "FINISHED") & runs[objective].notna()]
        wanted = len(parse_param(expected.loc[runs.index[0]])) if expected is not None else 1
        rows.append(
            {
                "trial_key": key,
                "score": finished[objective].mean() if len(finished) else float("nan"),
                "seeds": len(finished),
                # Identical sampled values in two trials (possible with choice()) pool their runs.
                "complete": len(finished) == len(runs) and len(runs) >= wanted,
                "run_id": runs.sort_values("seed")["run_id"].iloc[0],
            }
        )
    return pd.DataFrame(rows, columns=["trial_key", "score", "seeds", "complete", "run_id"])


def best_trial(
    study: pd.DataFrame, direction: str | None = None, searched: list[str] | None = None
) -> tuple[pd.Series, str, str, float, int]:
    """The best complete trial of one study (a :func:`~analysis.runs.load_runs` table).

    Args:
        study: the study's job runs; the column ``param.train.objective`` names the objective.
        direction: ``maximize`` or ``minimize``; None infers it from the objective's name.
        searched: the searched keys that identify a trial (default: the method's search space).

    Returns:
        ``(a run of the best trial, objective, direction, its mean score over the tuning seeds,
        number of trials in the study)``.

    Raises:
        ValueError: if the study has no objective, or no trial finished on every seed.
    """
    objectives = set(study.get("param.train.objective", pd.Series(dtype=str)).dropna())
    objectives.discard("None")
    if len(objectives) != 1:
        raise ValueError(f"a study needs exactly one train.objective, found {sorted(objectives)}")
    objective = objectives.pop()
    direction = direction or ("minimize" if objective.endswith("loss") else "maximize")
    if objective not in study:
        raise ValueError(f"no finished trial logged {objective}")
    if searched is None:
        searched = search_space_keys(study["method"].iloc[0])
    trials = trial_scores(study, objective, searched)
    complete = trials[trials["complete"]]
    if complete.empty:
        raise ValueError(f"no trial finished every tuning seed and logged {objective}")
    index = complete["score"].idxmax() if direction == "maximize" else complete["score"].idxmin()
    best = complete.loc[index]
    row = study[study["run_id"] == best["run_id"]].iloc[0]
    return row, objective, direction, float(best["score"]), len(trials)


def study_overrides(tracking_uri: str, run_id: str, searched: list[str]) -> list[str]:
    """The command-line overrides that set up a trial's study (e.g. ``model.cell=gru``).

    Read from the run's ``config/overrides.yaml`` artifact, without the tracking, Hydra and
    study overrides and the searched keys: what a rerun of the study needs besides
    ``experiment=tune method=M search=M``.

    Raises:
        ValueError: if the run has no readable ``config/overrides.yaml``.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one tiny file
    client = make_client(tracking_uri)
    try:
        path = client.download_artifacts(run_id, "config/overrides.yaml")
        overrides = yaml.safe_load(Path(path).read_text()) or []
    except Exception as error:  # MLflow raises several types for a missing artifact
        raise ValueError(f"run {run_id}: cannot read config/overrides.yaml ({error})") from None
    return [
        o
        for o in overrides
        if not o.startswith(NOT_SETTINGS) and o.split("=", 1)[0].lstrip("+~") not in searched
    ]


def _nest(dotted: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in dotted.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def tuned_config(
    study: pd.DataFrame,
    direction: str | None = None,
    overrides_of: Callable[[str, list[str]], list[str]] | None = None,
) -> dict[str, Any]:
    """The tuned-defaults config (``@package _global_``) of one study's best trial.

    Args:
        study: the study's job runs (:func:`~analysis.runs.load_runs` rows).
        direction: as in :func:`best_trial`.
        overrides_of: ``(best run id, searched keys) -> the study's setting``, recorded as
            provenance (:func:`study_overrides` with the tracking URI bound); None records none.

    Returns:
        ``{"tuned": provenance, <search-space keys as a nested config>}``.

    Raises:
        ValueError: as :func:`best_trial` and :func:`search_space_keys`, or if the best trial
            lacks a searched key.
    """
    method = study["method"].iloc[0]
    searched = search_space_keys(method)
    trial, objective, direction, score, trials = best_trial(study, direction, searched)
    model, data = trial["model"], trial["data"]
    values = {}
    for key in searched:
        column = f"param.{key}"
        if column not in trial or pd.isna(trial[column]):
            raise ValueError(f"the best trial ({trial['run_id']}) did not log {key}")
        # Exact, not rounded: rounded values are a different configuration, and the study's
        # best value would no longer be what they give.
        values[key] = parse_param(trial[column])
    seeds = trial.get("param.train.objective_seeds")
    provenance = {
        "name": f"{method}_{model}_{data}",
        "method": method,
        "model": model,
        "data": data,
        "overrides": overrides_of(trial["run_id"], searched) if overrides_of else [],
        "val_fraction": parse_param(trial["param.data.val_fraction"]),
        "epochs": parse_param(trial["param.train.epochs"]),
        "seeds": parse_param(seeds) if isinstance(seeds, str) else [int(trial["seed"])],
        "objective": objective,
        "direction": direction,
        "best_value": score,
        "trials": trials,
        "study": trial["sweep_dir"],
        "best_run_id": trial["run_id"],
    }
    return {"tuned": provenance, **_nest(values)}


def write_tuned(config: dict[str, Any], out_dir: Path) -> Path:
    """Write ``config`` to ``<out_dir>/<method>_<model>_<data>.yaml``, headed by its protocol."""
    info = config["tuned"]
    method, model, data = info["method"], info["model"], info["data"]
    setting = [*info["overrides"], f"hydra.sweeper.n_trials={info['trials']}"]
    seeds = ", ".join(map(str, info["seeds"]))
    protocol = protocol_trials()
    budget = (
        "the protocol's budget for every method, conf/experiment/tune.yaml"
        if info["trials"] == protocol
        else f"NOT the protocol's {protocol} of conf/experiment/tune.yaml: compare with care"
    )
    header = (
        "# @package _global_\n"
        f"# Tuned defaults of method={method} on model={model} and data={data}, applied\n"
        "# automatically to every run of that triple (`~tuned` opts out; other datasets get\n"
        f"# the method's own defaults). Protocol: the best of {info['trials']} Optuna trials\n"
        f"# ({budget}), each scored by the mean\n"
        f"# {info['objective']} after {info['epochs']} epoch{'s' * (info['epochs'] != 1)} over "
        f"the tuning seeds {seeds}\n"
        f"# (never evaluation seeds), on a {info['val_fraction']:.0%} validation split of the "
        f"training set.\n"
        "# Redo the study, then export it here:\n"
        f"#   python -m experiments.train -m experiment=tune method={method} search={method} \\\n"
        f"#     {' '.join(setting)}\n"
        f"#   python -m analysis.export_tuned --method {method}\n"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{info['name']}.yaml"
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def shared_study_sweeps(tracking_uri: str, sweep_run: str) -> set[str]:
    """The parent runs of every worker of ``sweep_run``'s Optuna study.

    A study shared through ``hydra.sweeper.storage`` has one parent run per worker, each tagged
    with the study's name (:data:`experiments.tracking.STUDY_TAG`); an in-memory study is its one
    sweep.

    Returns:
        ``{sweep_run}``, or every parent run in its experiment tagged with the same study.
    """
    client = make_client(tracking_uri)
    parent = client.get_run(sweep_run)
    name = parent.data.tags.get(STUDY_TAG)
    if not name:
        return {sweep_run}
    escaped = name.replace("'", "\\'")
    runs = client.search_runs(
        [parent.info.experiment_id],
        f"tags.{STUDY_TAG} = '{escaped}' and tags.role = 'sweep'",
        max_results=10_000,
    )
    return {sweep_run, *(run.info.run_id for run in runs)}


def export(
    tracking_uri: str,
    experiment: str,
    out_dir: Path,
    method: str | None = None,
    direction: str | None = None,
) -> list[Path]:
    """Write the tuned defaults of the newest study of every (or one) method x model x data.

    Raises:
        ValueError: if the experiment holds no study (of ``method``), or as :func:`tuned_config`.
    """
    runs = load_runs(tracking_uri, experiment)
    if method is not None and not runs.empty:
        runs = runs[runs["method"] == method]
    runs = runs[runs["sweep_run"].notna()] if not runs.empty else runs
    if runs.empty:
        which = f" of method {method!r}" if method else ""
        raise ValueError(f"no tuning study{which} in MLflow experiment {experiment!r}")
    overrides_of = functools.partial(study_overrides, tracking_uri)
    written = []
    for _, triple in runs.groupby(["method", "model", "data"], sort=True):
        newest = triple["sweep_run"].iloc[0]  # load_runs lists the newest run first
        workers = shared_study_sweeps(tracking_uri, newest)
        study = triple[triple["sweep_run"].isin(workers)]
        written.append(write_tuned(tuned_config(study, direction, overrides_of), out_dir))
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="tune", help="MLflow experiment of the studies")
    parser.add_argument("--method", help="only this method (default: every method found)")
    parser.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    )
    parser.add_argument("--out", default=str(CONF_DIR / "tuned"), help="default: conf/tuned")
    parser.add_argument(
        "--direction",
        choices=("maximize", "minimize"),
        help="default: minimize objectives named *loss, else maximize",
    )
    args = parser.parse_args(argv)
    try:
        written = export(
            args.tracking_uri, args.experiment, Path(args.out), args.method, args.direction
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for path in written:
        info = yaml.safe_load(path.read_text())["tuned"]
        print(f"{path}: {info['objective']} {info['best_value']} ({info['trials']} trials)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Tuning studies with Optuna 5 (experiments/tuning): search spaces, shared storages, dashboard.

Several workers running the same command with ``hydra.sweeper.storage=<database>
hydra.sweeper.study_name=<name>`` share one study (docs/cluster.md, "Distributed tuning").
"""

import functools
import json
import math
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from experiments.errors import ConfigError, NoCompletedTrial
from experiments.tracking import get_or_create_experiment, make_client
from experiments.tuning import storage as storage_module
from experiments.tuning.search_space import parse_search_space, trial_overrides
from experiments.tuning.storage import open_study
from experiments.tuning.sweeper import OptunaStudySweeper
from tests.services import free_port, integration
from tests.test_cli import subprocess_env

REPO_ROOT = Path(__file__).resolve().parents[1]
SEARCH = REPO_ROOT / "conf" / "search"


def test_every_search_space_file_parses_to_bounded_distributions():
    for path in sorted(SEARCH.glob("*.yaml")):
        params = yaml.safe_load(path.read_text())
        space, fixed = parse_search_space([f"{k}={v}" for k, v in params.items()])
        assert list(space) == list(params) and fixed == {}, path.name
        for distribution in space.values():
            assert isinstance(distribution, FloatDistribution) and distribution.low > 0
    space, _ = parse_search_space(
        [f"{k}={v}" for k, v in yaml.safe_load((SEARCH / "dtp.yaml").read_text()).items()]
    )
    assert space["method.target_stepsize"] == FloatDistribution(1e-2, 1.0, log=True)
    assert space["method.forward_optimizer.lr"] == FloatDistribution(1e-4, 1e-2, log=True)


def test_each_sweep_syntax_maps_to_its_optuna_distribution():
    space, fixed = parse_search_space(
        [
            "a=interval(0.5, 2)",
            "b=int(interval(1, 10))",
            "c=tag(log, int(interval(1, 64)))",
            "d=choice(relu, tanh)",
            "e=range(2, 10, 4)",
            "f=range(0.0, 1.0, 0.25)",
            "data=digits",
            "+g=3",
        ]
    )
    assert space == {
        "a": FloatDistribution(0.5, 2.0),
        "b": IntDistribution(1, 10),
        "c": IntDistribution(1, 64, log=True),
        "d": CategoricalDistribution(["relu", "tanh"]),
        "e": IntDistribution(2, 10, step=4),  # stop inclusive, as hydra-optuna-sweeper read it
        "f": FloatDistribution(0.0, 1.0, step=0.25),
    }
    assert fixed == {"data": "data=digits", "+g": "+g=3"}


def test_the_command_line_replaces_a_preset_search_space_key():
    preset = ["method.optimizer.lr=tag(log, interval(1e-4, 1e-2))", "method.mu=interval(0, 1)"]
    space, fixed = parse_search_space(
        [*preset, "method.optimizer.lr=0.01", "method.mu=choice(1,2)"]
    )
    assert space == {"method.mu": CategoricalDistribution([1, 2])}
    assert fixed == {"method.optimizer.lr": "method.optimizer.lr=0.01"}
    # A sampled float goes back to Hydra at full precision, before the fixed overrides.
    assert trial_overrides({"method.mu": 0.1 + 0.2}, fixed) == [
        "method.mu=0.30000000000000004",
        "method.optimizer.lr=0.01",
    ]


def test_a_sweep_optuna_cannot_sample_is_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"^method: Optuna cannot sample 'method=glob\(\*\)'"):
        parse_search_space(["method=glob(*)"])


def test_a_shared_storage_needs_a_study_name(tmp_path):
    sampler = optuna.samplers.RandomSampler(seed=0)
    with pytest.raises(ConfigError, match="hydra.sweeper.study_name is not"):
        open_study(f"sqlite:///{tmp_path / 's.db'}", None, sampler, ["maximize"])


def test_an_unreachable_storage_is_one_line_with_the_password_hidden():
    url = "postgresql://user:secret@127.0.0.1:1/db"  # port 1: refused at once
    with pytest.raises(ConfigError) as error:
        open_study(url, "s", optuna.samplers.RandomSampler(), ["maximize"], attempts=1)
    message = str(error.value)
    assert message.startswith("hydra.sweeper.storage: cannot open postgresql://user:***@127.0.0.1")
    assert "secret" not in message and "\n" not in message


def test_opening_retries_while_another_worker_creates_the_schema(tmp_path, monkeypatch):
    """The second of two workers creating the tables at once fails on a duplicate key."""
    calls = []

    class Racing(optuna.storages.RDBStorage):
        def __init__(self, url, *args, **kwargs):
            calls.append(url)
            if len(calls) == 1:
                raise sqlalchemy.exc.IntegrityError(
                    "CREATE TABLE studies", {}, Exception("duplicate key value violates unique")
                )
            super().__init__(url, *args, **kwargs)

    monkeypatch.setattr(storage_module.optuna.storages, "RDBStorage", Racing)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = open_study(url, "s", optuna.samplers.RandomSampler(), ["maximize"], backoff_s=0.01)
    assert len(calls) == 2 and study.study_name == "s"
    # Not a race: reported at once, without retrying.
    calls.clear()

    def broken(url, *args, **kwargs):
        calls.append(url)
        raise ValueError("no such driver")

    monkeypatch.setattr(storage_module.optuna.storages, "RDBStorage", broken)
    with pytest.raises(ConfigError, match="ValueError: no such driver"):
        open_study(url, "s", optuna.samplers.RandomSampler(), ["maximize"], backoff_s=0.01)
    assert len(calls) == 1


# One process of a race: wait for the shared start time, then open the study and add a trial.
OPEN_AT_ONCE = """
import sys, time
import optuna
from experiments.tuning.storage import open_study
url, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
study = open_study(url, "race", optuna.samplers.RandomSampler(), ["maximize"])
trial = study.ask()
study.tell(trial, trial.suggest_float("x", 0, 1))
"""


def open_at_once(url: str, workers: int, tracking_uri: str) -> None:
    """``workers`` processes open the same new study at the same instant; all must succeed."""
    start = time.time() + 10  # every process has imported Optuna by then
    env = subprocess_env(tracking_uri)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AT_ONCE, url, str(start)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(workers)
    ]
    outputs = [p.communicate(timeout=180)[0] for p in processes]
    assert [p.returncode for p in processes] == [0] * workers, "\n".join(outputs)
    [summary] = optuna.get_all_study_summaries(url)
    assert summary.study_name == "race" and summary.n_trials == workers


def tune_command(storage: str, n_trials: int, sweep_dir: Path, experiment: str) -> list[str]:
    """The user's distributed-tuning command, on a tiny job (digits, 1 epoch, one tuning seed)."""
    return [
        sys.executable,
        "-m",
        "experiments.train",
        "-m",
        "experiment=tune",
        "method=backprop",
        "search=backprop",
        "data=digits",
        "train.epochs=1",
        "model.hidden_sizes=[16]",
        "train.objective_seeds=[1000]",
        f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=shared",
        f"mlflow.experiment_name={experiment}",
        # Both workers write into one sweep folder, as two workers started in the same second
        # would: each trial's folder is named after its study-wide number.
        f"hydra.sweep.dir={sweep_dir}",
    ]


def run_workers(tmp_path, tracking_uri, storage, workers, n_trials, experiment) -> float:
    """Start ``workers`` copies of the same command at once; return the wall time in seconds."""
    # MLflow's set_experiment races when several processes create a new name at once.
    get_or_create_experiment(make_client(tracking_uri), experiment)
    command = tune_command(storage, n_trials, tmp_path / "sweep", experiment)
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            command,
            cwd=tmp_path,
            env=subprocess_env(tracking_uri),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(workers)
    ]
    outputs = [p.communicate(timeout=900)[0] for p in processes]
    elapsed = time.monotonic() - started
    assert [p.returncode for p in processes] == [0] * workers, "\n\n".join(outputs)
    for output in outputs:  # every worker counts its own trials
        assert f"job {n_trials} of {n_trials} (sweep " in output
    return elapsed


def check_shared_study(storage, tracking_uri, experiment, expected) -> list:
    """One study of ``expected`` COMPLETE trials, each matching its MLflow run's objective."""
    [summary] = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    trials = study.get_trials()
    assert summary.study_name == "shared" and len(trials) == expected
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    assert sorted(t.number for t in trials) == list(range(expected))
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    # Each worker seeds its sampler after its first trial's number: no duplicated start-up draws.
    assert len({t.params["method.optimizer.lr"] for t in trials}) == expected
    client = make_client(tracking_uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id],
        "tags.role = 'job'",
        max_results=1000,
    )
    by_folder = {r.data.tags["hydra_output_dir"]: r for r in runs}
    assert len(runs) == expected and len(by_folder) == expected
    for trial in trials:
        run = by_folder[trial.user_attrs["hydra_output_dir"]]
        assert Path(trial.user_attrs["hydra_output_dir"]).name == str(trial.number)
        assert run.info.status == "FINISHED"
        assert math.isclose(trial.value, run.data.metrics["val_accuracy"], rel_tol=1e-6)
        assert math.isclose(
            trial.params["method.optimizer.lr"],
            float(run.data.params["method.optimizer.lr"]),
            rel_tol=1e-9,
        )
    return trials


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(tmp_path, tracking_uri):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    run_workers(tmp_path, tracking_uri, storage, workers=2, n_trials=3, experiment="shared_sqlite")
    trials = check_shared_study(storage, tracking_uri, "shared_sqlite", expected=6)
    # The tuned defaults come from the whole study, across both workers' parent runs.
    from analysis.export_tuned import export

    [path] = export(tracking_uri, "shared_sqlite", tmp_path / "tuned")
    info = yaml.safe_load(path.read_text())
    best = max(trials, key=lambda t: t.value)
    assert info["tuned"]["trials"] == 6
    assert info["tuned"]["best_value"] == pytest.approx(best.value, rel=1e-9)
    assert info["method"]["optimizer"]["lr"] == pytest.approx(
        best.params["method.optimizer.lr"], rel=1e-9
    )


@pytest.mark.slow
def test_processes_opening_a_new_sqlite_study_at_once_all_succeed(tmp_path, tracking_uri):
    open_at_once(f"sqlite:///{tmp_path / 'optuna.db'}", 4, tracking_uri)


@integration
def test_processes_opening_a_new_postgresql_study_at_once_all_succeed(fresh_database, tracking_uri):
    # On an empty database every process races to create Optuna's tables.
    open_at_once(fresh_database, 4, tracking_uri)


@integration
def test_two_workers_times_ten_trials_share_one_postgresql_study(
    tmp_path, tracking_uri, fresh_database
):
    elapsed = run_workers(
        tmp_path, tracking_uri, fresh_database, workers=2, n_trials=10, experiment="shared_pg"
    )
    check_shared_study(fresh_database, tracking_uri, "shared_pg", expected=20)
    print(f"2 workers x 10 trials on PostgreSQL: {elapsed:.0f} s")


# The virtual environment's own script first: its bin/ need not be on PATH.
DASHBOARD = next(
    (
        str(path)
        for path in (
            Path(sys.executable).parent / "optuna-dashboard",
            shutil.which("optuna-dashboard"),
        )
        if path and Path(path).is_file()
    ),
    None,
)


@pytest.mark.slow
@pytest.mark.skipif(DASHBOARD is None, reason="optuna-dashboard absent: pip install -e '.[server]'")
def test_optuna_dashboard_serves_the_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="watched", direction="maximize")
    for value in (0.25, 0.75):
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        study.tell(trial, value)
    port = free_port()
    dashboard = subprocess.Popen(
        [DASHBOARD, storage, "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        studies = None
        deadline = time.monotonic() + 120
        while studies is None and time.monotonic() < deadline:
            assert dashboard.poll() is None, dashboard.communicate()[0]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.loads(r.read())["study_summaries"]
            except OSError:
                time.sleep(0.5)
        assert studies is not None, "optuna-dashboard did not answer within 120 s"
        [summary] = studies
        assert summary["study_name"] == "watched"
        url = f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}"
        with urllib.request.urlopen(url, timeout=30) as response:
            detail = json.loads(response.read())
        assert [t["values"] for t in detail["trials"]] == [[0.25], [0.75]]
        assert {t["state"] for t in detail["trials"]} == {"Complete"}
        assert [p["name"] for t in detail["trials"] for p in t["params"]] == ["lr", "lr"]
        assert detail["best_trials"][0]["values"] == [0.75]
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)


class FakeLauncher:
    """Hydra's launcher interface: records each batch, returns the given results in order."""

    def __init__(self, results):
        self.results, self.batches = list(results), []

    def launch(self, overrides, initial_job_idx):
        self.batches.append((initial_job_idx, [list(o) for o in overrides]))
        returns = []
        for _ in overrides:
            result = self.results.pop(0)
            failed = isinstance(result, Exception)
            status = JobStatus.FAILED if failed else JobStatus.COMPLETED
            returns.append(JobReturn(status=status, _return_value=result))
        return returns


def fake_sweeper(results, n_trials, n_jobs=1, max_failure_rate=1.0, tmp_path=None):
    sweeper = OptunaStudySweeper(
        sampler=functools.partial(optuna.samplers.RandomSampler, seed=0),
        direction="maximize",
        storage=None,
        study_name=None,
        n_trials=n_trials,
        n_jobs=n_jobs,
        max_failure_rate=max_failure_rate,
        params=OmegaConf.create({"method.optimizer.lr": "tag(log, interval(1e-4, 1e-2))"}),
    )
    sweep = {"dir": str(tmp_path), "subdir": "${hydra.job.num}"}
    sweeper.config = OmegaConf.create({"hydra": {"sweep": sweep}, "mlflow": {}})
    sweeper.launcher = FakeLauncher(results)
    return sweeper


def test_a_failed_or_non_finite_trial_is_told_failed_and_the_study_goes_on(tmp_path, caplog):
    results = [0.5, RuntimeError("seed 1000 diverged"), float("nan"), "text", 0.75]
    sweeper = fake_sweeper(results, n_trials=5, n_jobs=2, tmp_path=tmp_path)
    sweeper.sweep(["data=digits"])
    batches = sweeper.launcher.batches
    assert [(start, len(jobs)) for start, jobs in batches] == [(0, 2), (2, 2), (4, 1)]
    number = 0
    for _, jobs in batches:  # sampled value, fixed overrides, the trial's own folder
        for job in jobs:
            assert job[0].startswith("method.optimizer.lr=") and 1e-4 <= float(job[0][20:]) <= 1e-2
            assert job[1:] == ["data=digits", f"hydra.sweep.subdir={number}"]
            number += 1
    saved = OmegaConf.load(tmp_path / "optimization_results.yaml")
    assert saved.trials == {"COMPLETE": 2, "FAIL": 3}
    assert saved.best_value == 0.75 and saved.best_trial == 4
    assert "trial 1 failed: seed 1000 diverged" in caplog.text


def test_a_study_whose_every_trial_failed_raises_no_completed_trial(tmp_path):
    sweeper = fake_sweeper([RuntimeError("diverged")] * 2, n_trials=2, tmp_path=tmp_path)
    with pytest.raises(NoCompletedTrial, match="^the study completed no trial"):
        sweeper.sweep([])


def test_more_failures_than_max_failure_rate_stop_with_the_job_s_exception(tmp_path):
    sweeper = fake_sweeper(
        [0.5, ValueError("bad job"), 0.6], n_trials=3, n_jobs=2, max_failure_rate=0.0
    )
    sweeper.config.hydra.sweep.dir = str(tmp_path)
    with pytest.raises(ValueError, match="bad job"):
        sweeper.sweep([])
    assert len(sweeper.launcher.batches) == 1  # the second batch never started


def test_bad_sweeper_numbers_are_one_line_naming_the_key(tmp_path):
    sweeper = fake_sweeper([], n_trials=2, max_failure_rate=2.0, tmp_path=tmp_path)
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.max_failure_rate: 2.0 not in \[0, 1\]$"):
        sweeper.sweep([])
    sweeper = fake_sweeper([], n_trials=0, tmp_path=tmp_path)
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.n_trials: 0 is not >= 1$"):
        sweeper.sweep([])

"""A shared Optuna study (``hydra.sweeper.storage=<database>``) is refused in one line while the
installed Optuna cannot open one (docs/cluster.md, "Distributed tuning")."""

from importlib.metadata import version

import pytest

from experiments.train import refuse_shared_study

OLD_OPTUNA = int(version("optuna").split(".")[0]) < 3 and int(version("sqlalchemy")[0]) >= 2


@pytest.mark.skipif(not OLD_OPTUNA, reason="only Optuna < 3 with SQLAlchemy 2 is refused")
def test_the_pinned_optuna_really_cannot_open_a_database_storage(tmp_path):
    import optuna

    with pytest.raises(AssertionError):  # its schema-version check under SQLAlchemy 2
        optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="s")


@pytest.mark.skipif(not OLD_OPTUNA, reason="only Optuna < 3 with SQLAlchemy 2 is refused")
def test_a_database_storage_is_one_line_naming_the_key(capsys):
    with pytest.raises(SystemExit) as stop:
        refuse_shared_study(["-m", "experiment=tune", "hydra.sweeper.storage=postgresql://h/db"])
    assert stop.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: hydra.sweeper.storage: Optuna 2.") and "docs/cluster.md" in line


def test_no_storage_or_null_storage_is_left_alone(capsys):
    refuse_shared_study(["-m", "experiment=tune"])
    refuse_shared_study(["hydra.sweeper.storage=null"])
    assert capsys.readouterr().err == ""

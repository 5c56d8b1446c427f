# backprop-bench: every target installs what it needs into .venv first (Python 3.11 is enough).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of this version is on local disk on the project's machines; on a CUDA machine pip
# takes the CUDA build of the same version.
TORCH_VERSION ?= 2.13.0
ARGS ?=
METHOD ?=
PYTEST_ARGS ?=

.PHONY: install reproduce snapshot train tune tune-compare bench test lint format data ui clean \
	server server-stop slurm slurm-stop dashboard

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	@# hydra-optuna-sweeper (older checkouts) pins Optuna < 3 and registers its own
	@# hydra/sweeper=optuna: remove it from an existing .venv (a no-op when absent).
	$(BIN)/python -m pip uninstall --quiet --yes hydra-optuna-sweeper 2>/dev/null || true
	$(BIN)/python -m pip install --quiet -e '.[test,server,slurm]'
	touch $@

install: $(BIN)/.installed ## Create .venv with torch, the project and its test tools

# The three studies the project exists for, each from runs it makes itself, then its report in
# reports/<name>/ (also logged to the sweep's parent run in MLflow).
STUDIES := compare vanishing_depth rnn_horizon

reproduce: install ## The main job: comparison, vanishing gradients over depth, recurrent horizon
	@for study in $(STUDIES); do \
		echo "== $$study: sweep"; \
		$(BIN)/python -m experiments.train -m experiment=$$study $(ARGS) || exit $$?; \
		echo "== $$study: report"; \
		$(BIN)/python -m analysis.report $$study || exit $$?; \
	done

# Then the tables between <!-- generated: FILE --> markers in README.md and docs/ are pasted
# from those files (python -m analysis.docs; tests/test_docs.py fails on a hand-edited table).
snapshot: install ## Copy the reports of `make reproduce` into docs/ and refresh the tables the docs show
	@for study in $(STUDIES); do \
		test -d reports/$$study || { echo "no reports/$$study: run make reproduce first" >&2; exit 2; }; \
		mkdir -p docs/$$study && cp reports/$$study/*.md reports/$$study/*.csv reports/$$study/*.png docs/$$study/; \
	done
	$(BIN)/python -m analysis.docs

train: install ## One training job (ARGS="method=dtp data=digits ..." adds Hydra overrides)
	$(BIN)/python -m experiments.train $(ARGS)

tune: install ## Optuna study of METHOD=<name> on a validation split, then conf/tuned/ from its best trial
	@test -n "$(METHOD)" || { echo "usage: make tune METHOD=dtp [ARGS='data=digits ...']" >&2; exit 2; }
	$(BIN)/python -m experiments.train -m experiment=tune method=$(METHOD) search=$(METHOD) $(ARGS)
	$(BIN)/python -m analysis.export_tuned --method $(METHOD)

# Every method of the comparison, under the same protocol (conf/experiment/tune.yaml).
COMPARED := backprop dtp drl hsic dni cdni altmin fa dfa

tune-compare: install ## Re-tune every compared method on MNIST-1D (equal budgets), then conf/tuned/
	@for method in $(COMPARED); do \
		$(BIN)/python -m experiments.train -m experiment=tune method=$$method search=$$method $(ARGS) || exit $$?; \
	done
	$(BIN)/python -m analysis.export_tuned

bench: install ## Cost ratios: harness vs bare loop, each method vs backprop (ARGS="--quick", "--only a,b")
	$(BIN)/python -m experiments.bench $(ARGS)

test: install ## The whole test suite
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

data: ## Real Fashion-MNIST from Debian's dataset-fashion-mnist (needs root)
	apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist

# MLflow 3.17's UI opens on its GenAI view; the query below (or its "Model training" toggle,
# remembered by the browser) shows the runs tables (docs/mlflow-ui.md).
ui: install ## Browse every run in the MLflow UI at http://127.0.0.1:5000
	@echo "open http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (or click Model training once)"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --workers 1

# A tracking server for jobs on other machines (docs/cluster.md): a throwaway PostgreSQL in
# .services/postgres and `mlflow server` on 127.0.0.1:$(MLFLOW_PORT), artifacts proxied into
# .services/mlflow/artifacts. Jobs then need only MLFLOW_TRACKING_URI=http://127.0.0.1:5000.
MLFLOW_PORT ?= 5000

server: install ## MLflow tracking server on PostgreSQL at http://127.0.0.1:$(MLFLOW_PORT) (needs postgresql)
	scripts/postgres.sh start
	PYTHON=$(BIN)/python MLFLOW_PORT=$(MLFLOW_PORT) scripts/mlflow_server.sh start

server-stop: ## Stop the tracking server and its PostgreSQL (their data stays in .services/)
	MLFLOW_PORT=$(MLFLOW_PORT) scripts/mlflow_server.sh stop
	scripts/postgres.sh stop

# A study shared by several tuning workers (hydra.sweeper.storage=...), live in the browser.
STORAGE ?=
DASHBOARD_PORT ?= 8080

dashboard: install ## optuna-dashboard of STORAGE=<study database URL> at http://127.0.0.1:$(DASHBOARD_PORT)
	@test -n "$(STORAGE)" || { echo "usage: make dashboard STORAGE=postgresql://user@host:port/db (or sqlite:////abs/path.db)" >&2; exit 2; }
	$(BIN)/optuna-dashboard '$(STORAGE)' --host 127.0.0.1 --port $(DASHBOARD_PORT)

slurm: ## Single-node SLURM cluster on this machine (root; then eval "$$(scripts/slurm.sh env)")
	scripts/slurm.sh start

slurm-stop: ## Stop that cluster's daemons
	scripts/slurm.sh stop

clean: ## Remove the virtual environment and caches (keeps mlflow.db and outputs)
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

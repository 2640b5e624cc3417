# Two entry points matter: `make run` (the whole job on the embedded synthetic data) and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
UV := .venv/bin/uv
# Telemetry off everywhere (DESIGN.md, "Local defaults").
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export PYTHONUNBUFFERED := 1

.PHONY: install run test test-dags-slow bench quality lock clean

.venv/installed: pyproject.toml requirements.lock
	test -x $(PY) || python3.11 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check uv==0.13.9
	# uv resolves against the lock as constraints, so a fresh machine gets the same versions.
	$(UV) pip install --python $(PY) -q -c requirements.lock -e '.[test]'
	touch $@

install: .venv/installed

run: install
	.venv/bin/mmguard run

test: install
	$(PY) -m pytest tests

# The expensive DAG runs: the drift -> retrain loop end to end and the killed-and-retried train task.
test-dags-slow: install
	$(PY) -m pytest tests/dags -m slow -p no:cacheprovider --timeout=3600

bench: install
	$(PY) -m pytest tests/bench -s -p no:cacheprovider --timeout=3600

# The quality bar of the embedded default: trains both tasks and the baselines (~20 min on CPU).
quality: install
	$(PY) -m pytest tests/quality -s -p no:cacheprovider --timeout=3600

# The production stack on this machine (Postgres, S3, MLflow server, Airflow; see pipeline/stack)
# and its test tier, which brings the stack up in a throwaway clone and runs the retrain DAG.
.PHONY: stack-install test-stack
.venv/stack-installed: .venv/installed
	$(UV) pip install --python $(PY) -q -c requirements.lock -e '.[test,stack]'
	touch $@

stack-install: .venv/stack-installed

test-stack: .venv/stack-installed
	$(PY) -m pytest tests/stack -m stack -p no:cacheprovider --timeout=3600

lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock

clean:
	rm -rf artifacts mlflow.db mlruns mlartifacts airflow_home  # .stack/ holds the stack's data: `mmguard stack down` first, then remove it by hand

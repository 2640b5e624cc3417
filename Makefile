# Two entry points matter: `make run` (the whole job on the embedded synthetic data) and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
UV := .venv/bin/uv
# Telemetry off everywhere: no tool phones home from a build, a test or a run.
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export PYTHONUNBUFFERED := 1

.PHONY: install run test test-slow bench quality lock clean

.venv/installed: pyproject.toml requirements.lock
	test -x $(PY) || python3.11 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check uv==0.13.9
	# uv resolves against the lock as constraints, so a fresh machine gets the same versions.
	$(UV) pip install --python $(PY) -q -c requirements.lock -e '.[test]'
	touch $@

install: .venv/installed

run: install
	.venv/bin/mmguard run

# Test tiers (README, "Tests and benchmarks"). `test` is the fast tier CI and the README run:
# everything not marked `slow`, seconds a test, ≤ 6 min on 2 cores. A test that needs minutes
# (a whole `dvc repro`, a `dag.test()` run, a real server, torchrun) is marked
# `@pytest.mark.slow` and runs in `test-slow`. Whole heavy folders (tests/bench, tests/quality,
# tests/stack, tests/hostile) are left out of both by pyproject's norecursedirs and get their
# own target. `.ci/run` runs every tier that fits CI's 90 minutes.
test: install
	$(PY) -m pytest tests -m "not slow" --durations=25

test-slow: install
	$(PY) -m pytest tests -m slow --durations=25

bench: install
	$(PY) -m pytest tests/bench -s -p no:cacheprovider --timeout=3600

# The quality bar of the embedded default: trains both tasks and the baselines (~20 min on CPU).
quality: install
	$(PY) -m pytest tests/quality -s -p no:cacheprovider --timeout=3600

lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock

clean:
	rm -rf artifacts mlflow.db mlruns mlartifacts airflow_home

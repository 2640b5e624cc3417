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

.PHONY: install run test test-slow test-hostile browser label-studio bench bench-gpu gpu-wheels quality drift-power lock clean

.venv/installed: pyproject.toml requirements.lock
	test -x $(PY) || python3.11 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check uv==0.13.9
	# uv resolves against the lock as constraints, so a fresh machine gets the same versions.
	# --compile-bytecode: every stage is its own process importing torch, transformers, open_clip
	# and mlflow; without .pyc files (none get written where PYTHONDONTWRITEBYTECODE is set, as
	# on the machines this was measured on) each import compiles them again, seconds a process.
	$(UV) pip install --python $(PY) -q --compile-bytecode -c requirements.lock -e '.[test]'
	touch $@

# What GX's Data Docs load from CDNs (bootstrap, jquery, bootstrap-table, font-awesome, vega...):
# pinned npm tarballs, integrity-checked, fetched once with the machine's npm into the venv
# (pipeline/offline_html.py); validate copies them into the site, so reports render offline.
.venv/report-assets: .venv/installed pipeline/offline_html.py
	command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq npm)
	$(PY) -m pipeline.offline_html fetch
	touch $@

install: .venv/installed .venv/report-assets

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

# test-slow holds the browser tests (tests/browser/): Debian's Chromium and ChromeDriver open the
# Data Docs and the drift report from file:// with the network shut. `make test` needs neither.
browser:
	test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

# Label Studio for the review loop (README, "Review loop") in its own venv, so its pins (Django
# and friends) never move the project's; the slow tier runs a real server from it. Locked in
# docker/label-studio-requirements.txt (sentry-sdk 3 refuses an option Label Studio 1.23 passes
# at start, hence its pin there).
.venv-labelstudio/installed: .venv/installed docker/label-studio-requirements.txt
	$(UV) venv -q --allow-existing --python python3.11 .venv-labelstudio
	$(UV) pip sync --python .venv-labelstudio/bin/python -q --compile-bytecode docker/label-studio-requirements.txt
	touch $@

label-studio: .venv-labelstudio/installed

test-slow: install browser label-studio
	$(PY) -m pytest tests -m slow --durations=25

# The hostile-input corpus (every source format, every bad row kind) through the data stages.
test-hostile: install
	$(PY) -m pytest tests/hostile -p no:cacheprovider

# The stack bench (tests/bench/test_bench_stack.py) brings the stack up, so bench needs its extra.
bench: .venv/stack-installed
	$(PY) -m pytest tests/bench -s -p no:cacheprovider --timeout=3600

# The GPU path measured (tests/bench/test_bench_gpu.py); on a machine without CUDA it runs the
# tiny config and says the GPU figures are absent. README, "GPU", has the device recipe.
# `make bench-gpu PY=python3` skips the install (a GPU image's own Python, wheels from gpu-wheels).
bench-gpu: $(if $(filter .venv/bin/python,$(PY)),install)
	$(PY) -m pytest tests/bench/test_bench_gpu.py -s -p no:cacheprovider --timeout=3600

# Wheels for a GPU machine without a package registry whose image has torch (Python 3.12) but
# not the rest of what the bench imports; it installs them with `pip install --no-index`.
GPU_WHEELS := open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 webdataset==1.0.2 \
	braceexpand==0.1.7 peft==0.21.2 pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 \
	typing-inspection==0.4.5
gpu-wheels: install
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  -d .whl $(GPU_WHEELS)

# The quality bar of the embedded default: trains both tasks and the baselines (~10 min on CPU).
quality: install
	$(PY) -m pytest tests/quality -s -p no:cacheprovider --timeout=3600

# The drift detector's detection / false-alarm rates over many synthetic seeds (minutes).
drift-power: install
	$(PY) -m pytest tests/drift_power -s -p no:cacheprovider --timeout=3600

# The production stack on this machine (Postgres, S3, MLflow server, Airflow; see pipeline/stack)
# and its test tier, which brings the stack up in a throwaway clone and runs the retrain DAG.
.PHONY: stack-install test-stack
.venv/stack-installed: .venv/installed .venv/report-assets
	$(UV) pip install --python $(PY) -q --compile-bytecode -c requirements.lock -e '.[test,stack]'
	touch $@

stack-install: .venv/stack-installed

# -s: the tier prints the stack's cold start and the first run's time through the scheduler.
test-stack: .venv/stack-installed
	$(PY) -m pytest tests/stack -m stack -s -p no:cacheprovider --timeout=3600 --durations=0

lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock

clean:
	rm -rf artifacts mlflow.db mlruns mlartifacts airflow_home  # .stack/ holds the stack's data: `mmguard stack down` first, then remove it by hand

"""dvc.yaml's deps cover every module each stage runs, and its params only what changes results.

The closure is computed from the stage module's imports (pipeline/stage_deps.py); when this
fails, run `mmguard stage-deps` and commit dvc.yaml.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline import stage_deps
from pipeline.stages import STAGES
from tests.project import project_env

ROOT = Path(__file__).resolve().parents[2]
DVC_YAML = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


def test_every_stage_is_a_dvc_stage_run_by_mmguard():
    for name in STAGES:
        assert DVC_YAML[name]["cmd"] == f"mmguard {name}"


def test_deps_cover_each_stages_import_closure():
    missing = {}
    for name in STAGES:
        closure = stage_deps.closure(ROOT, f"pipeline.stages.{name}")
        assert f"pipeline/stages/{name}.py" in closure and "pipeline/params.py" in closure
        lost = [path for path in closure if not covered(path, DVC_YAML[name]["deps"])]
        if lost:
            missing[name] = lost
    assert not missing, f"dvc.yaml misses code deps (run `mmguard stage-deps`): {missing}"


def test_dvc_yaml_is_what_the_generator_writes(tmp_path):
    copy = tmp_path / "dvc.yaml"
    shutil.copy(ROOT / "dvc.yaml", copy)
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    assert stage_deps.rewrite(copy) == [], "run `mmguard stage-deps` and commit dvc.yaml"


def test_closure_follows_lazy_relative_and_by_name_imports(tmp_path):
    package = tmp_path / "pipeline"
    (package / "stages").mkdir(parents=True)
    (package / "sources" / "c").mkdir(parents=True)  # a source split into a package
    (package / "model" / "configs").mkdir(parents=True)
    for name in ("__init__", "stages/__init__", "sources/__init__", "sources/a", "sources/b",
                 "sources/c/d", "model/__init__", "lazy", "unused"):
        (package / f"{name}.py").write_text("")
    (package / "sources" / "c" / "__init__.py").write_text("from .d import x\n")
    (package / "model" / "configs" / "tiny.json").write_text("{}")
    (package / "stages" / "s.py").write_text(
        "from . import __name__ as _\n"
        "def run():\n    from pipeline import lazy\n    import pipeline.model\n")
    (package / "lazy.py").write_text(
        "import importlib\ndef get(n):\n"
        "    return importlib.import_module(f'pipeline.sources.{n}')\n")
    assert stage_deps.closure(tmp_path, "pipeline.stages.s") == [
        "pipeline/__init__.py", "pipeline/lazy.py", "pipeline/model/__init__.py",
        "pipeline/model/configs", "pipeline/sources/__init__.py", "pipeline/sources/a.py",
        "pipeline/sources/b.py", "pipeline/sources/c/__init__.py", "pipeline/sources/c/d.py",
        "pipeline/stages/__init__.py", "pipeline/stages/s.py"]


def test_speed_knobs_do_not_force_a_rerun_and_the_rest_of_the_section_does():
    fields = stage_deps.section_fields()
    declared = {name: [str(p) for p in DVC_YAML[name].get("params", [])] for name in STAGES}
    for key in stage_deps.RUNTIME_ONLY:
        section, field = key.split(".")
        assert field in fields[section]
        assert key not in declared[section] and section not in declared[section]
        others = {f"{section}.{f}" for f in fields[section]} - stage_deps.RUNTIME_ONLY
        assert others <= set(declared[section])
    assert "evaluate.batch_size" in declared["train"]  # the val loader's batch size


def test_every_stats_file_is_declared():
    for name in STAGES:
        outputs = [next(iter(o)) if isinstance(o, dict) else o
                   for kind in ("outs", "metrics") for o in DVC_YAML[name].get(kind, [])]
        stats = f"artifacts/{'shard' if name == 'shard' else name}/stats.json"
        assert any(covered(stats, [out]) for out in outputs), f"{name}: {stats} not declared"


@pytest.mark.slow  # git + dvc init + three `dvc repro`: tens of seconds on 2 cores
def test_real_dvc_ignores_speed_knobs_and_reruns_on_the_rest(tmp_path):
    """dvc.yaml's own params lists, in a one-stage DVC project whose command only records that
    it ran: `train.num_workers`/`train.device` leave it clean, `train.lr` makes it run again."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "dep.txt").write_text("x\n")
    stage = {"cmd": "echo ran >> runs.txt && echo ok > out.txt", "deps": ["dep.txt"],
             "params": DVC_YAML["train"]["params"], "outs": ["out.txt"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": stage}}))
    env = project_env()
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro", "-q"]):
        subprocess.run(command, cwd=tmp_path, env=env, check=True, capture_output=True)

    def rerun_with(**train) -> int:
        changed = yaml.safe_load((tmp_path / "params.yaml").read_text())
        changed["train"] |= train
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
        subprocess.run(["dvc", "repro", "-q"], cwd=tmp_path, env=env, check=True,
                       capture_output=True)
        return len((tmp_path / "runs.txt").read_text().splitlines())

    assert rerun_with(num_workers=7, device="cpu") == 1
    assert rerun_with(lr=0.5) == 2

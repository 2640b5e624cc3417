"""`mmguard stage NAME` on a real, tiny DVC project with a local default remote: the per-stage
pull and push happen for a worker of its own and are skipped in a one-workspace run, and a
failing stage command fails the task with the DVC command that failed."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.orchestration import stage_runner
from pipeline.orchestration.stage_runner import ONE_WORKSPACE

DVC = [sys.executable, "-m", "dvc"]
MMGUARD = str(Path(sys.executable).parent / "mmguard")


def stage(project: Path, name: str, one_workspace: bool) -> subprocess.CompletedProcess:
    """`mmguard stage NAME` as an Airflow task runs it (DVC runs inside that process)."""
    env = {**stage_runner.dvc_env(), ONE_WORKSPACE: "1" if one_workspace else "0"}
    return subprocess.run([MMGUARD, "stage", name], cwd=project, env=env, capture_output=True,
                          text=True, timeout=120)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    subprocess.run([*DVC, "init", "--no-scm", "-q"], cwd=root, check=True)
    subprocess.run([*DVC, "remote", "add", "-d", "-q", "store", str(tmp_path / "remote")],
                   cwd=root, check=True)
    (root / "in.txt").write_text("one\n")
    copy = f"{sys.executable} -c \"import shutil; shutil.copy('in.txt', 'out.txt')\""
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "copy": {"cmd": copy, "deps": ["in.txt"], "outs": ["out.txt"]},
        "upper": {"cmd": f"{sys.executable} -c \"from pathlib import Path; "
                          f"Path('upper.txt').write_text(Path('out.txt').read_text().upper())\"",
                  "deps": ["out.txt"], "outs": ["upper.txt"]},
        "broken": {"cmd": f"{sys.executable} -c \"raise SystemExit(3)\"", "deps": ["in.txt"],
                   "outs": ["never.txt"]}}}))
    return root


def test_a_worker_of_its_own_pushes_the_stage_outputs(project):
    assert stage_runner.default_remote(project) == "store"
    done = stage(project, "copy", one_workspace=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (project / "out.txt").read_text() == "one\n"
    pushed = _files(project.parent / "remote")
    assert len(pushed) == 1 and pushed[0].read_text() == "one\n"
    log = done.stdout
    assert "$ dvc --wait-for-lock repro --single-item copy" in log
    assert "$ dvc --wait-for-lock push copy" in log


def test_a_second_workspace_pulls_what_the_first_pushed(project, tmp_path):
    """Two checkouts sharing only the remote (two workers): the second pulls the first stage's
    output, runs the next stage and pushes it, all in one `mmguard stage` process."""
    assert stage(project, "copy", one_workspace=False).returncode == 0
    second = tmp_path / "second"
    second.mkdir()
    for name in ("dvc.yaml", "dvc.lock", "in.txt"):
        shutil.copy2(project / name, second / name)
    shutil.copytree(project / ".dvc", second / ".dvc", ignore=shutil.ignore_patterns("cache",
                                                                                      "tmp"))
    done = stage(second, "upper", one_workspace=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "$ dvc --wait-for-lock pull out.txt" in done.stdout
    assert (second / "upper.txt").read_text() == "ONE\n"
    assert sorted(p.read_text() for p in _files(project.parent / "remote")) == ["ONE\n", "one\n"]


def test_a_one_workspace_run_neither_pulls_nor_pushes(project):
    done = stage(project, "copy", one_workspace=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (project / "out.txt").read_text() == "one\n"
    assert _files(project.parent / "remote") == []  # the DAG's push task sends it later
    log = done.stdout
    assert f"{ONE_WORKSPACE}=1" in log
    assert "$ dvc --wait-for-lock push" not in log and "$ dvc --wait-for-lock pull" not in log


def test_a_failing_stage_command_names_the_dvc_command(project):
    done = stage(project, "broken", one_workspace=True)
    assert done.returncode == 1
    assert "stage broken failed: dvc --wait-for-lock repro --single-item broken exited" in \
        done.stderr
    done = stage(project, "nothing", one_workspace=True)
    assert done.returncode == 2 and "no stage 'nothing' in dvc.yaml" in done.stderr

"""A fetch or stage killed mid-way leaves hidden scratch folders and temp files; `.dvcignore`
keeps `dvc add data` from tracking them (real DVC on a scratch repository)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline import atomic

REPO = Path(__file__).parents[2]
DVC = Path(sys.executable).with_name("dvc")


def test_dvc_add_skips_the_debris_of_killed_fetches_and_writes(tmp_path):
    shutil.copy(REPO / ".dvcignore", tmp_path / ".dvcignore")
    env = {"DVC_NO_ANALYTICS": "1", "PATH": str(DVC.parent)}
    subprocess.run([str(DVC), "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=env)
    data = tmp_path / "data" / "coco"
    data.mkdir(parents=True)
    (data / "real.json").write_text("{}")
    # the names pipeline/sources/download.py and pipeline/atomic.py use for scratch space
    debris = [tmp_path / "data" / ".coco.fetch-k2j4h" / "partial.jpg",
              tmp_path / "data" / ".coco.download-9x8y" / "archive.zip.part",
              tmp_path / "data" / ".coco.old-1234" / "old.json",
              data / ".MMHS150K.hoist" / "x.json",
              data / f".real.json{atomic.TMP_MARK}1234",
              tmp_path / "data" / f".coco{atomic.TMP_MARK}abcd" / "y.json"]
    for path in debris:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half written")
    subprocess.run([str(DVC), "add", "-q", "data"], cwd=tmp_path, check=True, env=env)
    listed = subprocess.run([str(DVC), "ls", "--recursive", "--dvc-only", ".", "data"],
                            cwd=tmp_path, check=True, env=env, capture_output=True, text=True)
    assert listed.stdout.split() == ["coco/real.json"]

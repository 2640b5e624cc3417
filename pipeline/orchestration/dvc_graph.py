"""The DVC stage graph read straight from dvc.yaml (and the root `*.dvc` files), cheap enough for
Airflow to call every time it parses the retrain DAG.

Stage B depends on stage A when one of B's deps is one of A's outs, lies inside it, or holds it
(`artifacts/shards/sizes.json` depends on the `artifacts/shards` out). That is the rule DVC itself
uses to build its graph, so a stage added to dvc.yaml becomes a task with the right edges.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml


@dataclass(frozen=True)
class Stage:
    name: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]  # outs, metrics and plots alike: all are written by the stage
    cached: tuple[str, ...]  # the outs DVC caches, hence the only ones a remote can hold


def _paths(entries: list | None, cached_only: bool = False) -> tuple[str, ...]:
    """dvc.yaml lists a path either bare or as a one-key mapping holding its options."""
    found = []
    for entry in entries or []:
        options = entry if isinstance(entry, dict) else {entry: {}}
        found.extend(path for path, opts in options.items()
                     if not cached_only or (opts or {}).get("cache", True))
    return tuple(str(PurePosixPath(p)) for p in found)


def _overlap(a: str, b: str) -> bool:
    pa, pb = PurePosixPath(a), PurePosixPath(b)
    return pa == pb or pa.is_relative_to(pb) or pb.is_relative_to(pa)


def read_stages(root: Path) -> dict[str, Stage]:
    """The stages of `root/dvc.yaml`, in file order."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    stages = {}
    for name, body in (spec.get("stages") or {}).items():
        if "foreach" in body or "matrix" in body:
            raise ValueError(f"dvc.yaml stage {name!r}: foreach/matrix stages are not supported "
                             "by the retrain DAG; write the stages out")
        written = [body.get(kind) for kind in ("outs", "metrics", "plots")]
        stages[name] = Stage(name, _paths(body.get("deps")),
                             tuple(p for entries in written for p in _paths(entries)),
                             tuple(p for entries in written for p in _paths(entries, True)))
    return stages


def upstream(stages: dict[str, Stage]) -> dict[str, list[str]]:
    """For each stage, the stages whose outs it reads (in dvc.yaml order)."""
    return {name: [other.name for other in stages.values() if other.name != name and
                   any(_overlap(dep, out) for dep in stage.deps for out in other.outs)]
            for name, stage in stages.items()}


def tracked_files(root: Path) -> dict[str, str]:
    """Out path → `.dvc` file for the data added with `dvc add` at the root (data.dvc)."""
    tracked = {}
    for dvc_file in sorted(p for p in root.glob("*.dvc") if p.is_file()):
        for out in (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", []):
            tracked[str(PurePosixPath(out["path"]))] = dvc_file.name
    return tracked


def inputs_to_pull(root: Path, name: str) -> list[str]:
    """The DVC-managed paths stage `name` reads: upstream outs and `dvc add`ed data. Code deps are
    git's business and are never in this list."""
    stages = read_stages(root)
    managed = [out for other in stages.values() if other.name != name for out in other.cached]
    managed += list(tracked_files(root))
    wanted = [out for out in managed if any(_overlap(dep, out) for dep in stages[name].deps)]
    return list(dict.fromkeys(wanted))

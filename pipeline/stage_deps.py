"""The code each DVC stage runs, computed from its imports, so dvc.yaml cannot miss a module.

A stage `mmguard <stage>` runs `pipeline/stages/<stage>.py`. Its code deps are that module's
import closure inside `pipeline/`: every module it imports, at any depth and also inside
functions; the package `__init__.py` files that run on the way; the modules a package loads by
name (`importlib.import_module(f"pipeline.sources.{name}")` counts as the whole package); and the
data folders (no Python in them, e.g. `model/configs`) of the packages it uses.

Params: a stage's own section (`train` for train) that holds knobs which change how fast a stage
runs but not what it writes (`RUNTIME_ONLY`) is declared key by key without them, so changing
`train.num_workers` does not retrain.

`mmguard stage-deps` rewrites dvc.yaml to match; tests/unit/test_stage_deps.py fails when it is
out of date.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "pipeline"
STAGE_PACKAGE = f"{PACKAGE}.stages"
# Pinned host memory only changes how batches travel to the GPU, never a result.
RUNTIME_ONLY = frozenset({"ingest.workers", "shard.workers", "train.num_workers",
                          "train.device", "train.pin_memory"})


def module_file(root: Path, dotted: str) -> Path | None:
    """The file that defines module `dotted` under `root`, or None when it is not a module."""
    base = root.joinpath(*dotted.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _dotted(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(root: Path, path: Path) -> set[str]:
    """Dotted names `path` imports from the package; `pkg.*` for a package loaded by name."""
    dotted = _dotted(root, path)
    package = dotted if path.name == "__init__.py" else dotted.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # may be a submodule
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id",
                                                                                 None))
              == "import_module" and node.args and isinstance(node.args[0], ast.JoinedStr)):
            head = node.args[0].values[0] if node.args[0].values else None
            if isinstance(head, ast.Constant) and str(head.value).endswith("."):
                names.add(str(head.value) + "*")
    return {name for name in names if name == PACKAGE or name.startswith(PACKAGE + ".")}


def closure(root: Path, module: str) -> list[str]:
    """Every file (posix, relative to `root`) that importing `module` runs or reads."""
    files: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name.endswith(".*"):
            folder = root.joinpath(*name[:-2].split("."))
            # subpackages too (sources/synthetic/), not only the flat modules
            todo.extend(_dotted(root, p) for p in sorted(folder.glob("*.py"))
                        + sorted(folder.glob("*/__init__.py")))
            continue
        parts = name.split(".")
        # importing a.b.c runs a/__init__.py and a/b/__init__.py first
        for depth in range(1, len(parts) + 1):
            path = module_file(root, ".".join(parts[:depth]))
            if path is None or path in files:
                continue
            files.add(path)
            todo.extend(imported_names(root, path))
    data = {folder for path in files for folder in path.parent.iterdir()
            if folder.is_dir() and folder.name != "__pycache__"
            and not any(folder.rglob("*.py"))}
    return sorted(p.relative_to(root).as_posix() for p in files | data)


def stage_module(command: str) -> str | None:
    """`mmguard train` → `pipeline.stages.train`; None for a command that is not a stage."""
    words = str(command).split()
    if len(words) >= 2 and words[0] == "mmguard":
        return f"{STAGE_PACKAGE}.{words[1]}"
    return None


def _is_code(dep: str) -> bool:
    return dep == PACKAGE or dep.startswith(PACKAGE + "/")


def stage_params(section: str, declared: list, fields: list[str]) -> list:
    """`declared` with `section` spelled out key by key minus RUNTIME_ONLY (when it has any)."""
    runtime = {key for key in RUNTIME_ONLY if key.startswith(section + ".")}
    if not runtime:
        return declared
    names = [d for d in declared if isinstance(d, str)]
    if section not in names and not any(n.startswith(section + ".") for n in names):
        return declared
    own = [f"{section}.{field}" for field in fields if f"{section}.{field}" not in runtime]
    rest = [d for d in declared if not (isinstance(d, str) and
                                        (d == section or d.startswith(section + ".")))]
    return rest + own


def section_fields() -> dict[str, list[str]]:
    from pipeline.params import Params

    return {field.alias or name: list(field.annotation.model_fields)
            for name, field in Params.model_fields.items()
            if hasattr(field.annotation, "model_fields")}


def expected(root: Path, stages: dict) -> dict[str, dict]:
    """Per stage run by `mmguard`: {"deps": [...], "params": [...]} as they should read."""
    fields = section_fields()
    result = {}
    for name, stage in stages.items():
        module = stage_module(stage.get("cmd", ""))
        if module is None or module_file(root, module) is None:
            continue
        deps = [d for d in stage.get("deps", []) if not _is_code(str(d))]
        params = list(stage.get("params", []))
        if name in fields:
            params = stage_params(name, params, fields[name])
        result[name] = {"deps": deps + closure(root, module), "params": params}
    return result


def rewrite(dvc_yaml: Path) -> list[str]:
    """Rewrite dvc.yaml's code deps and own-section params in place (comments kept); the names
    of the stages that changed."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    document = yaml.load(dvc_yaml.read_text())
    stages = document["stages"]
    changed = []
    for name, wanted in expected(dvc_yaml.parent, stages).items():
        stage = stages[name]
        for key in ("deps", "params"):
            current = list(stage.get(key, []))
            if [str(x) for x in current] != [str(x) for x in wanted[key]]:
                stage[key] = wanted[key]
                changed.append(name)
    if changed:
        with dvc_yaml.open("w") as handle:
            yaml.dump(document, handle)
    return sorted(set(changed))

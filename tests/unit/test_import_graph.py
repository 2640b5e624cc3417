"""The shape of the code: no import cycles inside pipeline/, and the light modules stay light."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline import stage_deps

ROOT = Path(__file__).resolve().parents[2]


def import_graph() -> dict[str, set[str]]:
    """Module → the pipeline modules it imports (anywhere in the file, lazy imports included)."""
    graph = {}
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        name = stage_deps._dotted(ROOT, path)
        targets = {stage_deps.module_file(ROOT, n) for n in stage_deps.imported_names(ROOT, path)
                   if not n.endswith(".*")}
        # A submodule's own packages always run first (Python's order, not a design choice), so
        # `pipeline.registry.operations` naming `pipeline.registry` is no cycle.
        ancestors = {name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)}
        graph[name] = {stage_deps._dotted(ROOT, t) for t in targets if t} - {name} - ancestors
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target, stack)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_pipeline_imports_have_no_cycles():
    graph = import_graph()
    assert "pipeline.stages.train" in graph and "pipeline.metrics" in graph["pipeline.stages.train"]
    assert find_cycle(graph) is None


def test_prediction_checks_and_serving_load_no_torch():
    """Scoring a predictions file or answering a request must not pay for torch/open_clip/peft."""
    code = ("import sys; import pipeline.metrics, pipeline.prediction_checks, pipeline.serving, "
            "pipeline.stages.checks; "
            "print(sorted(m for m in ('torch', 'open_clip', 'peft') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          check=True)
    assert done.stdout.strip() == "[]"

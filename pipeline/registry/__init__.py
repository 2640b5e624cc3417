"""MLflow model registry: register a challenger, gate it, promote it, roll back, check out.

Aliases only (MLflow's stages are deprecated):
- `challenger`         the version `register` made (or found) last
- `champion`           the version in service; it moves only through a gate decision
- `previous_champion`  the champion the current one replaced; `rollback` returns to it

Every promoted version carries a `promotion.previous_champion` tag, so repeated rollbacks walk back
the chain of champions instead of flipping between two versions.

The gate scores the challenger AND the champion on the current test shards through their
registered pyfunc models, so the comparison is on the same data, never against a stored number
computed on an older test set.

Modules: gate (the pure decision: the paired-bootstrap rule and the older point-estimate
rule), slices (no slice may regress), report (the decision's HTML page), store (connection,
aliases, the lock), lineage (tags, the files that pin a run, checkout's restore), packaging (the
pyfunc), operations (what the CLI calls).
"""
from pipeline.registry.gate import (
    KEEP, PROMOTE, GateDecision, GateRows, ModelRows, decide, decide_point_estimate,
    gate_metrics,
)
from pipeline.registry.operations import (
    apply_decision, checkout, gate, gate_test_frame, promote, register, rollback, score_version,
)
from pipeline.registry.packaging import example_image_b64, pinned_requirements
from pipeline.registry.store import (
    CHALLENGER, CHAMPION, PREVIOUS, RegistryBusy, RegistryError, RegistryUnavailable,
    ensure_reachable, model_name, registry_lock,
)

__all__ = [
    "KEEP", "PROMOTE", "GateDecision", "GateRows", "ModelRows", "decide",
    "decide_point_estimate", "gate_metrics", "apply_decision", "checkout",
    "gate", "gate_test_frame", "promote", "register", "rollback", "score_version",
    "example_image_b64", "pinned_requirements", "CHALLENGER", "CHAMPION", "PREVIOUS",
    "RegistryBusy", "RegistryError", "RegistryUnavailable", "ensure_reachable", "model_name",
    "registry_lock",
]

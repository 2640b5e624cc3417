"""Shared test set-up: telemetry off, and small helpers every tier uses."""
from __future__ import annotations

import os

# Telemetry off before any of the libraries is imported (DESIGN.md, "Local defaults").
for _key, _value in {
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # No capture log from tests that serve a model; the capture tests switch it on.
    "MMGUARD_CAPTURE": "0",
}.items():
    os.environ.setdefault(_key, _value)

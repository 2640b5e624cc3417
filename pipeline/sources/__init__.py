"""Source adapters: each lands raw data under data/<name>/ and reads it back as RawRecords."""
from __future__ import annotations

import importlib
from types import ModuleType

SOURCE_NAMES = ("synthetic", "hateful_memes", "mmhs150k", "fakeddit", "coco", "incoming")


def get_source(name: str) -> ModuleType:
    if name not in SOURCE_NAMES:
        raise ValueError(f"unknown source {name!r}; allowed: {', '.join(SOURCE_NAMES)}")
    return importlib.import_module(f"pipeline.sources.{name}")

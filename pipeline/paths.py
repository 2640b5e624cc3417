"""Where every stage reads and writes, relative to one project root.

dvc.yaml declares the same paths; stages take a `Paths` so tests can run them in a temp folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Paths:
    root: Path = Path(".")

    # raw landing zone (tracked by data.dvc); only `mmguard fetch` writes here
    @property
    def data(self) -> Path:
        return self.root / "data"

    def source_dir(self, source: str) -> Path:
        return self.data / source

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    # ingest
    @property
    def ingest_dir(self) -> Path:
        return self.artifacts / "ingest"

    @property
    def ingest_manifest(self) -> Path:
        return self.ingest_dir / "manifest.parquet"

    @property
    def ingest_quarantine(self) -> Path:
        return self.ingest_dir / "quarantine.parquet"

    @property
    def image_store(self) -> Path:
        return self.ingest_dir / "images"

    # dedupe
    @property
    def dedupe_dir(self) -> Path:
        return self.artifacts / "dedupe"

    @property
    def manifest(self) -> Path:
        """The clean manifest every later stage reads."""
        return self.dedupe_dir / "manifest.parquet"

    @property
    def duplicates(self) -> Path:
        return self.dedupe_dir / "duplicates.parquet"

    @property
    def dedupe_quarantine(self) -> Path:
        return self.dedupe_dir / "quarantine.parquet"

    # validate
    @property
    def validate_dir(self) -> Path:
        return self.artifacts / "validate"

    # shard
    @property
    def shards(self) -> Path:
        return self.artifacts / "shards"

    @property
    def shard_sizes(self) -> Path:
        return self.shards / "sizes.json"

    # embed: the frozen towers' feature cache (pipeline/model/feature_cache.py)
    @property
    def embeddings(self) -> Path:
        return self.artifacts / "embeddings"

    # train
    @property
    def model_dir(self) -> Path:
        return self.artifacts / "model"

    @property
    def train_dir(self) -> Path:
        return self.artifacts / "train"

    # evaluate, checks, drift
    @property
    def evaluate_dir(self) -> Path:
        return self.artifacts / "evaluate"

    @property
    def predictions(self) -> Path:
        return self.evaluate_dir / "predictions.parquet"

    @property
    def checks_dir(self) -> Path:
        return self.artifacts / "checks"

    @property
    def drift_dir(self) -> Path:
        return self.artifacts / "drift"

    def stats(self, stage: str) -> Path:
        """Every stage writes a small JSON of counts here (a DVC metric)."""
        return self.artifacts / stage / "stats.json"

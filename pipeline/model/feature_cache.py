"""Tower features computed once: the embedding cache that frozen pretrained towers read.

A frozen tower maps the same input to the same features on every epoch, in evaluation and in the
drift report, so running it again is wasted time (most of a CPU run's time). The cache keys each
feature by the content the tower actually sees and by the tower itself:
- item key: sha256 of the preprocessed image tensor, or of the text's token ids. That is exactly
  the tower's input, so a shard's JPEG, a served request and a manifest image each hit the entry
  of their own pixels, and any change to an image, a caption, the preprocessing or the tokenizer
  misses;
- tower key (`fingerprint`): sha256 of the trunk's weights, dtypes, shapes and names. Another
  model version whose tower is the same (a frozen tower is the packaged one) reads the same
  entries; changed weights read none.

One file per tower and fingerprint: `<dir>/<tower>-<fingerprint[:16]>.npz` with `keys` (32-byte
digests) and `features` (float32). The embed stage writes them; train, evaluate and drift read
them through `MMGuardModel.attach_cache`. A miss is computed by the tower and counted.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline import atomic

TOWERS = ("image", "text")
MANIFEST = "cache.json"


def fingerprint(module: nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # reshape first: a 0-dim tensor (BatchNorm's step count) cannot be viewed as bytes
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def item_keys(inputs: torch.Tensor) -> list[bytes]:
    """One sha256 digest per row of a batch of tower inputs (pixels or token ids)."""
    rows = inputs.detach().cpu().contiguous()
    return [hashlib.sha256(row.numpy().tobytes()).digest() for row in rows]


@dataclass
class TowerCache:
    """The features of one tower, in memory; `misses` counts rows the tower had to compute."""
    tower: str
    fingerprint: str
    index: dict[bytes, int] = field(default_factory=dict)
    rows: list[np.ndarray] = field(default_factory=list)
    hits: int = 0
    misses: int = 0
    touched: set[bytes] = field(default_factory=set)  # keys asked for since loading

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, keys: list[bytes]) -> list[np.ndarray | None]:
        self.touched.update(keys)
        found = [self.index.get(key) for key in keys]
        hit = sum(i is not None for i in found)
        self.hits += hit
        self.misses += len(keys) - hit
        return [None if i is None else self.rows[i] for i in found]

    def get_quietly(self, keys: list[bytes]) -> list[np.ndarray]:
        """Rows known to be present, without counting hits (after filling the misses)."""
        return [self.rows[self.index[key]] for key in keys]

    def put(self, keys: list[bytes], features: np.ndarray) -> None:
        for key, row in zip(keys, features):
            if key not in self.index:
                self.index[key] = len(self.rows)
                self.rows.append(np.asarray(row, dtype=np.float32))

    def subset(self, keys: set[bytes]) -> "TowerCache":
        """The entries of `keys` only (items no longer present are not carried over)."""
        kept = TowerCache(self.tower, self.fingerprint)
        for key in sorted(k for k in keys if k in self.index):
            kept.put([key], self.rows[self.index[key]][None])
        return kept

    def file_name(self) -> str:
        return f"{self.tower}-{self.fingerprint[:16]}.npz"

    def save(self, folder: Path) -> Path:
        keys = np.frombuffer(b"".join(self.index), dtype=np.uint8).reshape(-1, 32)
        features = np.stack(self.rows) if self.rows else np.zeros((0, 0), np.float32)
        path = Path(folder) / self.file_name()
        with atomic.temp_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, keys=keys, features=features,
                     fingerprint=np.array(self.fingerprint))
        return path

    @classmethod
    def load(cls, folder: Path, tower: str, fingerprint: str) -> "TowerCache":
        """The stored features of this tower, or an empty cache when there are none."""
        cache = cls(tower, fingerprint)
        path = Path(folder) / cache.file_name()
        if not path.is_file():
            return cache
        with np.load(path) as data:
            if str(data["fingerprint"]) != fingerprint:
                raise ValueError(f"{path} holds features of tower {str(data['fingerprint'])}, "
                                 f"not {fingerprint}")
            for key, row in zip(data["keys"], data["features"]):
                cache.index[key.tobytes()] = len(cache.rows)
                cache.rows.append(row)
        return cache


def write_manifest(folder: Path, record: dict) -> None:
    atomic.write_text(Path(folder) / MANIFEST, json.dumps(record, indent=2, sort_keys=True))


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {"enabled": False,
                                                                 "reason": f"no {path}"}

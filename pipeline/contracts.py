"""The shape of every file one stage hands to another, defined once.

Parquet files: the manifest (ingest → dedupe → validate, shard, drift), the quarantine (ingest,
dedupe), dedupe's duplicates list and evaluate's predictions, as pyarrow schemas. `require`
checks a frame a stage has read against one, and fails naming the stage, the file and the column.

Shards: `ShardIndex` is `artifacts/shards/sizes.json` typed: which shards hold each split (and
each train class, under `class_folder(label)`), how many samples, the task and its class names.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipeline.errors import StageFailed

MANIFEST = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("source_id", pa.string()),
    ("task", pa.string()), ("split", pa.string()), ("image_path", pa.string()),
    ("image_sha256", pa.string()), ("width", pa.int64()), ("height", pa.int64()),
    ("phash", pa.string()), ("text", pa.string()), ("label", pa.int64()),
    ("label_name", pa.string()), ("valid_pair", pa.bool_()),
], metadata={"contract": "manifest"})

# Optional manifest columns, after the others when present: how a source groups its items
# (synthetic: `group`, whether the caption targets a group of people; `confounder`, the item's
# place in a Hateful Memes style confounder set). A source that knows nothing of the kind leaves
# them out, so `require` never asks for them; evaluate reports each as a slice and the gate
# checks it for regressions.
GROUPING_COLUMNS = ("group", "confounder")
OPTIONAL_MANIFEST_FIELDS = {"group": pa.string(), "confounder": pa.string()}


def manifest_schema(optional: tuple[str, ...] | list[str] = ()) -> pa.Schema:
    """MANIFEST with the named optional columns appended (in OPTIONAL_MANIFEST_FIELDS order)."""
    schema = MANIFEST
    for name, dtype in OPTIONAL_MANIFEST_FIELDS.items():
        if name in optional:
            schema = schema.append(pa.field(name, dtype))
    return schema.with_metadata(MANIFEST.metadata)


def parquet_columns(path: Path | str) -> list[str]:
    """A parquet file's column names, from its footer (no rows read)."""
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)

QUARANTINE = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("source_id", pa.string()),
    ("split", pa.string()), ("stage", pa.string()), ("reason", pa.string()),
    ("detail", pa.string()),
], metadata={"contract": "quarantine"})

DUPLICATES = pa.schema([
    ("id", pa.string()), ("duplicate_of", pa.string()), ("kind", pa.string()),
    ("split", pa.string()), ("kept_split", pa.string()),
], metadata={"contract": "duplicates"})

PROBABILITY_PREFIX = "prob_"


def probability_column(class_name: str) -> str:
    """The predictions column of one class's probability (class names verbatim)."""
    return PROBABILITY_PREFIX + class_name


def predictions(class_names: tuple[str, ...] | list[str]) -> pa.Schema:
    """evaluate's predictions.parquet for a task: one row per scored val/test sample."""
    return pa.schema(
        [("id", pa.string()), ("split", pa.string()), ("source", pa.string()),
         ("label", pa.int64())]
        + [(probability_column(name), pa.float64()) for name in class_names]
        + [("prediction", pa.int64()), ("prediction_name", pa.string())],
        metadata={"contract": "predictions"})


def _name(schema: pa.Schema) -> str:
    return (schema.metadata or {}).get(b"contract", b"table").decode()


def _contract_kind(dtype: pa.DataType) -> str:
    """A coarse type: what a reader relies on, not how a writer happens to store it."""
    if pa.types.is_boolean(dtype):
        return "bool"
    if pa.types.is_integer(dtype):
        return "int"
    if pa.types.is_floating(dtype):
        return "float"
    return "string"


def _frame_kind(column: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(column.dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(column.dtype):
        return "int"
    if pd.api.types.is_float_dtype(column.dtype):
        return "float"
    return "string"


def require(frame: pd.DataFrame, schema: pa.Schema, *, stage: str, path: Path | str,
            columns: tuple[str, ...] | list[str] | None = None) -> None:
    """Fail when `frame` (read from `path`) lacks a column of `schema` (only `columns` when
    given) or holds it with another type; the message names the stage, file and column."""
    wanted = list(columns) if columns is not None else schema.names
    unknown = [c for c in wanted if c not in schema.names]
    if unknown:
        raise ValueError(f"{unknown} are not columns of the {_name(schema)} contract")
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise StageFailed(f"{stage}: {path} breaks the {_name(schema)} contract: missing "
                          f"column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    for column in wanted:
        expected = _contract_kind(schema.field(column).type)
        got = _frame_kind(frame[column])
        # an all-null column has no type to speak of (pandas reads it as object or float)
        if got != expected and not frame[column].isna().all():
            raise StageFailed(f"{stage}: {path} breaks the {_name(schema)} contract: column "
                              f"{column} is {got}, expected {expected}")


def read(path: Path, schema: pa.Schema, *, stage: str, produced_by: str,
         columns: tuple[str, ...] | list[str] | None = None) -> pd.DataFrame:
    """A parquet file checked against `schema`; a missing file says which command makes it."""
    if not Path(path).exists():
        raise StageFailed(f"{stage}: {path} not found: run `mmguard {produced_by}` first")
    frame = pd.read_parquet(path)
    require(frame, schema, stage=stage, path=path, columns=columns)
    return frame


# ---------------------------------------------------------------- the shard index

INDEX_FILE = "sizes.json"
TRAIN = "train"


@dataclass(frozen=True)
class ShardList:
    samples: int
    shards: tuple[str, ...]  # relative to the shards folder, sorted

    def to_dict(self) -> dict:
        return {"samples": self.samples, "shards": list(self.shards)}


@dataclass(frozen=True)
class ShardIndex:
    task: str
    class_names: tuple[str, ...]
    splits: dict[str, ShardList]
    train_classes: dict[int, ShardList] = field(default_factory=dict)  # by label index

    @staticmethod
    def class_folder(label: int) -> str:
        """Where train samples of one class go, relative to the shards folder."""
        return f"{TRAIN}/class_{int(label)}"

    def samples(self, split: str) -> int:
        return self.splits[split].samples if split in self.splits else 0

    def to_dict(self) -> dict:
        """The sizes.json layout (docs/architecture.md, "Shards")."""
        splits = {name: entry.to_dict() for name, entry in self.splits.items()}
        if TRAIN in splits:
            splits[TRAIN]["per_class"] = {str(k): v.to_dict()
                                          for k, v in sorted(self.train_classes.items())}
        return {"task": self.task, "class_names": list(self.class_names), "splits": splits}

    @classmethod
    def from_dict(cls, raw: dict, where: str = INDEX_FILE) -> "ShardIndex":
        try:
            splits = {name: ShardList(int(entry["samples"]), tuple(entry["shards"]))
                      for name, entry in raw["splits"].items()}
            per_class = raw["splits"].get(TRAIN, {}).get("per_class", {})
            classes = {int(k): ShardList(int(v["samples"]), tuple(v["shards"]))
                       for k, v in per_class.items()}
            return cls(str(raw["task"]), tuple(raw["class_names"]), splits, classes)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StageFailed(f"{where} is not a shard index ({type(exc).__name__}: {exc}); "
                              "re-run `mmguard shard`") from None

    @classmethod
    def read(cls, shards_root: Path, stage: str) -> "ShardIndex":
        path = Path(shards_root) / INDEX_FILE
        if not path.exists():
            raise StageFailed(f"{stage}: {path} not found: run `mmguard shard` first")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise StageFailed(f"{stage}: {path} is not JSON ({exc}); re-run `mmguard shard`") \
                from None
        return cls.from_dict(raw, str(path))

    def write(self, shards_root: Path) -> Path:
        path = Path(shards_root) / INDEX_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def check_task(self, task: str, stage: str) -> None:
        if self.task != task:
            raise StageFailed(f"{stage}: shards are for task {self.task!r} but params.task is "
                              f"{task!r}: re-run the shard stage")

"""WebDataset loaders over the shard stage's tars (docs/architecture.md, "Shards").

Train: one endless stream per class, each resampling that class's shards with replacement, mixed
with weights = class sample count × `train.upsampling[class name]`, then a shuffle buffer. Every
random choice comes from a generator seeded by (seed, epoch, rank, worker), so an epoch's batches
are the same whether a run went through unbroken or resumed from a checkpoint.

Eval (val/test): every sample exactly once, in shard order then tar order, never shuffled. Under
DDP (and across DataLoader workers) the stream is split by whole shards when there are at least as
many shards as readers, else by sample index (index mod readers), so no sample is lost or seen
twice; ranks gather their predictions afterwards (metrics are computed on rank 0).

A sample that cannot be decoded (bad jpg, bad cls, bad text or json) is skipped and recorded in the
next batch's `skipped` list with a reason, so the training loop counts it; it never crashes a run.
Batching happens inside the dataset (so the skip records travel with the batches out of worker
processes); the DataLoader runs with batch_size=None.
"""
from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline import taxonomy
from pipeline.contracts import ShardIndex
from pipeline.params import TrainParams, switch_on

Preprocess = Callable[[Image.Image], torch.Tensor]
Tokenize = Callable[[list[str]], torch.Tensor]

# A class whose shards yield nothing this many draws in a row is treated as broken, not retried
# forever (every shard of it unreadable or empty).
MAX_EMPTY_SHARD_DRAWS = 50


class DataError(ValueError):
    """The shards cannot feed a loader: none listed, missing files, a class with no samples."""


class CorruptSample(ValueError):
    """One sample that cannot be decoded; `reason` is a short code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Batch:
    images: torch.Tensor          # [B, 3, H, W] as model.preprocess makes them
    tokens: torch.Tensor          # [B, L] from model.tokenize
    labels: torch.Tensor          # [B] int64
    valid: torch.Tensor           # [B] bool: valid pairs, the contrastive loss uses these alone
    ids: list[str]
    # (sample id or key, reason) of samples skipped since the previous batch of this worker
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def pin_memory(self) -> "Batch":
        return Batch(self.images.pin_memory(), self.tokens.pin_memory(), self.labels.pin_memory(),
                     self.valid.pin_memory(), self.ids, self.skipped)

    def to(self, device: torch.device | str,
           memory_format: torch.memory_format = torch.contiguous_format) -> "Batch":
        return Batch(self.images.to(device, non_blocking=True, memory_format=memory_format),
                     self.tokens.to(device),
                     self.labels.to(device), self.valid.to(device), self.ids, self.skipped)


# ---------------------------------------------------------------- shard lists and class weights

def read_sizes(shards_root: Path) -> dict:
    path = Path(shards_root) / "sizes.json"
    if not path.exists():
        raise DataError(f"{path} not found: run the shard stage first")
    return json.loads(path.read_text())


def _shard_files(folder: Path) -> list[str]:
    return [str(p) for p in sorted(folder.glob("shard-*.tar"))]


def split_shards(shards_root: Path, split: str) -> list[str]:
    """The eval split's shards, sorted by name (the stable order)."""
    shards = _shard_files(Path(shards_root) / split)
    if not shards:
        raise DataError(f"no shards for split {split!r} in {Path(shards_root) / split} "
                        "(empty shard list)")
    return shards


def class_shards(shards_root: Path, sizes: dict) -> dict[int, list[str]]:
    """Train shards per class index, for every class that has samples in sizes.json."""
    per_class = sizes.get("splits", {}).get("train", {}).get("per_class", {})
    found: dict[int, list[str]] = {}
    for key, entry in per_class.items():
        if int(entry.get("samples", 0)) == 0:
            continue
        folder = Path(shards_root) / ShardIndex.class_folder(int(key))
        shards = _shard_files(folder)
        if not shards:
            raise DataError(f"sizes.json lists {entry['samples']} samples of class {key} but "
                            f"{folder} holds no shard-*.tar")
        found[int(key)] = shards
    if not found:
        raise DataError(f"no train shards under {Path(shards_root) / 'train'} (empty shard list)")
    return found


def class_weights(sizes: dict, class_names: tuple[str, ...] | list[str],
                  upsampling: dict[str, float]) -> dict[int, float]:
    """Mixing weight per class index: its sample count × its upsampling factor (default 1)."""
    unknown = sorted(set(upsampling) - set(class_names))
    if unknown:
        raise DataError(f"train.upsampling names unknown classes {unknown}; "
                        f"allowed: {list(class_names)}")
    per_class = sizes["splits"]["train"].get("per_class", {})
    weights = {}
    for key, entry in per_class.items():
        count = int(entry.get("samples", 0))
        factor = float(upsampling.get(class_names[int(key)], 1.0))
        if count > 0 and factor > 0:
            weights[int(key)] = count * factor
    if not weights:
        raise DataError("every train class has zero weight (no samples or upsampling factor 0)")
    return weights


def train_split_size(sizes: dict) -> int:
    return int(sizes["splits"]["train"]["samples"])


def train_valid_pairs(sizes: dict) -> int:
    """How many train samples are valid pairs, from the per-class counts (valid = class rule)."""
    task = sizes["task"]
    per_class = sizes["splits"]["train"].get("per_class", {})
    return sum(int(e.get("samples", 0)) for k, e in per_class.items()
               if taxonomy.is_valid_pair(task, int(k)))


def epoch_samples(train: TrainParams, sizes: dict) -> int:
    return train.train_num_samples or train_split_size(sizes)


def steps_per_epoch(train: TrainParams, sizes: dict, world_size: int = 1) -> int:
    """Micro-batches per rank per epoch, a whole number of optimizer steps (≥ 1)."""
    micro = epoch_samples(train, sizes) // (train.batch_size * world_size)
    micro -= micro % train.grad_accum_steps
    return max(micro, train.grad_accum_steps)


# ---------------------------------------------------------------- samples

def read_tar(path: str, errors: list[tuple[str, str]]) -> Iterator[dict]:
    """Raw samples of one tar (webdataset's tar reader); unreadable members are recorded."""
    def record(exn: Exception) -> bool:
        errors.append((Path(path).name, f"unreadable_tar: {exn.args[0] if exn.args else exn}"))
        return True  # keep going with what can still be read

    yield from wds.tariterators.tarfile_samples([{"url": path}], handler=record)


def decode_sample(raw: dict, preprocess: Preprocess, task: str) -> dict:
    """Raw tar members → {image, text, label, valid, id}; raises CorruptSample with a reason."""
    num_classes = taxonomy.num_classes(task)
    meta = {}
    if "json" in raw:
        try:
            meta = json.loads(raw["json"])
        except (UnicodeDecodeError, ValueError) as exc:
            raise CorruptSample("bad_json", str(exc)) from None
    if "jpg" not in raw:
        raise CorruptSample("missing_jpg")
    if "cls" not in raw:
        raise CorruptSample("missing_cls")
    try:
        label = int(raw["cls"].decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise CorruptSample("bad_cls", repr(raw["cls"][:20])) from None
    if not 0 <= label < num_classes:
        raise CorruptSample("bad_cls", f"label {label} outside 0..{num_classes - 1}")
    try:
        text = raw.get("txt", b"").decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptSample("bad_txt", "not UTF-8") from None
    try:
        with Image.open(io.BytesIO(raw["jpg"])) as img:
            img.load()
            image = preprocess(img.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise CorruptSample("bad_jpg", str(exc)) from None
    valid = bool(meta.get("valid_pair", taxonomy.is_valid_pair(task, label)))
    return {"image": image, "text": text, "label": label, "valid": valid,
            "id": str(meta.get("id", raw.get("__key__", "?")))}


def collate(samples: list[dict], tokenize: Tokenize, skipped: list[tuple[str, str]]) -> Batch:
    """Stack images, tokenize texts (here, so a batch is tokenized in one call)."""
    if samples:
        images = torch.stack([s["image"] for s in samples])
        tokens = tokenize([s["text"] for s in samples])
    else:  # only skip records left at the end of an eval stream
        images, tokens = torch.empty(0), torch.empty(0, dtype=torch.long)
    return Batch(images=images, tokens=tokens,
                 labels=torch.tensor([s["label"] for s in samples], dtype=torch.long),
                 valid=torch.tensor([s["valid"] for s in samples], dtype=torch.bool),
                 ids=[s["id"] for s in samples], skipped=list(skipped))


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class _Batcher:
    """Decodes raw samples into batches, carrying skip records along with the next batch."""

    def __init__(self, preprocess: Preprocess, tokenize: Tokenize, task: str, batch_size: int,
                 errors: list[tuple[str, str]]):
        self.preprocess, self.tokenize = preprocess, tokenize
        self.task, self.batch_size = task, batch_size
        self.errors = errors  # shared with the tar readers, drained into each batch

    def batches(self, raw_samples: Iterator[dict], final_partial: bool) -> Iterator[Batch]:
        pending: list[dict] = []
        for raw in raw_samples:
            try:
                pending.append(decode_sample(raw, self.preprocess, self.task))
            except CorruptSample as exc:
                self.errors.append((str(raw.get("__key__", "?")), str(exc)))
            if len(pending) == self.batch_size:
                yield self._emit(pending)
                pending = []
        if final_partial and (pending or self.errors):
            yield self._emit(pending)

    def _emit(self, samples: list[dict]) -> Batch:
        batch = collate(samples, self.tokenize, self.errors)
        self.errors.clear()
        return batch


# ---------------------------------------------------------------- train stream

def _shuffled(samples: Iterator[dict], buffer_size: int, rng: random.Random) -> Iterator[dict]:
    if buffer_size <= 1:
        yield from samples
        return
    buffer: list[dict] = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= buffer_size:
            index = rng.randrange(len(buffer))
            buffer[index], buffer[-1] = buffer[-1], buffer[index]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


class TrainStream(IterableDataset):
    """Endless batches of per-class resampled shards, mixed by class weight (see module doc)."""

    def __init__(self, shards_by_class: dict[int, list[str]], weights: dict[int, float],
                 preprocess: Preprocess, tokenize: Tokenize, task: str, batch_size: int,
                 shuffle_buffer: int, seed: int, epoch: int, rank: int = 0,
                 samples_per_epoch: int | None = None):
        super().__init__()
        missing = sorted(set(weights) - set(shards_by_class))
        if missing:
            raise DataError(f"classes {missing} have weight but no shards")
        self.shards_by_class, self.weights = shards_by_class, weights
        self.preprocess, self.tokenize = preprocess, tokenize
        self.task, self.batch_size = task, batch_size
        # a buffer larger than the epoch only delays the first batch (it is refilled each epoch)
        if samples_per_epoch:
            shuffle_buffer = min(shuffle_buffer, samples_per_epoch)
        self.shuffle_buffer, self.seed, self.epoch, self.rank = shuffle_buffer, seed, epoch, rank

    def _rng(self, *parts: object) -> random.Random:
        worker, _ = _worker()
        # a str seed goes through sha512: stable across processes (unlike hash())
        return random.Random("/".join(map(str, (self.seed, self.epoch, self.rank, worker,
                                                 *parts))))

    def _class_samples(self, label: int, errors: list) -> Iterator[dict]:
        rng, shards = self._rng("class", label), self.shards_by_class[label]
        empty_draws = 0
        while True:
            shard = shards[rng.randrange(len(shards))]
            produced = False
            for raw in read_tar(shard, errors):
                produced = True
                yield raw
            empty_draws = 0 if produced else empty_draws + 1
            if empty_draws >= MAX_EMPTY_SHARD_DRAWS:
                raise DataError(f"the shards of class {label} yield no samples: {shards}")

    def _mixed(self, errors: list) -> Iterator[dict]:
        labels = sorted(self.weights)
        streams = {k: self._class_samples(k, errors) for k in labels}
        weights = [self.weights[k] for k in labels]
        rng = self._rng("mix")
        while True:
            yield next(streams[rng.choices(labels, weights)[0]])

    def __iter__(self) -> Iterator[Batch]:
        errors: list[tuple[str, str]] = []
        raw = _shuffled(self._mixed(errors), self.shuffle_buffer, self._rng("shuffle"))
        batcher = _Batcher(self.preprocess, self.tokenize, self.task, self.batch_size,
                           errors)
        yield from batcher.batches(raw, final_partial=False)


# ---------------------------------------------------------------- eval stream

class EvalStream(IterableDataset):
    """Every sample of `shards` once, in order; this rank/worker keeps index ≡ its slot."""

    def __init__(self, shards: list[str], preprocess: Preprocess, tokenize: Tokenize,
                 task: str, batch_size: int, rank: int = 0, world_size: int = 1):
        super().__init__()
        if not shards:
            raise DataError("empty shard list for evaluation")
        self.shards = list(shards)
        self.preprocess, self.tokenize = preprocess, tokenize
        self.task, self.batch_size = task, batch_size
        self.rank, self.world_size = rank, world_size

    def _raw(self, errors: list) -> Iterator[dict]:
        worker, workers = _worker()
        readers = self.world_size * workers
        slot = self.rank * workers + worker
        if len(self.shards) >= readers:
            # whole shards per reader: each tar is parsed once in all
            for shard in self.shards[slot::readers]:
                yield from read_tar(shard, errors)
            return
        # fewer shards than readers: split by sample index (every reader parses every tar)
        index = 0
        for shard in self.shards:
            for raw in read_tar(shard, errors if slot == 0 else []):
                if index % readers == slot:
                    yield raw
                index += 1

    def __iter__(self) -> Iterator[Batch]:
        errors: list[tuple[str, str]] = []
        batcher = _Batcher(self.preprocess, self.tokenize, self.task, self.batch_size,
                           errors)
        yield from batcher.batches(self._raw(errors), final_partial=True)


# ---------------------------------------------------------------- loaders

def pin_memory(choice: str, device_choice: str = "auto") -> bool:
    """Pinning only pays (and only works) when batches go to a CUDA device."""
    cuda = device_choice != "cpu" and torch.cuda.is_available()
    return cuda and switch_on(choice, cuda)


def _loader(dataset: IterableDataset, num_workers: int, seed: int, pin: bool) -> DataLoader:
    # A private generator keeps DataLoader's worker seeding off the global RNG (resume parity).
    # persistent_workers stays off: a loader is built per epoch (its streams are seeded by the
    # epoch), so kept workers would serve no second pass; `make bench-gpu` measures their start.
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, generator=generator,
                      persistent_workers=False, pin_memory=pin)


def train_loader(shards_root: Path, sizes: dict, train: TrainParams, preprocess: Preprocess,
                 tokenize: Tokenize, *, epoch: int, rank: int = 0) -> DataLoader:
    """Endless train batches for `epoch`; the caller takes `steps_per_epoch(...)` of them."""
    names = taxonomy.class_names(sizes["task"])
    stream = TrainStream(class_shards(shards_root, sizes),
                         class_weights(sizes, names, train.upsampling), preprocess, tokenize,
                         sizes["task"], train.batch_size, train.shuffle_buffer, train.seed, epoch,
                         rank, epoch_samples(train, sizes))
    return _loader(stream, train.num_workers, train.seed + epoch,
                   pin_memory(train.pin_memory, train.device))


def eval_loader(shards_root: Path, split: str, sizes: dict, batch_size: int,
                preprocess: Preprocess, tokenize: Tokenize, *, num_workers: int = 0,
                rank: int = 0, world_size: int = 1) -> DataLoader:
    """Every sample of `split` exactly once across ranks, in a stable order, with ids."""
    stream = EvalStream(split_shards(shards_root, split), preprocess, tokenize,
                        sizes["task"], batch_size, rank, world_size)
    return _loader(stream, num_workers, 0, pin_memory("auto"))

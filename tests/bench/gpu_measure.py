"""Measuring functions of `make bench-gpu` (tests/bench/test_bench_gpu.py).

Every figure goes through the project's own code: the model from `build_from_model_params`, the
optimizer/AMP/switches from `training.make_context`, steps from `training.train_epoch`, inference
from `training.predict`, batches from `data.train_loader` over real WebDataset tars. Train and
inference figures use one synthetic batch, copied host → device every step as the loader's would
be, so they measure the step alone; the loader is measured on its own and compared against them.

On CUDA: ViT-B-32 (random init: same FLOPs as pretrained), batch 256, inference batch 1024.
Without CUDA: the `tiny` config and small batches, so the code path runs anywhere. Sizes can be
changed with BENCH_GPU_* variables (see `bench_config`).
"""
from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from itertools import islice, repeat
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from PIL import Image
from torchvision.io import decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from pipeline.model import MMGuardModel, build_from_model_params, count_parameters, total_loss
from pipeline.model import data, training
from pipeline.model.data import Batch
from pipeline.params import ModelParams, TrainParams
from tests.bench.test_bench_loader import _jpeg, _photo_like
from tests.model.shard_writer import write_shards

TASK = "hateful_memes"
# The shard stage's defaults: short side 256, JPEG quality 90.
SHARD_SHORT_SIDE, SHARD_JPEG_QUALITY = 256, 90


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class BenchConfig:
    device: torch.device
    model_name: str
    train_batch: int
    infer_batch: int
    warmup: int                 # untimed steps first (allocator, cuDNN autotuning, compilation)
    steps: int                  # timed steps of each train/inference figure
    loader_workers: tuple[int, ...]
    loader_batches: int         # timed loader batches (after the first)
    shard_images: int           # distinct images in the shards (the train stream resamples)
    measure_compile: bool
    targets: dict = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def bench_config() -> BenchConfig:
    cores = os.cpu_count() or 1
    if torch.cuda.is_available():
        workers = _env_int("BENCH_GPU_WORKERS", max(1, cores - 1))
        return BenchConfig(
            device=torch.device("cuda", 0), model_name="ViT-B-32",
            train_batch=_env_int("BENCH_GPU_BATCH", 256),
            infer_batch=_env_int("BENCH_GPU_INFER_BATCH", 1024),
            warmup=_env_int("BENCH_GPU_WARMUP", 5), steps=_env_int("BENCH_GPU_STEPS", 20),
            loader_workers=tuple(sorted({max(1, workers // 2), workers})),
            loader_batches=_env_int("BENCH_GPU_LOADER_BATCHES", max(40, 4 * workers)),
            shard_images=_env_int("BENCH_GPU_SHARD_IMAGES", 2048),
            measure_compile=os.environ.get("BENCH_GPU_COMPILE", "1") == "1",
            # issue 12's targets for one H100
            targets={"lora_samples_per_s": 2000, "inference_pairs_per_s": 8000,
                     "loader_over_train": 1.5})
    return BenchConfig(
        device=torch.device("cpu"), model_name="tiny",
        train_batch=_env_int("BENCH_GPU_BATCH", 8),
        infer_batch=_env_int("BENCH_GPU_INFER_BATCH", 64),
        warmup=_env_int("BENCH_GPU_WARMUP", 1), steps=_env_int("BENCH_GPU_STEPS", 3),
        loader_workers=(_env_int("BENCH_GPU_WORKERS", 1),),
        loader_batches=_env_int("BENCH_GPU_LOADER_BATCHES", 8),
        shard_images=_env_int("BENCH_GPU_SHARD_IMAGES", 128),
        # inductor takes minutes to compile on a small CPU; tests/model/test_speedups.py checks
        # the compiled step there
        measure_compile=os.environ.get("BENCH_GPU_COMPILE", "0") == "1")


def recipe(cfg: BenchConfig, **changes) -> TrainParams:
    """The GPU recipe's train params (defaults: bf16 autocast, TF32, fused AdamW on CUDA)."""
    base = {"batch_size": cfg.train_batch, "device": cfg.device.type, "warmup_steps": 0}
    return TrainParams(**{**base, **changes})


# ---------------------------------------------------------------- model and batches

def build(cfg: BenchConfig, finetune: str = "lora") -> MMGuardModel:
    model = build_from_model_params(ModelParams(name=cfg.model_name, finetune=finetune), TASK,
                                    seed=0)
    return model.to(cfg.device)


def image_size(model: MMGuardModel) -> int:
    size = model.clip.visual.preprocess_cfg["size"]
    return size if isinstance(size, int) else size[0]


def synthetic_batch(model: MMGuardModel, size: int, pin: bool) -> Batch:
    """A host batch shaped as the loader makes it: normalised images, real tokens."""
    generator = torch.Generator().manual_seed(0)
    side = image_size(model)
    labels = torch.arange(size) % 2
    words = ["calm", "odd", "hate", "fake", "meme", "edited", "funny"]
    texts = [" ".join(words[(i + j) % len(words)] for j in range(3 + i % 20))
             for i in range(size)]
    batch = Batch(images=torch.randn(size, 3, side, side, generator=generator),
                  tokens=model.tokenize(texts), labels=labels, valid=labels == 0,
                  ids=[str(i) for i in range(size)])
    return batch.pin_memory() if pin else batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float | None:
    # on CPU the only peak is the process's max RSS, shared by every figure of the run
    return training.peak_memory_mb(device) if device.type == "cuda" else None


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _context(cfg: BenchConfig, model: MMGuardModel, train: TrainParams, ddp: bool = False):
    total = cfg.warmup + cfg.steps
    return training.make_context(model, train=train, loss_fn=total_loss, device=cfg.device,
                                 total_steps=total, ddp=ddp)


# ---------------------------------------------------------------- train step and inference

def train_rate(cfg: BenchConfig, train: TrainParams, finetune: str = "lora",
               ddp: bool = False) -> dict:
    """samples/s and peak memory of `cfg.steps` real training steps (after `cfg.warmup`)."""
    model = build(cfg, finetune)
    model.set_grad_checkpointing(train.grad_checkpointing)
    counts = count_parameters(model)
    batch = synthetic_batch(model, train.batch_size, data.pin_memory(train.pin_memory,
                                                                    train.device))
    ctx = _context(cfg, model, train, ddp)
    training.train_epoch(ctx, repeat(batch), cfg.warmup, epoch=0)
    _reset_peak(cfg.device)
    row = training.train_epoch(ctx, repeat(batch), cfg.steps, epoch=1)
    result = {"samples_per_s": row["samples_per_s"], "peak_mb": _peak_mb(cfg.device),
              "loss": row["train_loss"], **counts}
    del ctx, model
    _release(cfg.device)
    return result


def inference_rate(cfg: BenchConfig, train: TrainParams) -> dict:
    """Image-text pairs/s of the eval path (`training.predict`: autocast, softmax, to host)."""
    model = build(cfg, "lora")
    batch = synthetic_batch(model, cfg.infer_batch, data.pin_memory(train.pin_memory,
                                                                   train.device))
    ctx = _context(cfg, model, train)
    training.predict(ctx, repeat(batch, cfg.warmup))
    _reset_peak(cfg.device)
    started = time.perf_counter()
    result = training.predict(ctx, repeat(batch, cfg.steps))
    seconds = time.perf_counter() - started
    assert len(result["ids"]) == cfg.steps * cfg.infer_batch
    figures = {"pairs_per_s": cfg.steps * cfg.infer_batch / seconds,
               "peak_mb": _peak_mb(cfg.device)}
    del ctx, model
    _release(cfg.device)
    return figures


def profile_train(cfg: BenchConfig, train: TrainParams, steps: int = 3) -> str:
    """Where a training step's time goes: the top operators by self time on the device."""
    from torch.profiler import ProfilerActivity, profile

    model = build(cfg, "lora")
    batch = synthetic_batch(model, train.batch_size, data.pin_memory(train.pin_memory,
                                                                    train.device))
    ctx = _context(cfg, model, train)
    training.train_epoch(ctx, repeat(batch), cfg.warmup, epoch=0)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cfg.cuda else [])
    with profile(activities=activities) as prof:
        training.train_epoch(ctx, repeat(batch), steps, epoch=1)
    sort = "self_device_time_total" if cfg.cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=12)
    del ctx, model
    _release(cfg.device)
    return table


# ---------------------------------------------------------------- shards and the loader

def photo_jpeg(label: int, rng: random.Random) -> bytes:
    """A photo-like JPEG as the shard stage stores it (4:3, short side 256, quality 90)."""
    pixels = np.random.default_rng(rng.randrange(1 << 30))
    image = _photo_like(pixels, SHARD_SHORT_SIDE * 4 // 3, SHARD_SHORT_SIDE)
    return _jpeg(image, SHARD_JPEG_QUALITY)


def write_bench_shards(root: Path, images: int) -> dict:
    half = images // 2
    return write_shards(root, counts={"train": {0: half, 1: images - half}, "val": {0: 4, 1: 4},
                                      "test": {0: 2, 1: 2}},
                        per_shard=256, image=photo_jpeg)


def loader_rate(cfg: BenchConfig, shards: Path, sizes: dict, model: MMGuardModel, workers: int,
                pin: str) -> dict:
    """Steady-state samples/s of `data.train_loader`, and the time to its first batch (worker
    start, shuffle-buffer fill): what persistent workers would save."""
    train = recipe(cfg, num_workers=workers, pin_memory=pin)
    started = time.perf_counter()
    batches = iter(data.train_loader(shards, sizes, train, model.preprocess, model.tokenize,
                                     epoch=0))
    first = next(batches)
    first_s = time.perf_counter() - started
    # the batches the workers made while the first one was coming (prefetch_factor 2 each)
    # would count as free: drain them before the clock starts
    for _ in islice(batches, 2 * workers):
        pass
    started, seen = time.perf_counter(), 0
    for batch in islice(batches, cfg.loader_batches):
        seen += len(batch)
    seconds = time.perf_counter() - started
    del batches
    return {"samples_per_s": seen / seconds, "first_batch_s": first_s,
            "pinned": first.images.is_pinned(), "side": int(first.images.shape[-1])}


# ---------------------------------------------------------------- JPEG decoding on the device

def decode_on_device(jpegs: list[bytes], device: torch.device, model: MMGuardModel
                     ) -> torch.Tensor:
    """The model's eval preprocessing (resize short side, centre crop, normalise) with the
    decode done by `torchvision.io.decode_jpeg` on `device` (nvJPEG on CUDA), batched."""
    cfg = model.clip.visual.preprocess_cfg
    side = image_size(model)
    encoded = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]
    decoded = decode_jpeg(encoded, device=device)
    out = []
    for image in decoded:
        image = TF.resize(image.float() / 255, side, interpolation=InterpolationMode.BICUBIC,
                          antialias=True).clamp_(0, 1)  # PIL's bicubic clamps to 0..255
        out.append(TF.center_crop(image, [side, side]))
    return TF.normalize(torch.stack(out), list(cfg["mean"]), list(cfg["std"]))


def decode_on_cpu(jpegs: list[bytes], model: MMGuardModel) -> torch.Tensor:
    """What a loader worker does per sample today: PIL decode + model.preprocess."""
    images = []
    for raw in jpegs:
        with Image.open(io.BytesIO(raw)) as image:
            images.append(model.preprocess(image.convert("RGB")))
    return torch.stack(images)


def decode_rates(cfg: BenchConfig, jpegs: list[bytes], model: MMGuardModel,
                 repeats: int = 3) -> dict:
    """Images/s of both decoders on the same bytes, and how far apart their tensors are."""
    def timed(fn):
        fn()  # warm-up (nvJPEG handles, kernels)
        _sync(cfg.device)
        started = time.perf_counter()
        for _ in range(repeats):
            result = fn()
        _sync(cfg.device)
        return result, len(jpegs) * repeats / (time.perf_counter() - started)

    pil, pil_rate = timed(lambda: decode_on_cpu(jpegs, model))
    device, device_rate = timed(lambda: decode_on_device(jpegs, cfg.device, model))
    difference = (device.float().cpu() - pil).abs()
    return {"pil_per_s": pil_rate, "device_per_s": device_rate,
            "max_abs_diff": float(difference.max()), "mean_abs_diff": float(difference.mean())}


# ---------------------------------------------------------------- DDP through torchrun

def ddp_rate(cfg: BenchConfig, timeout: int = 600) -> dict:
    """One process under `torchrun` (NCCL on CUDA, gloo on CPU), the LoRA recipe wrapped in
    DistributedDataParallel by `training.make_context`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path.cwd()), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
         "-m", "tests.bench.gpu_measure", "ddp"],
        capture_output=True, text=True, env=env, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [x for x in done.stdout.splitlines() if x.startswith("{")][-1]
    return json.loads(line)


def _ddp_main() -> None:
    cfg = bench_config()
    backend = "nccl" if cfg.cuda else "gloo"
    if cfg.cuda:
        torch.cuda.set_device(cfg.device)
    torch_dist.init_process_group(backend=backend)
    try:
        result = train_rate(cfg, recipe(cfg), ddp=True)
        result.update(backend=backend, world_size=torch_dist.get_world_size())
    finally:
        torch_dist.destroy_process_group()
    print(json.dumps(result), flush=True)


if __name__ == "__main__" and sys.argv[1:] == ["ddp"]:
    _ddp_main()

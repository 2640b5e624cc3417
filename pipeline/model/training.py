"""The training loop: AdamW, warmup + cosine, clipping, accumulation, AMP, DDP, early stopping,
checkpoints and exact resume. Data, model and logging come in from the caller (stages/train.py),
so the loop can be tested on a toy model and tiny shards.

Resume parity: a checkpoint holds weights, optimizer, scheduler, scaler and RNG state, and the
loaders seed every random choice from (seed, epoch, rank), so epochs k+1.. of a resumed run see the
same batches and dropout masks as an unbroken run and end with the same weights (on CPU, where
kernels are deterministic).
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import resource
import time
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Iterable

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from pipeline import metrics as metric_fns
from pipeline.model.checkpoints import CheckpointStore, TrainerState
from pipeline.model.data import Batch
from pipeline.params import TrainParams, switch_on

# (metrics row, epoch) → None; called on rank 0 after every epoch
EpochLogger = Callable[[dict, int], None]
# (epoch, global optimizer step) → None; called after every optimizer step (tests interrupt here)
StepHook = Callable[[int, int], None]


# ---------------------------------------------------------------- set-up helpers

@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_choice: str = "auto") -> DistContext:
    """Join the process group torchrun describes in the environment; one process otherwise.
    gloo on CPU, nccl on CUDA."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_choice != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank, world_size, local_rank)


def resolve_device(choice: str, dist: DistContext = DistContext()) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but no CUDA device is available")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", dist.local_rank)


def resolve_amp(choice: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use GradScaler). auto: bf16 on CUDA when supported, else fp16
    with a scaler; off on CPU, where autocast is slower than fp32 for these models."""
    if choice == "off" or (choice == "auto" and device.type != "cuda"):
        return None, False
    if choice == "auto":
        choice = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if choice == "bf16":
        return torch.bfloat16, False
    return torch.float16, device.type == "cuda"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # biases, norm scales and scalars (logit_scale) are not weights to shrink
    lowered = name.lower()
    return param.ndim < 2 or "norm" in lowered or ".ln" in lowered or "bias" in lowered \
        or "logit_scale" in lowered


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if _no_decay(name, param) else decay).append(param)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters")
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warmup to 1, then cosine down to 0 at total_steps."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


# torch.compile's backend; tests swap in "eager" to check the traced graph without the minutes
# inductor spends generating kernels on a CPU.
COMPILE_BACKEND = "inductor"


def set_tf32(enabled: bool) -> None:
    """TF32 for fp32 matmuls and convolutions (Ampere and later); process-wide flags, CUDA only."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def memory_format(train: TrainParams, device: torch.device) -> torch.memory_format:
    cuda = device.type == "cuda"
    return torch.channels_last if switch_on(train.channels_last, cuda) else \
        torch.contiguous_format


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---------------------------------------------------------------- one epoch

LossFn = Callable[..., tuple[torch.Tensor, dict]]


@dataclass
class LoopContext:
    """Everything an epoch needs that does not change between epochs."""

    model: nn.Module                 # possibly DDP-wrapped
    module: nn.Module                # the bare model (checkpoints, eval)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    loss_fn: LossFn
    train: TrainParams
    device: torch.device
    amp_dtype: torch.dtype | None
    dist: DistContext
    step_hook: StepHook | None = None
    global_step: int = 0
    memory_format: torch.memory_format = torch.contiguous_format  # of the image batches

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]


def _loss(ctx: LoopContext, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict]:
    with ctx.autocast():
        output = model(batch.images, batch.tokens)
        return ctx.loss_fn(output, batch.labels, batch.valid, ctx.train.ce_weight,
                           ctx.train.contrastive_weight)


def _all_reduce_sum(values: list[float], ctx: LoopContext) -> list[float]:
    if not ctx.dist.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    torch_dist.all_reduce(tensor)
    return tensor.tolist()


def train_epoch(ctx: LoopContext, batches: Iterable[Batch], steps: int, epoch: int) -> dict:
    ctx.model.train()
    accum = ctx.train.grad_accum_steps
    samples = skipped = 0.0
    # summed on the device: a .item() per step would make the host wait for the GPU every step
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    started = time.perf_counter()
    ctx.optimizer.zero_grad(set_to_none=True)
    for micro, batch in enumerate(islice(batches, steps)):
        skipped += len(batch.skipped)
        batch = batch.to(ctx.device, ctx.memory_format)
        syncing = (micro + 1) % accum == 0
        # DDP all-reduces gradients on every backward unless told not to; only the last
        # micro-batch of an accumulation window needs it
        no_sync = ctx.model.no_sync if ctx.dist.enabled and not syncing else contextlib.nullcontext
        with no_sync():
            loss, _ = _loss(ctx, ctx.model, batch)
            ctx.scaler.scale(loss / accum).backward()
        loss_sum += loss.detach().double() * len(batch)
        samples += len(batch)
        if syncing:
            if ctx.train.grad_clip_norm > 0:
                ctx.scaler.unscale_(ctx.optimizer)
                nn.utils.clip_grad_norm_(ctx.trainable(), ctx.train.grad_clip_norm)
            ctx.scaler.step(ctx.optimizer)
            ctx.scaler.update()
            ctx.optimizer.zero_grad(set_to_none=True)
            ctx.scheduler.step()
            ctx.global_step += 1
            if ctx.step_hook is not None:
                ctx.step_hook(epoch, ctx.global_step)
    loss_total = loss_sum.item()  # waits for the last step, so the time below covers it
    seconds = time.perf_counter() - started
    loss_sum, samples, skipped = _all_reduce_sum([loss_total, samples, skipped], ctx)
    return {"train_loss": loss_sum / max(samples, 1), "samples_per_s": samples / seconds,
            "train_samples": int(samples), "skipped_train": int(skipped),
            "lr": ctx.scheduler.get_last_lr()[0], "train_seconds": seconds}


@torch.no_grad()
def predict(ctx: LoopContext, batches: Iterable[Batch]) -> dict:
    """Probabilities, labels and ids of every eval sample (gathered from all ranks), the mean
    loss and the skip count. Uses the bare module: ranks may hold different batch counts."""
    ctx.module.eval()
    probs, labels, ids, skipped = [], [], [], 0
    loss_sum = 0.0
    for batch in batches:
        skipped += len(batch.skipped)
        if len(batch) == 0:
            continue
        batch = batch.to(ctx.device, ctx.memory_format)
        with ctx.autocast():
            output = ctx.module(batch.images, batch.tokens)
            loss, _ = ctx.loss_fn(output, batch.labels, batch.valid, ctx.train.ce_weight,
                                  ctx.train.contrastive_weight)
        loss_sum += loss.item() * len(batch)
        probs.append(output.logits.float().softmax(dim=-1).cpu().numpy())
        labels.append(batch.labels.cpu().numpy())
        ids.extend(batch.ids)
    local = {"probs": np.concatenate(probs) if probs else np.zeros((0, 0)),
             "labels": np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64),
             "ids": ids, "loss_sum": loss_sum, "skipped": skipped}
    parts = [local]
    if ctx.dist.enabled:
        parts = [None] * ctx.dist.world_size
        torch_dist.all_gather_object(parts, local)
    kept = [p for p in parts if len(p["ids"])]
    n = sum(len(p["ids"]) for p in parts)
    return {"probs": np.concatenate([p["probs"] for p in kept]) if kept else np.zeros((0, 0)),
            "labels": (np.concatenate([p["labels"] for p in kept]) if kept
                       else np.zeros(0, dtype=np.int64)),
            "ids": [i for p in parts for i in p["ids"]],
            "loss": sum(p["loss_sum"] for p in parts) / max(n, 1),
            "skipped": sum(p["skipped"] for p in parts)}


def validate(ctx: LoopContext, batches: Iterable[Batch], task: str) -> dict:
    result = predict(ctx, batches)
    if not result["ids"]:
        raise ValueError("the validation split yielded no decodable samples")
    scores = metric_fns.task_metrics(task, result["labels"], result["probs"])
    return {"val_loss": result["loss"], "samples_val": len(result["ids"]),
            "skipped_val": result["skipped"],
            **{f"val_{k}": v for k, v in scores.items()}}


# ---------------------------------------------------------------- the whole run

def make_context(module: nn.Module, *, train: TrainParams, loss_fn: LossFn,
                 device: torch.device, total_steps: int, dist: DistContext = DistContext(),
                 ddp: bool | None = None, step_hook: StepHook | None = None) -> LoopContext:
    """Optimizer, schedule, AMP and the speed-up switches of `train` around `module` (already on
    `device`). `ddp` wraps it in DistributedDataParallel (default: when several ranks run; the
    bench also wraps a single rank to measure DDP's own cost)."""
    cuda = device.type == "cuda"
    if cuda:
        set_tf32(switch_on(train.tf32, cuda))
    images_format = memory_format(train, device)
    module.to(memory_format=images_format)  # only 4-d weights (the patch conv) change layout
    model = module
    wrap = dist.enabled if ddp is None else ddp
    if wrap:
        # find_unused_parameters: text-only/image-only baselines and contrastive_weight 0 leave
        # some trainable parameters out of the graph
        model = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if cuda else None, find_unused_parameters=True)
    if switch_on(train.compile, cuda):
        model = torch.compile(model, backend=COMPILE_BACKEND)
    amp_dtype, use_scaler = resolve_amp(train.amp, device)
    # fused=None leaves torch's own choice (foreach); the fused kernel is asked for explicitly
    optimizer = torch.optim.AdamW(param_groups(module, train.weight_decay), lr=train.lr,
                                  fused=switch_on(train.fused_adamw, cuda) or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                  warmup_cosine(total_steps, train.warmup_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    return LoopContext(model, module, optimizer, scheduler, scaler, loss_fn, train, device,
                       amp_dtype, dist, step_hook, memory_format=images_format)


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    best_metric: float | None
    stopped_early: bool
    resumed_from: int | None          # the epoch a resumed run continued after, else None
    global_step: int
    extra: dict = field(default_factory=dict)


def _improved(value: float, best: float | None) -> bool:
    if best is None:
        return True
    if math.isnan(value):
        return False
    return math.isnan(best) or value > best


def fit(model: nn.Module, *, train_batches: Callable[[int], Iterable[Batch]],
        val_batches: Callable[[], Iterable[Batch]], steps_per_epoch: int, train: TrainParams,
        task: str, loss_fn: LossFn, device: torch.device, checkpoints: CheckpointStore,
        params_hash: str, log: EpochLogger | None = None, dist: DistContext = DistContext(),
        step_hook: StepHook | None = None, extra: dict | None = None) -> FitResult:
    """Train `model` (already on `device`) for train.epochs, resuming from `checkpoints` when
    they belong to `params_hash`. `train_batches(epoch)` yields at least `steps_per_epoch`
    micro-batches; `val_batches()` yields this rank's share of the validation split. On return,
    the model holds the best epoch's weights."""
    total_steps = train.epochs * steps_per_epoch // train.grad_accum_steps
    ctx = make_context(model, train=train, loss_fn=loss_fn, device=device,
                       total_steps=total_steps, dist=dist, step_hook=step_hook)
    module, optimizer, scheduler, scaler = ctx.module, ctx.optimizer, ctx.scheduler, ctx.scaler

    state = TrainerState(epoch=-1, global_step=0, best_metric=None, best_epoch=None,
                         epochs_without_improvement=0, history=[], params_hash=params_hash,
                         extra=dict(extra or {}))
    found = checkpoints.resumable(params_hash) if dist.is_main else None
    if dist.enabled:  # every rank resumes from what rank 0 found (or none)
        shared = [str(found[0]) if found else None]
        torch_dist.broadcast_object_list(shared, src=0)
        found = checkpoints.latest() if shared[0] else None
    resumed_from = None
    if found is not None:
        folder, state = found
        state.extra = {**(extra or {}), **state.extra}
        checkpoints.restore(folder, module, optimizer, scheduler, scaler,
                            restore_rng_state=True)
        if dist.rank > 0:  # one saved RNG state: give other ranks their own dropout stream
            torch.manual_seed(train.seed + 1000 * dist.rank + state.epoch)
        ctx.global_step = state.global_step
        resumed_from = state.epoch

    metric_key = "val_" + metric_fns.primary_metric(task)
    stopped_early = False
    for epoch in range(state.epoch + 1, train.epochs):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        row = {"epoch": epoch, **train_epoch(ctx, train_batches(epoch), steps_per_epoch, epoch)}
        row.update(validate(ctx, val_batches(), task))
        row["peak_memory_mb"] = peak_memory_mb(device)
        value = float(row[metric_key])
        state.epoch, state.global_step = epoch, ctx.global_step
        state.history.append(row)
        if _improved(value, state.best_metric):
            state.best_metric, state.best_epoch = value, epoch
            state.epochs_without_improvement = 0
            if dist.is_main:
                checkpoints.save_best(module, epoch)
        else:
            state.epochs_without_improvement += 1
        patience = train.early_stopping_patience
        stopped_early = patience > 0 and state.epochs_without_improvement >= patience
        last = stopped_early or epoch == train.epochs - 1
        if dist.is_main:
            if log is not None:
                log(row, epoch)
            if last or (epoch + 1) % train.checkpoint_every == 0:
                state.finished = last
                checkpoints.save(module, optimizer, scheduler, scaler, state)
        if dist.enabled:
            torch_dist.barrier()  # other ranks must not read a half-written best checkpoint
        if stopped_early:
            break

    if state.best_epoch is None:
        raise RuntimeError("no epoch was trained (train.epochs already reached by a checkpoint)")
    checkpoints.load_best(module, state.best_epoch)
    return FitResult(history=state.history, best_epoch=state.best_epoch,
                     best_metric=state.best_metric, stopped_early=stopped_early,
                     resumed_from=resumed_from, global_step=ctx.global_step, extra=state.extra)

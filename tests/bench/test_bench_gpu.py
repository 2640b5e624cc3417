"""`make bench-gpu`: the GPU training path measured side by side in one run.

On CUDA: ViT-B-32 train-step throughput and peak memory (LoRA r16 / full / frozen, bf16 autocast,
batch 256), each speed-up switch of `train:` flipped on and off, inference at batch 1024, the
WebDataset loader over real shards at 224 px against the train-step rate it must feed, JPEG
decoding with nvJPEG against PIL, DDP with one process through torchrun on NCCL, and a profile of
the LoRA step. Without CUDA the same code runs with the `tiny` config and small batches, and the
report says that the GPU figures are absent. BENCH_GPU_JSON=path also writes the figures as JSON.
"""
from __future__ import annotations

import json
import math
import os
import random

import torch

from tests.bench import gpu_measure as gm

MODES = ("lora", "full", "frozen")


def _mb(value: float | None) -> str:
    return "     -" if value is None else f"{value:6.0f}"


def _switch_rows(cfg: gm.BenchConfig) -> list[tuple[str, dict, dict]]:
    """(name, params with it off, params with it on); everything else as in the recipe."""
    rows = [("tf32 (amp off)", {"amp": "off", "tf32": "off"}, {"amp": "off", "tf32": "on"}),
            ("bf16 autocast (vs tf32)", {"amp": "off", "tf32": "on"},
             {"amp": "bf16", "tf32": "on"}),
            ("channels_last", {"channels_last": "off"}, {"channels_last": "on"}),
            ("fused_adamw", {"fused_adamw": "off"}, {"fused_adamw": "on"}),
            ("grad_checkpointing", {"grad_checkpointing": False}, {"grad_checkpointing": True})]
    if cfg.measure_compile:
        rows.append(("compile", {"compile": "off"}, {"compile": "on"}))
    if cfg.cuda:  # pinning does nothing without a GPU to copy to
        rows.append(("pin_memory", {"pin_memory": "off"}, {"pin_memory": "on"}))
    return rows


def test_gpu_path_side_by_side(tmp_path):
    cfg = gm.bench_config()
    name = torch.cuda.get_device_name(cfg.device) if cfg.cuda else "CPU"
    print(f"\n=== bench-gpu: {cfg.device} ({name}), torch {torch.__version__}, model "
          f"{cfg.model_name} (random init), train batch {cfg.train_batch}, inference batch "
          f"{cfg.infer_batch}, {cfg.warmup} warm-up + {cfg.steps} timed steps ===")
    if not cfg.cuda:
        print("!!! No CUDA device: the GPU figures are ABSENT. The same code path ran with the "
              "tiny config on CPU;\n!!! these numbers say nothing about ViT-B-32 on an H100.")
    figures: dict = {"device": str(cfg.device), "device_name": name, "model": cfg.model_name}
    cache: dict[str, dict] = {}

    def train(finetune: str = "lora", **changes) -> dict:
        params = gm.recipe(cfg, **changes)
        key = finetune + params.model_dump_json()
        if key not in cache:
            cache[key] = gm.train_rate(cfg, params, finetune)
        return cache[key]

    # ---- train step: three fine-tune modes
    recipe = gm.recipe(cfg)
    amp = "bf16 autocast" if recipe.amp != "off" and cfg.cuda else "fp32 (CPU: amp off)"
    print(f"\ntrain step ({amp}, recipe switches):")
    print("  mode     trainable / total params    samples/s   peak MB")
    modes = {mode: train(mode) for mode in MODES}
    for mode, result in modes.items():
        print(f"  {mode:7s} {result['trainable']:>13,d} / {result['total']:<13,d} "
              f"{result['samples_per_s']:9.1f}   {_mb(result['peak_mb'])}")
    lora, full, frozen = (modes[m]["samples_per_s"] for m in MODES)
    print(f"  LoRA / full {lora / full:.2f}x   frozen / full {frozen / full:.2f}x")
    figures["train"] = modes

    # ---- speed-up switches, each flipped from the recipe on the LoRA step
    print("\nspeed-up switches (LoRA step; each flipped, the rest as in the recipe):")
    print("  switch                    off samples/s  on samples/s  on/off  peak off  peak on")
    figures["switches"] = {}
    for label, off, on in _switch_rows(cfg):
        low, high = train(**off), train(**on)
        ratio = high["samples_per_s"] / low["samples_per_s"]
        print(f"  {label:25s} {low['samples_per_s']:13.1f} {high['samples_per_s']:13.1f} "
              f"{ratio:6.2f}x   {_mb(low['peak_mb'])}   {_mb(high['peak_mb'])}")
        figures["switches"][label] = {"off": low, "on": high, "on_over_off": ratio}
        assert math.isfinite(low["loss"]) and math.isfinite(high["loss"]), label
    if not cfg.measure_compile:
        print("  compile: not measured here (inductor needs minutes on a small CPU; "
              "BENCH_GPU_COMPILE=1 measures it)")

    # ---- inference
    infer = gm.inference_rate(cfg, recipe)
    print(f"\ninference (training.predict, LoRA, batch {cfg.infer_batch}): "
          f"{infer['pairs_per_s']:.1f} image-text pairs/s, peak {_mb(infer['peak_mb']).strip()} MB")
    figures["inference"] = infer

    # ---- loader over real shards, against the train step it must feed
    shards = tmp_path / "shards"
    sizes = gm.write_bench_shards(shards, cfg.shard_images)
    model = gm.build(cfg, "lora")
    side = gm.image_size(model)
    print(f"\nWebDataset train loader ({cfg.shard_images} photo-like JPEGs, short side "
          f"{gm.SHARD_SHORT_SIDE} → {side} px, batch {cfg.train_batch}) vs the LoRA step "
          f"({lora:.1f} samples/s):")
    print("  workers  pin_memory  samples/s  first batch s  loader / train step")
    figures["loader"] = []
    pins = ("off", "on") if cfg.cuda else ("off",)
    for workers in cfg.loader_workers:
        for pin in pins:
            result = gm.loader_rate(cfg, shards, sizes, model, workers, pin)
            result.update(workers=workers, pin_memory=pin,
                          loader_over_train=result["samples_per_s"] / lora)
            figures["loader"].append(result)
            print(f"  {workers:7d}  {pin:10s} {result['samples_per_s']:9.1f}  "
                  f"{result['first_batch_s']:13.2f}  {result['loader_over_train']:8.2f}x")
            assert result["side"] == side and result["pinned"] == (pin == "on")
    print("  (a loader is built per epoch; 'first batch s' is what persistent_workers could "
          "save once per epoch)")

    # ---- JPEG decoding: PIL in a loader worker vs torchvision.io.decode_jpeg on the device
    rng = random.Random(1)
    jpegs = [gm.photo_jpeg(i % 2, rng) for i in range(cfg.train_batch)]
    decode = gm.decode_rates(cfg, jpegs, model)
    print(f"\nJPEG decode + preprocess of {len(jpegs)} shard JPEGs to {side} px:")
    print(f"  PIL + model.preprocess, one CPU core   {decode['pil_per_s']:9.1f} images/s")
    print(f"  decode_jpeg + resize on {cfg.device.type:4s}           "
          f"{decode['device_per_s']:9.1f} images/s  ({decode['device_per_s'] / decode['pil_per_s']:.2f}x"
          f" one core)")
    print(f"  tensors differ by max {decode['max_abs_diff']:.3f}, mean "
          f"{decode['mean_abs_diff']:.4f} (normalised units; resampling and IDCT rounding)")
    figures["decode"] = decode
    # same picture: only resampling/IDCT rounding may differ (a wrong channel order or scale
    # would move the mean by tenths)
    assert decode["mean_abs_diff"] < 0.05
    del model

    # ---- DDP, one process through torchrun
    ddp = gm.ddp_rate(cfg)
    print(f"\nDDP through torchrun, 1 process, {ddp['backend']}: {ddp['samples_per_s']:.1f} "
          f"samples/s, peak {_mb(ddp['peak_mb']).strip()} MB; without DDP {lora:.1f} "
          f"(DDP / plain {ddp['samples_per_s'] / lora:.2f}x)")
    figures["ddp"] = ddp
    assert ddp["world_size"] == 1 and ddp["backend"] == ("nccl" if cfg.cuda else "gloo")

    # ---- where the LoRA step's time goes
    print("\nprofile of the LoRA recipe step (top operators by self time):")
    print(gm.profile_train(cfg, recipe))

    # ---- targets
    if cfg.cuda:
        best_loader = max(r["loader_over_train"] for r in figures["loader"])
        checks = [("LoRA training samples/s", lora, cfg.targets["lora_samples_per_s"]),
                  ("inference pairs/s", infer["pairs_per_s"],
                   cfg.targets["inference_pairs_per_s"]),
                  ("loader / train step", best_loader, cfg.targets["loader_over_train"])]
        print("targets (one H100):")
        for label, value, target in checks:
            print(f"  {label:25s} {value:9.2f}  target ≥ {target}: "
                  f"{'met' if value >= target else 'NOT met (see the profile above)'}")
    else:
        print("targets (one H100): GPU figures ABSENT, no CUDA device. On a GPU machine run "
              "`make bench-gpu` (README, 'GPU').")
    if os.environ.get("BENCH_GPU_JSON"):
        with open(os.environ["BENCH_GPU_JSON"], "w") as handle:
            json.dump(figures, handle, indent=2)

    counts = {m: modes[m]["trainable"] for m in MODES}
    assert counts["frozen"] < counts["lora"] < counts["full"]
    assert all(r["samples_per_s"] > 0 for r in modes.values()) and infer["pairs_per_s"] > 0

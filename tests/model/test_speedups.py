"""The train.* speed-up switches on CPU: each one trains a step without error and, where it only
changes how the arithmetic is laid out, ends with the same weights as the plain step. Their speed
is measured by `make bench-gpu` (tests/bench/test_bench_gpu.py), not here."""
from __future__ import annotations

import pytest
import torch
import yaml

from pipeline.model import build_from_model_params, total_loss
from pipeline.model import data, training
from pipeline.model.data import Batch
from pipeline.params import ModelParams, ParamsError, TrainParams, parse_params, switch_on

CPU = torch.device("cpu")
SWITCHES = ("tf32", "channels_last", "fused_adamw", "compile", "pin_memory")


def tiny_model():
    # dropout off so two runs of the same step are comparable
    return build_from_model_params(ModelParams(head={"dropout": 0.0}), "hateful_memes", seed=3)


def synthetic_batch(model, size: int = 4) -> Batch:
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1] * (size // 2))
    return Batch(images=torch.randn(size, 3, 64, 64, generator=generator),
                 tokens=model.tokenize([f"caption {i}" for i in range(size)]),
                 labels=labels, valid=labels == 0, ids=[str(i) for i in range(size)])


def one_step(**switches) -> tuple[dict, dict[str, torch.Tensor]]:
    """Train one optimizer step on CPU; returns the epoch row and the trainable weights after."""
    model = tiny_model()
    train = TrainParams(lr=1e-2, warmup_steps=0, **switches)
    ctx = training.make_context(model, train=train, loss_fn=total_loss, device=CPU,
                                total_steps=1)
    row = training.train_epoch(ctx, [synthetic_batch(model)], steps=1, epoch=0)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return row, weights


@pytest.fixture(scope="module")
def plain():
    return one_step(**{name: "off" for name in SWITCHES})


def assert_same_weights(left: dict, right: dict, **tolerance) -> None:
    assert left.keys() == right.keys()
    for name in left:
        torch.testing.assert_close(left[name], right[name], msg=name, **tolerance)


def test_auto_switches_are_off_on_cpu_and_on_for_cuda():
    assert switch_on("auto", cuda=True) and not switch_on("auto", cuda=False)
    assert switch_on("on", cuda=False) and not switch_on("off", cuda=True)
    train = TrainParams()
    assert (train.tf32, train.fused_adamw, train.pin_memory) == ("auto",) * 3
    assert (train.channels_last, train.compile) == ("off", "off")


@pytest.mark.parametrize("key", SWITCHES)
def test_a_switch_with_a_wrong_value_names_the_key(key):
    with pytest.raises(ParamsError, match=rf"train\.{key}:.*'auto', 'on' or 'off'"):
        parse_params({"train": {key: "yes"}})


def test_bare_yaml_on_and_off_read_as_switches():
    raw = yaml.safe_load("train: {compile: on, channels_last: off, tf32: auto}")
    assert raw["train"]["compile"] is True  # what YAML 1.1 makes of a bare `on`
    train = parse_params(raw).train
    assert (train.compile, train.channels_last, train.tf32) == ("on", "off", "auto")


def test_the_plain_step_trains(plain):
    row, weights = plain
    assert torch.isfinite(torch.tensor(row["train_loss"])) and row["train_samples"] == 4
    untouched = tiny_model()
    before = {n: p for n, p in untouched.named_parameters() if p.requires_grad}
    assert any(not torch.equal(before[n], weights[n]) for n in weights)


def test_tf32_is_a_no_op_on_cpu(plain):
    row, weights = one_step(tf32="on")
    assert row["train_loss"] == plain[0]["train_loss"]
    assert_same_weights(weights, plain[1], rtol=0, atol=0)


def test_channels_last_gives_the_same_step(plain):
    row, weights = one_step(channels_last="on")
    assert row["train_loss"] == pytest.approx(plain[0]["train_loss"], rel=1e-5)
    assert_same_weights(weights, plain[1], rtol=1e-4, atol=1e-5)


def test_fused_adamw_gives_the_same_step(plain):
    _, weights = one_step(fused_adamw="on")
    assert_same_weights(weights, plain[1], rtol=1e-4, atol=1e-5)


def test_compiled_step_gives_the_same_step(plain, monkeypatch):
    # "eager" runs dynamo's capture of the step (what inductor would compile) without the
    # minutes of kernel generation; the bench compiles with inductor
    monkeypatch.setattr(training, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    row, weights = one_step(compile="on")
    assert row["train_loss"] == pytest.approx(plain[0]["train_loss"], rel=1e-5)
    assert_same_weights(weights, plain[1], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_pin_memory_is_off_without_cuda():
    assert not any(data.pin_memory(choice, device) for choice in ("auto", "on", "off")
                   for device in ("auto", "cpu"))

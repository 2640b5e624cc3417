"""Training's pure helpers: the LR schedule, weight-decay groups, the AMP choice."""
from __future__ import annotations

import pytest
import torch

from pipeline.model import training


def test_warmup_then_cosine_schedule():
    factor = training.warmup_cosine(total_steps=100, warmup_steps=10)
    assert factor(0) < factor(5) < factor(9) <= 1.0
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5)
    assert factor(100) == pytest.approx(0.0, abs=1e-9)


def test_no_weight_decay_on_biases_norms_and_scalars():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    model.register_parameter("logit_scale", torch.nn.Parameter(torch.ones(())))
    decay, no_decay = training.param_groups(model, 0.1)
    assert decay["params"] == [model[0].weight] and decay["weight_decay"] == 0.1
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0


def test_amp_choice():
    cpu = torch.device("cpu")
    assert training.resolve_amp("auto", cpu) == (None, False)
    assert training.resolve_amp("bf16", cpu) == (torch.bfloat16, False)
    assert training.resolve_amp("off", cpu) == (None, False)

"""LoRA on both towers' attention, and which parameters each fine-tune mode trains."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.model import build_model, count_parameters, total_loss
from pipeline.model.lora import ExactLoraMultiheadAttention, apply_lora, is_lora_parameter
from pipeline.model.towers import create_towers
from pipeline.params import LoraParams, parse_params


def make_params(**model):
    return parse_params({"model": model})


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def train_steps(model: nn.Module, steps: int) -> None:
    """Plain SGD without weight decay: a parameter moves only if it received a gradient."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 64, 64, generator=generator)
    tokens = model.tokenize([f"text {i}" for i in range(6)])
    labels = torch.tensor([0, 1, 0, 1, 0, 0])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss, _ = total_loss(model(images, tokens), labels, labels == 0)
        loss.backward()
        optimizer.step()


def changed_names(before: dict, model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}


def test_lora_wraps_the_attention_of_both_towers():
    model = build_model(make_params(finetune="lora"))
    wrapped = [name for name, module in model.clip.named_modules()
               if isinstance(module, ExactLoraMultiheadAttention)]
    assert any(name.startswith("visual.") for name in wrapped)
    assert any(name.startswith("transformer.") for name in wrapped)
    assert len(wrapped) == 4  # tiny: two layers per tower
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    lora_names = {name for name in trainable if name.startswith("clip.")}
    assert lora_names and all(is_lora_parameter(name) for name in lora_names)
    # in_proj and out_proj both carry an adapter in every wrapped module
    for name in wrapped:
        assert f"clip.{name}.lora_A.default.weight" in lora_names
        assert f"clip.{name}.base_layer.out_proj.lora_B.default.weight" in lora_names


def test_lora_trains_only_adapters_and_head():
    model = build_model(make_params(finetune="lora"))
    before = snapshot(model)
    # Two steps: LoRA B starts at zero, so A first receives a gradient in the second step; and a
    # second forward is where merge-then-subtract schemes leave rounding in the frozen weights.
    train_steps(model, steps=2)
    changed = changed_names(before, model)
    intended = {name for name, p in model.named_parameters() if p.requires_grad}
    assert changed == intended
    assert any(".lora_A." in name for name in changed)
    assert any(".lora_B." in name for name in changed)
    assert any(name.startswith("head.") for name in changed)
    frozen = [name for name in before if name not in intended]
    assert frozen and all(not name.startswith("head.") for name in frozen)
    params = dict(model.named_parameters())
    assert all(torch.equal(before[name], params[name]) for name in frozen)  # byte-identical


def test_frozen_mode_trains_only_the_head():
    model = build_model(make_params(finetune="frozen"))
    before = snapshot(model)
    train_steps(model, steps=1)
    changed = changed_names(before, model)
    head_names = {name for name, _ in model.named_parameters() if name.startswith("head.")}
    assert changed == head_names
    assert not any(is_lora_parameter(name) for name in before)


def test_full_mode_trains_the_towers_without_lora():
    model = build_model(make_params(finetune="full"))
    before = snapshot(model)
    train_steps(model, steps=1)
    changed = changed_names(before, model)
    assert not any(is_lora_parameter(name) for name in before)
    for name in ("clip.visual.conv1.weight", "clip.transformer.resblocks.0.attn.in_proj_weight",
                 "clip.token_embedding.weight", "clip.logit_scale", "head.classifier.weight"):
        assert name in changed


def test_parameter_counts_per_mode():
    counts = {mode: count_parameters(build_model(make_params(finetune=mode)))
              for mode in ("lora", "full", "frozen")}
    head = counts["frozen"]["trainable"]
    lora_total = counts["lora"]["total"] - counts["full"]["total"]
    assert counts["full"]["trainable"] == counts["full"]["total"]
    assert counts["frozen"]["total"] == counts["full"]["total"]
    assert lora_total > 0
    assert counts["lora"]["trainable"] == head + lora_total
    assert counts["lora"]["trainable"] < counts["full"]["trainable"] / 4


def test_lora_rank_sets_the_adapter_size():
    small = count_parameters(build_model(make_params(lora={"rank": 2})))
    large = count_parameters(build_model(make_params(lora={"rank": 4})))
    assert large["trainable"] - small["trainable"] > 0
    # each adapter is A [r, in] + B [out, r]: the LoRA share grows linearly with the rank
    head = count_parameters(build_model(make_params(finetune="frozen")))["trainable"]
    assert (large["trainable"] - head) == 2 * (small["trainable"] - head)


def test_fresh_lora_leaves_the_towers_output_unchanged():
    torch.manual_seed(0)
    towers = create_towers("tiny", None)
    images = torch.randn(2, 3, 64, 64)
    tokens = towers.tokenizer(["one", "two"])
    with torch.no_grad():
        before = (towers.clip.encode_image(images), towers.clip.encode_text(tokens))
        apply_lora(towers.clip, LoraParams(rank=4))
        after = (towers.clip.encode_image(images), towers.clip.encode_text(tokens))
    torch.testing.assert_close(before[0], after[0])
    torch.testing.assert_close(before[1], after[1])


def test_adapter_delta_is_applied_once_to_in_and_out_proj():
    # Regression test for peft 0.21's MHA layer, which adds the out_proj delta twice.
    torch.manual_seed(0)
    holder = nn.Module()
    holder.attn = nn.MultiheadAttention(16, 2, batch_first=True)
    reference = nn.MultiheadAttention(16, 2, batch_first=True)
    reference.load_state_dict(holder.attn.state_dict())
    apply_lora(holder, LoraParams(rank=4, alpha=8, dropout=0.0))
    lora = holder.attn
    with torch.no_grad():
        lora.lora_B["default"].weight.normal_()
        lora.base_layer.out_proj.lora_B["default"].weight.normal_()
    x = torch.randn(2, 5, 16)
    out = lora(x, x, x, need_weights=False)[0]
    merged = reference.state_dict()
    merged["in_proj_weight"] += lora.get_delta_weight("default")
    merged["out_proj.weight"] += lora.base_layer.out_proj.get_delta_weight("default")
    reference.load_state_dict(merged)
    expected = reference(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for name, p in holder.named_parameters() if is_lora_parameter(name))


def test_model_without_attention_modules_is_refused():
    with pytest.raises(ValueError, match="no attention or projection layer LoRA knows"):
        apply_lora(nn.Sequential(nn.Linear(4, 4)), LoraParams())

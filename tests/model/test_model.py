"""MMGuardModel: shapes, heads and baselines, weights sources, predict_proba."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.model import build_model, count_parameters, save_tower_weights
from pipeline.model.towers import create_towers
from pipeline.params import ParamsError, parse_params


def make_params(task: str = "hateful_memes", seed: int = 0, **model):
    return parse_params({"task": task, "model": model, "train": {"seed": seed}})


def batch(model, size: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, 64, 64, generator=generator)
    tokens = model.tokenize([f"caption number {i}" for i in range(size)])
    return images, tokens


def pil_images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 50, 3), dtype=np.uint8))
            for i in range(count)]


@pytest.fixture(scope="module")
def model():
    return build_model(make_params()).eval()


def test_forward_shapes_and_normalised_embeddings(model):
    images, tokens = batch(model)
    assert tokens.dtype == torch.long and tokens.shape == (4, 32)
    out = model(images, tokens)
    assert out.logits.shape == (4, 2)
    assert out.image_emb.shape == out.text_emb.shape == (4, 128)
    torch.testing.assert_close(out.image_emb.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(out.text_emb.norm(dim=-1), torch.ones(4))
    assert out.logit_scale.ndim == 0 and 0 < float(out.logit_scale) <= 100
    assert model.task == "hateful_memes" and model.class_names == ["not_hateful", "hateful"]


@pytest.mark.parametrize("fusion", ["transformer", "concat_mlp"])
def test_moderation7_has_seven_logits(fusion):
    model = build_model(make_params(task="moderation7", fusion=fusion))
    out = model(*batch(model, size=3))
    assert out.logits.shape == (3, 7)
    assert len(model.class_names) == 7


def test_caption_swap_changes_the_prediction(model):
    images, tokens = batch(model, size=2)
    swapped = tokens.flip(0)  # each image now has the other caption
    with torch.no_grad():
        original = model(images, tokens).logits
        after_swap = model(images, swapped).logits
    assert not torch.allclose(original, after_swap)


@pytest.mark.parametrize("fusion", ["transformer", "concat_mlp"])
def test_text_only_baseline_ignores_the_image(fusion):
    model = build_model(make_params(fusion=fusion, modality="text")).eval()
    images, tokens = batch(model)
    with torch.no_grad():
        logits = model(images, tokens).logits
        other_images = model(torch.randn_like(images), tokens).logits
        other_texts = model(images, tokens.flip(0)).logits
    torch.testing.assert_close(logits, other_images)
    assert not torch.allclose(logits, other_texts)
    # the absent modality has no token or input slot at all (not a zero-filled one)
    assert not any("image" in name for name, _ in model.head.named_parameters())


@pytest.mark.parametrize("fusion", ["transformer", "concat_mlp"])
def test_image_only_baseline_ignores_the_text(fusion):
    model = build_model(make_params(fusion=fusion, modality="image")).eval()
    images, tokens = batch(model)
    with torch.no_grad():
        logits = model(images, tokens).logits
        other_texts = model(images, tokens.flip(0)).logits
    torch.testing.assert_close(logits, other_texts)
    assert not any("text" in name for name, _ in model.head.named_parameters())


def test_same_seed_same_model_and_other_seed_differs():
    first = build_model(make_params(seed=3)).state_dict()
    torch.manual_seed(12345)  # the global RNG state must not matter
    second = build_model(make_params(seed=3)).state_dict()
    other = build_model(make_params(seed=4)).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["head.classifier.weight"], other["head.classifier.weight"])


def test_weights_file_loads_through_pretrained(tmp_path):
    torch.manual_seed(7)
    towers = create_towers("tiny", None)
    path = save_tower_weights(towers.clip, tmp_path / "tiny-weights.safetensors")
    model = build_model(make_params(pretrained=str(path), finetune="full", seed=99))
    saved = towers.clip.state_dict()
    loaded = model.clip.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    # and under LoRA the wrapped base weights are the file's too
    lora_model = build_model(make_params(pretrained=str(path), finetune="lora", seed=99))
    lora_state = lora_model.clip.state_dict()
    assert torch.equal(lora_state["transformer.resblocks.0.attn.base_layer.in_proj_weight"],
                       saved["transformer.resblocks.0.attn.in_proj_weight"])


def test_unknown_model_name_names_the_allowed_values():
    with pytest.raises(ValueError, match="not an open_clip model config.*ViT-B-32"):
        build_model(make_params(name="ViT-Nope"))


def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "weights.safetensors"
    with pytest.raises(ValueError, match=f"weights file '{missing}' does not exist"):
        build_model(make_params(pretrained=str(missing)))


def test_unknown_pretrained_tag_lists_the_tags():
    with pytest.raises(ValueError, match="laion2b_s34b_b79k"):
        build_model(make_params(name="ViT-B-32", pretrained="no_such_tag"))


def test_head_width_must_split_into_heads():
    with pytest.raises(ParamsError, match="model.head"):
        make_params(head={"width": 100, "heads": 3})


def test_predict_proba_is_batched_and_restores_mode(model):
    images = pil_images(5)
    texts = ["first", "second text", "", "a much longer caption " * 20, "ünïcode ✓"]
    model.train()
    whole = model.predict_proba(images, texts, batch_size=64)
    assert model.training  # mode restored
    in_pairs = model.predict_proba(images, texts, batch_size=2)
    model.eval()
    assert whole.shape == (5, 2) and whole.dtype == np.float32
    np.testing.assert_allclose(whole.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(whole, in_pairs, atol=1e-5)


def test_predict_proba_accepts_any_pil_mode(model):
    rgb = pil_images(1)[0]
    images = [rgb.convert("CMYK"), rgb.convert("L"), rgb.convert("P"), rgb.convert("RGBA")]
    probs = model.predict_proba(images, ["x"] * 4)
    assert probs.shape == (4, 2) and np.isfinite(probs).all()


def test_predict_proba_bad_inputs(model):
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        model.predict_proba(pil_images(2), ["only one"])
    with pytest.raises(ValueError, match="batch_size"):
        model.predict_proba(pil_images(1), ["x"], batch_size=0)
    assert model.predict_proba([], []).shape == (0, 2)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = build_model(make_params(head={"dropout": 0.0}))
    images, tokens = batch(model)

    def lora_grads():
        model.zero_grad()
        model(images, tokens).logits.sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    plain = lora_grads()
    model.set_grad_checkpointing(True)
    checkpointed = lora_grads()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], msg=name)


def test_count_parameters_totals():
    model = build_model(make_params(finetune="full"))
    counts = count_parameters(model)
    assert counts["total"] == counts["trainable"] == sum(p.numel() for p in model.parameters())

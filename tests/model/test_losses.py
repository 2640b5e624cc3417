"""Cross-entropy + contrastive loss over valid pairs only."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.model import ModelOutput, contrastive_loss, total_loss


def embeddings(batch: int, dim: int = 8, seed: int = 0, requires_grad: bool = False):
    generator = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1)
    text = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1)
    return image.requires_grad_(requires_grad), text.requires_grad_(requires_grad)


SCALE = torch.tensor(10.0)


def test_masked_items_do_not_affect_the_loss_or_get_gradient():
    image, text = embeddings(6, requires_grad=True)
    mask = torch.tensor([True, False, True, True, False, True])
    loss = contrastive_loss(image, text, SCALE, mask)
    loss.backward()
    assert image.grad[~mask].abs().sum() == 0 and text.grad[~mask].abs().sum() == 0
    assert image.grad[mask].abs().sum() > 0
    other_image, other_text = embeddings(6, seed=1)
    replaced_image = torch.where(mask[:, None], image.detach(), other_image)
    replaced_text = torch.where(mask[:, None], text.detach(), other_text)
    torch.testing.assert_close(contrastive_loss(replaced_image, replaced_text, SCALE, mask),
                               loss.detach())
    # and it equals the loss over the valid rows alone
    torch.testing.assert_close(
        contrastive_loss(image[mask], text[mask], SCALE, torch.ones(4, dtype=torch.bool)),
        loss.detach())


def test_matches_a_hand_computed_two_pair_loss():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = contrastive_loss(image, text, torch.tensor(2.0), torch.tensor([True, True]))
    # each row: logits (2, 0), target the 2 -> -log(e^2 / (e^2 + 1)); both directions alike
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_aligned_pairs_score_lower_than_shuffled_ones():
    image, _ = embeddings(5)
    mask = torch.ones(5, dtype=torch.bool)
    aligned = contrastive_loss(image, image, SCALE, mask)
    shuffled = contrastive_loss(image, image.roll(1, dims=0), SCALE, mask)
    assert aligned < shuffled


@pytest.mark.parametrize("valid", [[False, False, False], [False, True, False]])
def test_fewer_than_two_valid_pairs_give_zero_not_nan(valid):
    image, text = embeddings(3, requires_grad=True)
    loss = contrastive_loss(image, text, SCALE, torch.tensor(valid))
    assert float(loss.detach()) == 0.0
    loss.backward()  # still connected to the graph (DDP needs every parameter to get a gradient)
    assert torch.equal(image.grad, torch.zeros_like(image))


def test_mask_of_the_wrong_length_is_refused():
    image, text = embeddings(3)
    with pytest.raises(ValueError, match="valid_mask has shape"):
        contrastive_loss(image, text, SCALE, torch.tensor([True, True]))


def _output(batch: int = 4, classes: int = 3, requires_grad: bool = True) -> ModelOutput:
    image, text = embeddings(batch, requires_grad=requires_grad)
    logits = torch.randn(batch, classes, generator=torch.Generator().manual_seed(5))
    return ModelOutput(logits=logits.requires_grad_(requires_grad), image_emb=image,
                       text_emb=text, logit_scale=torch.tensor(14.0, requires_grad=requires_grad))


def test_total_loss_weights_the_parts():
    output = _output()
    labels = torch.tensor([0, 2, 1, 0])
    valid = torch.tensor([True, False, True, True])
    loss, parts = total_loss(output, labels, valid, ce_weight=0.5, contrastive_weight=2.0)
    assert set(parts) == {"ce", "contrastive"}
    torch.testing.assert_close(parts["ce"], F.cross_entropy(output.logits.detach(), labels))
    assert float(parts["contrastive"]) > 0
    torch.testing.assert_close(loss.detach(), 0.5 * parts["ce"] + 2.0 * parts["contrastive"])
    assert not parts["ce"].requires_grad and not parts["contrastive"].requires_grad
    loss.backward()
    for tensor in (output.logits, output.image_emb, output.text_emb, output.logit_scale):
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()


def test_total_loss_without_contrastive_is_cross_entropy():
    output = _output(requires_grad=False)
    labels = torch.tensor([1, 1, 0, 2])
    loss, parts = total_loss(output, labels, torch.ones(4, dtype=torch.bool), 1.0, 0.0)
    torch.testing.assert_close(loss, F.cross_entropy(output.logits, labels))

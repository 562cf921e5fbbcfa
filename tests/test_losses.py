"""The contrastive and total training losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ipt.core.training.losses import contrastive_loss, ipt_loss


def _by_hand(vectors: list[list[list[float]]], t: float) -> float:
    """Official SupCon ('all' mode) written out with plain Python loops over anchors and positives."""
    flat = [(j, v) for j, img in enumerate(vectors) for v in img]
    norm = [(j, [x / math.sqrt(sum(y * y for y in v)) for x in v]) for j, v in flat]
    cos = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    total = 0.0
    for ai, (ja, a) in enumerate(norm):
        denom = sum(math.exp(cos(a, c) / t) for ci, (_, c) in enumerate(norm) if ci != ai)
        pos = [cos(a, p) / t - math.log(denom) for pi, (jp, p) in enumerate(norm) if pi != ai and jp == ja]
        total += -sum(pos) / len(pos)
    return total / len(norm)


def test_contrastive_matches_hand_computed_example() -> None:
    # B=2 images, N=2 tokens, D=2: image 0 points right-ish, image 1 up-ish.
    vectors = [[[1.0, 0.0], [2.0, 1.0]], [[0.0, 1.0], [-1.0, 3.0]]]
    got = contrastive_loss(torch.tensor(vectors), temperature=0.5).item()
    assert got == pytest.approx(_by_hand(vectors, 0.5), rel=1e-6)
    # The same number worked out on paper for anchor (1,0): cos to (2,1) = 2/sqrt5, to (0,1) = 0,
    # to (-1,3) = -1/sqrt10; with T=0.5 its term is -(2c1 - log(e^{2c1} + 1 + e^{2c3})).
    c1, c3 = 2 / math.sqrt(5), -1 / math.sqrt(10)
    first = -(2 * c1 - math.log(math.exp(2 * c1) + 1 + math.exp(2 * c3)))
    assert first > 0 and got > 0


def test_contrastive_random_batch_matches_loops_and_temperature() -> None:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    for t in (0.07, 1.0):
        assert contrastive_loss(tokens, t).item() == pytest.approx(_by_hand(tokens.tolist(), t), rel=1e-5)


def test_same_image_tokens_score_lower_than_random() -> None:
    g = torch.Generator().manual_seed(1)
    random_tokens = torch.randn(4, 16, 8, generator=g)
    clustered = torch.randn(4, 1, 8, generator=g) + 0.01 * torch.randn(4, 16, 8, generator=g)
    assert contrastive_loss(clustered).item() < contrastive_loss(random_tokens).item() - 1.0


def test_single_image_gives_zero_with_gradient_path() -> None:
    tokens = torch.randn(1, 8, 4, requires_grad=True)
    loss = contrastive_loss(tokens)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(tokens.grad, torch.zeros_like(tokens))


def test_ipt_loss_weight_zero_is_plain_l1_and_weight_adds_contrastive() -> None:
    g = torch.Generator().manual_seed(2)
    out, target = torch.rand(2, 3, 8, 8, generator=g) * 255, torch.rand(2, 3, 8, 8, generator=g) * 255
    tokens = torch.randn(2, 4, 6, generator=g)
    total, l1, con = ipt_loss(out, target, tokens, weight=0.0)
    assert torch.equal(total, F.l1_loss(out, target)) and torch.equal(l1, total) and con.item() == 0.0
    total, l1, con = ipt_loss(out, target, tokens, weight=0.1, temperature=0.07)
    assert total.item() == pytest.approx(F.l1_loss(out, target).item() + 0.1 * contrastive_loss(tokens).item())


def test_bad_token_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(B, N, D\)"):
        contrastive_loss(torch.zeros(4, 5))

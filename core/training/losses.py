"""Training losses of IPT: L1 + lambda x contrastive (paper Eq. 4-6).

The contrastive term follows the official MindSpore training code (``SupConLoss`` in its default ``all`` mode, with
``temperature = base_temperature = 0.07``) applied to the decoder output tokens ``(B, N, D)``:

* every token ``a = (image j, position i)`` of the batch is an anchor; the ``B*N`` tokens are L2-normalised and
  compared by cosine similarity ``s(a, c) = <a, c> / (|a| |c|)``;
* positives of ``a`` are the other ``N - 1`` tokens of the same image; the denominator runs over *all* other tokens
  of the batch (same image included, the anchor itself excluded)::

      l(a) = -1/(N-1) * sum_{p in P(a)} [ s(a,p)/T - log sum_{c != a} exp(s(a,c)/T) ]
      L    = mean over the B*N anchors of l(a)

The paper's Eq. 5 writes the denominator over other images only; the official code (which produced the released
weights) keeps same-image tokens in it, and that is what is implemented here.  With ``B = 1`` there are no negatives:
the loss would only pull the tokens of one image together, so it is defined as 0 (the official code would return a
non-zero constant-ish term).  Memory: a ``(B*N) x (B*N)`` similarity matrix (2048 x 2048 for B=8, N=256).
Under DDP each rank uses its own batch as the set of negatives, as the official code does per device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def contrastive_loss(tokens: Tensor, temperature: float = 0.07) -> Tensor:
    """Supervised-contrastive loss of decoder tokens ``(B, N, D)``: same-image tokens positive (see module doc)."""
    if tokens.dim() != 3:
        raise ValueError(f"contrastive_loss expects tokens (B, N, D), got {tuple(tokens.shape)}")
    b, n, _ = tokens.shape
    if b < 2 or n < 2:
        return tokens.sum() * 0.0  # no negatives (or no positives): keep the graph, contribute nothing
    z = F.normalize(tokens.float().reshape(b * n, -1), dim=1)
    logits = z @ z.t() / temperature  # (BN, BN)
    self_mask = torch.eye(b * n, dtype=torch.bool, device=z.device)
    image = torch.arange(b, device=z.device).repeat_interleave(n)
    positive = (image[:, None] == image[None, :]) & ~self_mask
    log_denominator = torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - log_denominator
    mean_log_prob_pos = (log_prob * positive).sum(dim=1) / (n - 1)
    return -mean_log_prob_pos.mean()


def ipt_loss(
    out: Tensor, target: Tensor, tokens: Tensor | None, weight: float = 0.1, temperature: float = 0.07
) -> tuple[Tensor, Tensor, Tensor]:
    """``(total, l1, contrastive)`` with ``total = L1(out, target) + weight * contrastive(tokens)`` (Eq. 6).

    With ``weight == 0`` (or no tokens) the contrastive term is not computed and ``total`` is exactly the L1 loss.
    Computed in float32 whatever the autocast dtype of the model.
    """
    l1 = F.l1_loss(out.float(), target.float())
    if weight == 0 or tokens is None:
        return l1, l1, torch.zeros((), device=l1.device)
    con = contrastive_loss(tokens, temperature)
    return l1 + weight * con, l1, con

"""Exponential moving average of model weights (``--ema-decay``): ``ema = decay * ema + (1 - decay) * w``."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Float32 shadow copies of a model's parameters, keyed like its ``state_dict``."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().float().clone() for name, p in model.named_parameters()
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        names = list(self.shadow)
        params = dict(model.named_parameters())
        torch._foreach_lerp_(  # one fused kernel per device instead of one per tensor
            [self.shadow[n] for n in names], [params[n].detach().float() for n in names], 1.0 - self.decay
        )

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters with the averages."""
        for name, p in model.named_parameters():
            p.copy_(self.shadow[name].to(p.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: t.detach().cpu().contiguous() for name, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = set(self.shadow) - set(state), set(state) - set(self.shadow)
        if missing or unexpected:
            raise ValueError(
                f"EMA state does not match the model "
                f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
            )
        for name, t in state.items():
            self.shadow[name].copy_(t)

"""The Image Processing Transformer (Chen et al., CVPR 2021): task heads/tails + one shared transformer body.

Shapes, for the ``paper`` preset (C=64 feature channels, P=3 patch dim, a 48x48 input):
    image (B,3,48,48) -> head -> f (B,C,48,48) -> tokens (B,N=256,D=576) -> encoder -> decoder(task embedding)
    -> tokens (B,N,D) -> fold -> (B,C,48,48) + f -> tail -> (B,3,48*s,48*s)

Layout and numerics follow the official Pretrained-IPT code (``../shared/official/ARCHITECTURE.md``) so that
official checkpoints convert 1:1; attention runs through ``scaled_dot_product_attention`` with fused projections,
and every linear layer through :func:`ipt.core.fused_linear.linear` (which picks the fastest GEMM path per call).
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Iterable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import Mlp
from torch import nn
from torch.utils.checkpoint import checkpoint

from ipt.core.model.blocks import build_head, build_tail
from ipt.core.model.config import ModelConfig, preset
from ipt.core.model import int8
from ipt.core.model.fused_linear import PackedWeights, linear
from ipt.registry import get_task
from ipt.registry.manager import PluginError

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    from ipt.registry.spec import TaskSpec


class Attention(nn.Module):
    """Multi-head attention without biases; q/k/v weights stacked as one (3D, D) matrix (official in_proj).

    Additive query/key embeddings are applied after the projection (``W(x + E) = Wx + WE``), so the task
    embedding is projected once per call, not once per batch element.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dim = dim
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.packed = PackedWeights()

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        # q, k, v: (B, N, D) -> heads (B, H, N, D/H); views, no copies
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.num_heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        # SDPA returns (B, H, N, D/H) laid out as (B, N, H, D/H), so merging the heads back is a view too.
        out = rearrange(out, "b h n d -> b n (h d)")
        return linear(out, self.proj.weight, residual=residual, packed=self.packed, name="proj")

    def _embed_projection(self, qk_embed: torch.Tensor) -> torch.Tensor:
        """``qk_embed @ W_qk.T`` (N, 2D): the task embedding through the q/k projections. In inference it is the
        same for every batch of a task, so it is computed once (fp32) and cached until the weight or embedding
        changes; with autograd on, or under ``torch.compile``, it is computed every call."""
        w = self.qkv.weight[: 2 * self.dim]
        if torch.is_grad_enabled() or torch.compiler.is_compiling():  # (the compiled graph has no Python cache)
            return linear(qk_embed, w, packed=self.packed, name="qk")
        return self.packed.constant("qk", (w, qk_embed), lambda: F.linear(qk_embed, w))

    def forward(
        self, x: torch.Tensor, qk_embed: torch.Tensor | None = None, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Self-attention with q = k = x + qk_embed and v = x; plus ``residual`` if given (fused into the GEMM)."""
        w = self.qkv.weight
        qkv = linear(x, w, packed=self.packed, name="qkv")  # (B, N, 3D)
        q, k, v = qkv.chunk(3, dim=-1)
        if qk_embed is not None:
            eq, ek = self._embed_projection(qk_embed).chunk(2, dim=-1)  # (N, D) each
            q, k = q + eq, k + ek
        return self._attend(q, k, v, residual)

    def cross(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        q_embed: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cross-attention with q = x + q_embed and k = v = memory; plus ``residual`` if given."""
        w = self.qkv.weight
        q = linear(x if q_embed is None else x + q_embed, w[: self.dim], packed=self.packed, name="q")  # (B, N, D)
        k, v = linear(memory, w[self.dim :], packed=self.packed, name="kv").chunk(2, dim=-1)  # (B, N, D) each
        return self._attend(q, k, v, residual)


def mlp_forward(mlp: Mlp, x: torch.Tensor, residual: torch.Tensor, packed: PackedWeights, name: str) -> torch.Tensor:
    """``residual + fc2(relu(fc1(x)))`` for timm's ``Mlp`` (ReLU, no norm); in training with dropout, timm's own;
    in calibrated int8 inference one fused pair of GEMMs (:func:`ipt.core.model.int8.int8_mlp`)."""
    if mlp.training and (mlp.drop1.p > 0 or mlp.drop2.p > 0):
        return residual + mlp(x)
    if int8.int8_active():
        y = int8.int8_mlp(x, (mlp.fc1.weight, mlp.fc1.bias), (mlp.fc2.weight, mlp.fc2.bias), residual, packed, name)
        if y is not None:
            return y
    h = linear(x, mlp.fc1.weight, mlp.fc1.bias, relu=True, packed=packed, name=f"{name}.fc1")  # (B, N, M)
    return linear(h, mlp.fc2.weight, mlp.fc2.bias, residual=residual, packed=packed, name=f"{name}.fc2")


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer (paper Eq. 1)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.attn = Attention(d, cfg.num_heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(d, cfg.mlp_dim, act_layer=nn.ReLU, drop=cfg.dropout)
        self.packed = PackedWeights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, N, D); the residual adds happen inside the output GEMMs (see ``linear``)
        x = self.attn(self.norm1(x), residual=x)
        return mlp_forward(self.mlp, self.norm2(x), x, self.packed, "mlp")


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer with the task embedding added to queries/keys (paper Eq. 2, official code)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.self_attn = Attention(d, cfg.num_heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.cross_attn = Attention(d, cfg.num_heads, cfg.dropout)
        self.norm3 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(d, cfg.mlp_dim, act_layer=nn.ReLU, drop=cfg.dropout)
        self.packed = PackedWeights()

    def forward(self, t: torch.Tensor, memory: torch.Tensor, task_embed: torch.Tensor) -> torch.Tensor:
        # t, memory: (B, N, D); task_embed: (N, D)
        t = self.self_attn(self.norm1(t), qk_embed=task_embed, residual=t)
        # The official code attends to the raw encoder output (not normalised, no position embedding).
        t = self.cross_attn.cross(self.norm2(t), memory, q_embed=task_embed, residual=t)
        return mlp_forward(self.mlp, self.norm3(t), t, self.packed, "mlp")


class IPTBody(nn.Module):
    """The shared transformer body on a (B, C, S, S) feature map, S = ``patch_size``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, n = cfg.embed_dim, cfg.num_tokens
        self.linear_encoding = nn.Linear(d, d)
        self.pos_embed = nn.Parameter(torch.zeros(n, d))
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_dec_layers))
        self.mlp_head = Mlp(d, cfg.mlp_dim, act_layer=nn.ReLU, drop=cfg.dropout)
        self.grad_checkpointing = False
        self.packed = PackedWeights()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.register_load_state_dict_post_hook(lambda module, keys: module.clear_inference_cache())

    def clear_inference_cache(self) -> None:
        """Drop the oneDNN-packed weight copies; they are rebuilt on the next CPU inference call.

        Called on ``.to()``/``.half()``/``load_state_dict``; call it yourself after writing weights through
        ``param.data`` (such writes bypass the version counter the cache checks).
        """
        for module in self.modules():
            packed = getattr(module, "packed", None)
            if isinstance(packed, PackedWeights):
                packed.clear()

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - nn.Module's signature
        # Moving or casting the weights makes the packed copies stale (and would keep CPU memory alive).
        self.clear_inference_cache()
        return super()._apply(fn, recurse)

    def tokens(self, f: torch.Tensor, task_embed: torch.Tensor) -> torch.Tensor:
        """Feature map (B,C,S,S) -> decoded tokens (B,N,D) (the features of the contrastive loss)."""
        p = self.cfg.patch_dim
        x = rearrange(f, "b c (h p1) (w p2) -> b (h w) (c p1 p2)", p1=p, p2=p)  # (B, N, D), F.unfold order
        enc = self.linear_encoding
        x = linear(x, enc.weight, enc.bias, residual=x, packed=self.packed, name="linear_encoding")
        x = x + self.pos_embed
        for layer in self.encoder:
            x = self._run(layer, x)
        memory, t = x, x
        for layer in self.decoder:
            t = self._run(layer, t, memory, task_embed)
        return mlp_forward(self.mlp_head, t, t, self.packed, "mlp_head")

    def fold(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decoded tokens (B,N,D) -> feature map (B,C,S,S)."""
        p, s = self.cfg.patch_dim, self.cfg.patch_size // self.cfg.patch_dim
        return rearrange(tokens, "b (h w) (c p1 p2) -> b c (h p1) (w p2)", h=s, w=s, p1=p, p2=p)

    def _run(self, layer: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def forward(self, f: torch.Tensor, task_embed: torch.Tensor) -> torch.Tensor:
        return self.fold(self.tokens(f, task_embed))


class UnknownModelTaskError(KeyError):
    """The model has no head/tail for the requested task."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class IPT(nn.Module):
    """IPT with per-task heads, tails and task embeddings kept in dicts keyed by task name.

    Inputs and outputs are on the 0..``rgb_range`` scale (255 by default), like the official model.
    """

    def __init__(self, config: ModelConfig, tasks: Iterable["TaskSpec | str"] = ()) -> None:
        super().__init__()
        self.config = config
        self.body = IPTBody(config)
        self.heads = nn.ModuleDict()
        self.tails = nn.ModuleDict()
        self.task_embed = nn.ParameterDict()
        self.task_specs: dict[str, TaskSpec] = {}
        #: int8 calibration tables by task (:meth:`calibrate_int8`); not part of the state dict
        self.int8_ranges: dict[str, int8.ActivationRanges] = {}
        mean = torch.tensor(config.rgb_mean, dtype=torch.float32).view(1, 3, 1, 1) * config.rgb_range
        self.register_buffer("rgb_mean", mean, persistent=False)
        for task in tasks:
            self.add_task(task)

    # -- tasks ---------------------------------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return list(self.heads.keys())

    def spec(self, task: str) -> "TaskSpec":
        self._check_task(task)
        return self.task_specs[task]

    def scale(self, task: str) -> int:
        return self.spec(task).scale

    def add_task(self, task: "TaskSpec | str", embed_init: str | None = None) -> "TaskSpec":
        """Give the model a new task: fresh head and tail (:func:`task_parts`) and a new task embedding.

        ``embed_init`` copies the task embedding of an existing task (e.g. ``denoise30`` for ``denoise70``).
        """
        spec = _resolve(task)
        if spec.name in self.heads:
            raise ValueError(f"the model already has task {spec.name!r}")
        ref = next(self.parameters(), None)
        device, dtype = (ref.device, ref.dtype) if ref is not None else (None, None)
        head, tail = task_parts(spec, self.config)
        self.heads[spec.name] = head.to(device=device, dtype=dtype)
        self.tails[spec.name] = tail.to(device=device, dtype=dtype)
        embed = torch.empty(self.config.num_tokens, self.config.embed_dim, device=device, dtype=dtype)
        if embed_init is not None:
            embed.copy_(self.task_embed[self.spec(embed_init).name].detach())
        else:
            nn.init.trunc_normal_(embed, std=0.02)
        self.task_embed[spec.name] = nn.Parameter(embed)
        self.task_specs[spec.name] = spec
        return spec

    def keep_tasks(self, names: Sequence[str]) -> None:
        """Drop every task not in ``names`` (for deployment or single-task fine-tuning)."""
        for n in names:
            self._check_task(n)
        for n in [t for t in self.task_names if t not in names]:
            del self.heads[n], self.tails[n], self.task_embed[n], self.task_specs[n]

    def _check_task(self, task: str) -> None:
        if task not in self.heads:
            close = difflib.get_close_matches(task, self.task_names, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownModelTaskError(
                f"this model has no task {task!r}{hint}; it has: {', '.join(self.task_names) or 'none'}"
            )

    # -- forward -------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, task: str, return_tokens: bool = False):  # noqa: ANN201
        """Restore a batch of ``patch_size`` x ``patch_size`` patches (B,C,S,S) for ``task`` (C = the task's
        ``in_channels``: 3, or RGB then its extra inputs).

        Returns the restored batch (B,3,S*scale,S*scale); with ``return_tokens`` also the decoded tokens (B,N,D).
        Images of other sizes go through :class:`ipt.core.tiling.TiledRestorer`.
        """
        self._check_task(task)
        s, c = self.config.patch_size, self.task_specs[task].in_channels
        if x.dim() != 4 or x.shape[1] != c or x.shape[-2:] != (s, s):
            raise ValueError(
                f"IPT's body takes (B,{c},{s},{s}) patches for task {task!r}, got {tuple(x.shape)}; "
                "restore whole images with ipt.core.tiling.TiledRestorer"
            )
        if int8.int8_active():  # with the task's calibration table, if it has one
            with int8.use_ranges(self.int8_ranges.get(task)):
                y, tokens = self._forward(x, task, c)
        else:
            y, tokens = self._forward(x, task, c)
        if not torch.is_grad_enabled():
            y = y.contiguous()  # CPU inference convolves channels-last; callers get NCHW (a no-op when it is)
        return (y, tokens) if return_tokens else y

    def _forward(self, x: torch.Tensor, task: str, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.rgb_mean.to(x.dtype)
        # Only the RGB channels are centred; a task's extra input channels (mask, guide) reach the head as given.
        centred = x - mean if c == 3 else torch.cat([x[:, :3] - mean, x[:, 3:]], dim=1)
        f = self.heads[task](centred)
        tokens = self.body.tokens(f, self.task_embed[task])
        return self.tails[task](self.body.fold(tokens) + f) + mean, tokens

    def calibrate_int8(self, task: str, patches: torch.Tensor, margin: float = 1.0,
                       batch: int = 4) -> int8.ActivationRanges:
        """Static int8 scales for ``task``: run ``patches`` (B, C, S, S) on 0-255 through the model in fp32 (no
        autograd, ``batch`` at a time), record the range of every linear layer's input, and keep the table for
        the int8 forwards of ``task`` (:mod:`ipt.core.model.int8`). Returns the table. Calibrate again after
        changing the weights (loading a state dict or moving the model drops the tables)."""
        self._check_task(task)
        ranges = int8.ActivationRanges(margin)
        with torch.inference_mode(), torch.autocast(patches.device.type, enabled=False), int8.observing(ranges):
            for chunk in patches.split(batch):
                self(chunk.float(), task)
        ranges.patches = int(patches.shape[0])
        self.int8_ranges[task] = ranges
        return ranges

    # -- persistence ---------------------------------------------------------------------------------------
    def save_pretrained(self, directory: "str | Path", **extra: object) -> "Path":
        """Write ``config.json`` + ``model.safetensors`` into ``directory`` (atomically)."""
        from ipt.core.checkpoints.pretrained import save_pretrained

        return save_pretrained(self, directory, **extra)

    @classmethod
    def from_pretrained(cls, directory: "str | Path", tasks: Sequence[str] | None = None) -> "IPT":
        """Load a model directory written by :meth:`save_pretrained` (strict: every tensor must match)."""
        from ipt.core.checkpoints.pretrained import load_pretrained

        return load_pretrained(directory, tasks=tasks)

    def clear_inference_cache(self) -> None:
        """See :meth:`IPTBody.clear_inference_cache`; also drops the int8 calibration tables."""
        self.body.clear_inference_cache()
        self.int8_ranges.clear()

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - nn.Module's signature
        self.int8_ranges.clear()  # calibrated on the old weights/device
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - nn.Module's signature
        self.int8_ranges.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def task_parts(spec: "TaskSpec", cfg: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """The head and tail of a task: the plugin's (``spec.build_head``/``build_tail``), or IPT's (official layout,
    :func:`~ipt.core.model.blocks.build_head` for ``spec.in_channels`` and ``build_tail`` for ``spec.scale``).

    A plugin's part is checked by a dry run on one zero patch, so that a head of the wrong width or a tail whose
    upscaling disagrees with the task's ``scale`` fails here with :class:`~ipt.registry.manager.PluginError`
    naming the plugin and distribution, not at the first training step. IPT's own parts are right by
    construction and are not run.
    """
    head, tail = spec.head(cfg), spec.tail(cfg)
    custom_head, custom_tail = head is not None, tail is not None
    head = build_head(cfg, spec.in_channels) if head is None else head
    tail = build_tail(cfg, spec.scale) if tail is None else tail
    if custom_head or custom_tail:
        _dry_run(spec, cfg, head, tail)
    return head, tail


def _dry_run(spec: "TaskSpec", cfg: ModelConfig, head: nn.Module, tail: nn.Module) -> None:
    p, c, s = cfg.patch_size, cfg.n_feats, spec.scale
    ref = next(head.parameters(), None)
    x = torch.zeros(1, spec.in_channels, p, p, device=ref.device if ref is not None else None)
    where = f"task {spec.name!r} of {spec.origin}"
    modes = (head.training, tail.training)
    head.eval(), tail.eval()
    try:
        with torch.no_grad():
            try:
                f = head(x)
            except Exception as exc:  # noqa: BLE001 - the plugin's module, reported with its origin
                raise PluginError(f"{where}: the head fails on a (1,{spec.in_channels},{p},{p}) patch: {exc}") from exc
            if tuple(f.shape) != (1, c, p, p):
                raise PluginError(f"{where}: the head maps (1,{spec.in_channels},{p},{p}) to {tuple(f.shape)}; "
                                  f"the body needs (1,{c},{p},{p})")
            try:
                y = tail(torch.zeros_like(f))
            except Exception as exc:  # noqa: BLE001
                raise PluginError(f"{where}: the tail fails on a (1,{c},{p},{p}) input: {exc}") from exc
            if tuple(y.shape) != (1, 3, p * s, p * s):
                raise PluginError(f"{where}: the tail maps (1,{c},{p},{p}) to {tuple(y.shape)}, expected "
                                  f"(1,3,{p * s},{p * s}): its upscaling disagrees with the task's scale {s}")
    finally:
        head.train(modes[0]), tail.train(modes[1])


def _resolve(task: "TaskSpec | str") -> "TaskSpec":
    return get_task(task) if isinstance(task, str) else task


def build_model(config: ModelConfig | str, tasks: Iterable["TaskSpec | str"]) -> IPT:
    """An :class:`IPT` for a config (or preset name) and tasks (names or specs)."""
    return IPT(preset(config) if isinstance(config, str) else config, tasks)

"""Convert official Pretrained-IPT ``.pt`` checkpoints into model directories (``ipt convert``).

The official code (huawei-noah/Pretrained-IPT) saves ``torch.save(model.state_dict())``: heads, tails and query
rows are indexed by position (``head.0``, ``tail.0``, row 0 of ``body.query_embed.weight``); ours are keyed by task
name. The architecture is inferred from tensor shapes (``docs/official-weights.md``), every tensor is mapped
exactly once and the model is loaded strictly, so a converted model reproduces the official outputs.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from pydantic import BaseModel, ConfigDict

from ipt.core.checkpoints.pretrained import CheckpointError
from ipt.core.files import atomic_write_file
from ipt.core.model.blocks import build_head, build_tail
from ipt.core.model.config import OFFICIAL_RGB_MEAN, ModelConfig

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ipt.core.model.ipt import IPT

# Head/tail/query order of the official pre-training code (ARCHITECTURE.md): the IPT_pretrain.pt layout.
OFFICIAL_PRETRAIN_TASKS: tuple[str, ...] = ("sr2", "sr3", "sr4", "derain", "denoise30", "denoise50")
DEFAULT_NUM_HEADS = 12  # attention heads: not recoverable from tensor shapes; the paper/official value

QUERY_KEY = "body.query_embed.weight"
POSITION_IDS_KEY = "body.position_encoding.position_ids"
MEAN_SHIFT_KEYS = ("sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias")
# Wrapper keys of training frameworks' checkpoints, in order of preference: EMA weights first (BasicSR and
# Real-ESRGAN inference and spandrel take ``params_ema`` over ``params``; timm saves ``state_dict_ema``).
EMA_KEYS = ("params_ema", "state_dict_ema", "model_ema", "ema_model", "ema")
LIVE_KEYS = ("state_dict", "model", "params", "net", "network", "module", "generator", "g")
_WRAPPER_KEYS = EMA_KEYS + LIVE_KEYS
_PREFIXES = ("module.", "model.")
_SHOWN = 12  # how many names an error lists before "... (N in all)"

# Our body tensor name -> the official one (regular expressions, full match).
_BODY_RULES: tuple[tuple[str, str], ...] = (
    (r"body\.pos_embed", "body.position_encoding.pe.weight"),
    (r"body\.linear_encoding\.(weight|bias)", r"body.linear_encoding.\1"),
    (r"body\.mlp_head\.fc1\.(weight|bias)", r"body.mlp_head.0.\1"),
    (r"body\.mlp_head\.fc2\.(weight|bias)", r"body.mlp_head.3.\1"),
    (r"body\.encoder\.(\d+)\.attn\.qkv\.weight", r"body.encoder.layers.\1.self_attn.in_proj_weight"),
    (r"body\.encoder\.(\d+)\.attn\.proj\.weight", r"body.encoder.layers.\1.self_attn.out_proj.weight"),
    (r"body\.decoder\.(\d+)\.self_attn\.qkv\.weight", r"body.decoder.layers.\1.self_attn.in_proj_weight"),
    (r"body\.decoder\.(\d+)\.self_attn\.proj\.weight", r"body.decoder.layers.\1.self_attn.out_proj.weight"),
    (r"body\.decoder\.(\d+)\.cross_attn\.qkv\.weight", r"body.decoder.layers.\1.multihead_attn.in_proj_weight"),
    (r"body\.decoder\.(\d+)\.cross_attn\.proj\.weight", r"body.decoder.layers.\1.multihead_attn.out_proj.weight"),
    (r"body\.(encoder|decoder)\.(\d+)\.mlp\.fc1\.(weight|bias)", r"body.\1.layers.\2.linear1.\3"),
    (r"body\.(encoder|decoder)\.(\d+)\.mlp\.fc2\.(weight|bias)", r"body.\1.layers.\2.linear2.\3"),
    (r"body\.(encoder|decoder)\.(\d+)\.(norm[123])\.(weight|bias)", r"body.\1.layers.\2.\3.\4"),
)


class ConversionError(CheckpointError, ValueError):
    """An official checkpoint that cannot be read or converted (the message names the file and the tensors)."""


class UnsafeCheckpointError(ConversionError):
    """The file needs arbitrary unpickling (not a plain state dict); it is never loaded."""


class OfficialLayout(BaseModel):
    """The architecture of an official checkpoint, inferred from its tensor shapes."""

    model_config = ConfigDict(frozen=True)

    n_feats: int
    patch_dim: int
    patch_size: int
    num_tokens: int
    embed_dim: int
    num_enc_layers: int
    num_dec_layers: int
    mlp_ratio: float
    res_kernel: int
    tail_scales: list[int]  # one per head/tail pair, in checkpoint order
    num_queries: int
    num_heads: int = DEFAULT_NUM_HEADS  # attention heads: assumed, never stored in a checkpoint
    rgb_range: float = 255.0
    rgb_mean: tuple[float, float, float] = OFFICIAL_RGB_MEAN
    official_mean_shift: bool = True  # False: the mean-shift biases differ from the official DIV2K mean
    num_parameters: int  # as the official code counts them: every parameter incl. the 24 mean-shift values
    dtype: str

    @property
    def num_tasks(self) -> int:
        return len(self.tail_scales)

    @property
    def default_tasks(self) -> list[str] | None:
        """The task names of a checkpoint laid out like ``IPT_pretrain.pt``; None when it cannot be known."""
        if tuple(self.tail_scales) == (2, 3, 4, 1, 1, 1):
            return list(OFFICIAL_PRETRAIN_TASKS)
        return None

    def to_model_config(self, num_heads: int | None = None) -> ModelConfig:
        """Our :class:`ModelConfig` for this layout (``num_heads`` overrides the assumed attention heads)."""
        return ModelConfig(
            n_feats=self.n_feats,
            patch_size=self.patch_size,
            patch_dim=self.patch_dim,
            num_heads=self.num_heads if num_heads is None else num_heads,
            num_enc_layers=self.num_enc_layers,
            num_dec_layers=self.num_dec_layers,
            mlp_ratio=self.mlp_ratio,
            res_kernel=self.res_kernel,
            rgb_range=self.rgb_range,
            rgb_mean=self.rgb_mean,
        )


# -- reading --------------------------------------------------------------------------------------------------


def read_official_checkpoint(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """The flat state dict of an official checkpoint (see :func:`load_official_checkpoint`)."""
    return load_official_checkpoint(path, key).state


def load_official_checkpoint(path: str | Path, key: str | None = None) -> "FoundState":
    """The state dict of an official checkpoint and the key it came from, read with ``torch.load(weights_only=True)``.

    Accepts a bare state dict or one wrapped in a dict (``params_ema``/``params``/``state_dict``/``model``/``net``
    ...; EMA weights are preferred, see :func:`find_state_dict`; ``key`` chooses), and strips a DataParallel
    ``module.`` (or ``model.``) prefix. Raises :class:`ConversionError` naming the file (unreadable, damaged, no
    state dict, unknown ``key``), :class:`UnsafeCheckpointError` for pickles of arbitrary objects.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise ConversionError(f"{path}: not a file; expected an official .pt checkpoint")
    with path.open("rb") as fh:
        magic = fh.read(2)
    # torch.save writes a zip archive ("PK"), or a protocol-2+ pickle (0x80) in the legacy format.
    if magic[:2] != b"PK" and magic[:1] != b"\x80":
        raise ConversionError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's weights-only unpickler raises this for any object it will not build (custom classes, code);
        # a damaged legacy-format file can land here too, hence "or the file is damaged".
        raise UnsafeCheckpointError(
            f"refusing to unpickle arbitrary objects from {path}; only plain state dicts are supported "
            f"({_unpickler_reason(exc)}; or the file is damaged)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError/EOFError/KeyError... for damaged files
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(
            f"{path}: cannot read the checkpoint (truncated, damaged or not a PyTorch file): {detail}"
        ) from exc
    return find_state_dict(obj, str(path), key)


def _unpickler_reason(exc: BaseException) -> str:
    match = re.search(r"WeightsUnpickler error: (.+?)(?: was not an allowed|\. Please|\n|$)", str(exc))
    return match.group(1).strip() if match else "not a weights-only pickle"


@dataclass(frozen=True)
class FoundState:
    """A state dict found in a checkpoint: ``key`` is the path of wrapper keys that led to it (``"params_ema"``,
    ``"net/model"``; None for a bare state dict), ``others`` the paths of the state dicts left aside."""

    state: dict[str, torch.Tensor]
    key: str | None = None
    others: tuple[str, ...] = ()


def flatten_state(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": {...}}``-style containers and strip DataParallel prefixes."""
    return find_state_dict(obj, source).state


def find_state_dict(obj: Any, source: str = "checkpoint", key: str | None = None) -> FoundState:
    """The state dict inside a checkpoint object, with the wrapper key it was found under.

    Without ``key``, wrappers are opened in the order of :data:`EMA_KEYS` then :data:`LIVE_KEYS`: a BasicSR-style
    ``{"params": ..., "params_ema": ...}`` gives the EMA weights, as BasicSR/Real-ESRGAN inference and spandrel
    do; the state dicts not taken are listed in ``others``. ``key`` (``"params"``, ``"net/model"``) takes that
    entry instead. Raises :class:`ConversionError` when no dict of tensors is found or ``key`` names none.
    """
    path: list[str] = []
    others: list[str] = []
    if key is not None:
        for part in key.split("/"):
            if not isinstance(obj, Mapping) or part not in obj or not isinstance(obj[part], Mapping):
                listed = ", ".join(repr("/".join(path + [o])) for o in _state_dict_paths(obj)) or "none"
                raise ConversionError(f"{source}: --key {key!r}: no state dict under {part!r} (candidates: {listed})")
            obj, path = obj[part], path + [part]
    for _depth in range(4):
        if _is_state_dict(obj):
            return FoundState(_strip_prefixes(dict(obj)), "/".join(path) or None, tuple(others))
        if not isinstance(obj, Mapping):
            break
        options = _state_dict_paths(obj)
        if len(options) == 0:
            break
        if len(options) > 1 and not any(k in obj for k in _WRAPPER_KEYS):
            listed = ", ".join(repr("/".join(path + [o])) for o in options)
            raise ConversionError(f"{source}: several state dicts ({listed}): choose one with --key")
        others += ["/".join(path + [o]) for o in options[1:]]
        obj, path = obj[options[0]], path + [options[0]]
    if isinstance(obj, Mapping):
        keys = ", ".join(map(str, list(obj)[:8])) or "none"
        raise ConversionError(f"{source}: no state dict of tensors found (top-level keys: {keys})")
    raise ConversionError(f"{source}: expected a state dict (a dict of tensors), found {type(obj).__name__}")


def _state_dict_paths(obj: Any) -> list[str]:
    """The keys of ``obj`` whose values are dicts, known wrapper keys first in order of preference."""
    if not isinstance(obj, Mapping):
        return []
    nested = [str(k) for k, v in obj.items() if isinstance(v, Mapping) and v]
    ranked = [k for k in _WRAPPER_KEYS if k in nested]
    return ranked + [k for k in nested if k not in ranked and not ranked]


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    while state:
        prefix = next((p for p in _PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


# -- inferring the layout -------------------------------------------------------------------------------------


def _need(state: Mapping[str, torch.Tensor], key: str, what: str, source: str) -> torch.Tensor:
    if key not in state:
        raise ConversionError(f"{source}: cannot infer {what}: tensor {key!r} is missing")
    return state[key]


def _indices(state: Mapping[str, torch.Tensor], pattern: str) -> set[int]:
    rx = re.compile(pattern)
    return {int(m.group(1)) for k in state if (m := rx.match(k))}


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    """``max index + 1`` of numbered modules (a gap shows up later as missing tensors)."""
    found = _indices(state, pattern)
    return max(found) + 1 if found else 0


def _tail_scale(state: Mapping[str, torch.Tensor], i: int, n_feats: int, source: str) -> int:
    """Scale of tail ``i`` from its upsampler convs: C->4C (x2) per conv, C->9C (x3); none -> x1."""
    convs = sorted(_indices(state, rf"tail\.{i}\.0\.(\d+)\.weight$"))
    scale = 1
    for j in convs:
        w = state[f"tail.{i}.0.{j}.weight"]
        ratio = w.shape[0] // n_feats if w.dim() == 4 and w.shape[1] == n_feats else 0
        if ratio * n_feats != w.shape[0] or ratio not in (4, 9):
            raise ConversionError(
                f"{source}: tail.{i}.0.{j}.weight has shape {tuple(w.shape)}; an upsampler conv maps "
                f"{n_feats} channels to {4 * n_feats} (x2) or {9 * n_feats} (x3)"
            )
        scale *= 2 if ratio == 4 else 3
    return scale


def _mean_shift(state: Mapping[str, torch.Tensor], source: str) -> tuple[float, tuple[float, float, float], bool]:
    """(rgb_range, rgb_mean, official?) from the frozen mean-shift convs; they must be identity + bias."""
    if not all(k in state for k in MEAN_SHIFT_KEYS):
        return 255.0, OFFICIAL_RGB_MEAN, True  # reported as missing by the conversion
    eye = torch.eye(3, dtype=torch.float64).view(3, 3, 1, 1)
    for key in ("sub_mean.weight", "add_mean.weight"):
        w = state[key]
        if tuple(w.shape) != (3, 3, 1, 1) or not torch.allclose(w.double(), eye, rtol=0, atol=1e-6):
            raise ConversionError(
                f"{source}: {key} is not the identity: IPT's mean shift only subtracts/adds a mean "
                "(rgb_std = 1); a checkpoint with another normalisation cannot be converted"
            )
    sub, add = state["sub_mean.bias"].double(), state["add_mean.bias"].double()
    if sub.shape != (3,) or add.shape != (3,) or not torch.allclose(add, -sub, rtol=1e-6, atol=1e-6):
        raise ConversionError(
            f"{source}: add_mean.bias {add.tolist()} is not the negative of sub_mean.bias {sub.tolist()}"
        )
    official = torch.tensor(OFFICIAL_RGB_MEAN, dtype=torch.float64)
    ranges = -sub / official  # bias = -rgb_range * mean
    if ranges.min() > 0 and (ranges.max() - ranges.min()) <= 1e-5 * ranges.mean():
        r = float(ranges.mean())
        return (float(round(r)) if abs(r - round(r)) <= 1e-4 * r else r), OFFICIAL_RGB_MEAN, True
    # Another mean: keep the official 0-255 range and store the mean the biases encode.
    mean = tuple(float(v) for v in (-sub / 255.0))
    return 255.0, mean, False  # type: ignore[return-value]


def inspect_official(
    state: Mapping[str, torch.Tensor], num_heads: int = DEFAULT_NUM_HEADS, source: str = "checkpoint"
) -> OfficialLayout:
    """Infer the architecture of an official state dict from its tensor shapes (``docs/official-weights.md``).

    Raises :class:`ConversionError` naming the tensor whose presence or shape does not fit the official layout.
    """
    state = flatten_state(state, source)
    _check_official_variant(state, source)
    n_feats, patch_dim, embed_dim, num_tokens = _token_geometry(state, source)
    num_tasks = _task_count(state, num_tokens, embed_dim, source)
    fc1 = _need(state, "body.mlp_head.0.weight", "the MLP ratio", source)
    res = _need(state, "head.0.1.body.0.weight", "the ResBlock kernel", source)
    rgb_range, rgb_mean, official = _mean_shift(state, source)
    return OfficialLayout(
        n_feats=n_feats,
        patch_dim=patch_dim,
        patch_size=math.isqrt(num_tokens) * patch_dim,
        num_tokens=num_tokens,
        embed_dim=embed_dim,
        num_enc_layers=_count(state, r"body\.encoder\.layers\.(\d+)\."),
        num_dec_layers=_count(state, r"body\.decoder\.layers\.(\d+)\."),
        mlp_ratio=fc1.shape[0] / embed_dim,
        res_kernel=int(res.shape[-1]),
        tail_scales=[_tail_scale(state, i, n_feats, source) for i in range(num_tasks)],
        num_queries=num_tasks,
        num_heads=num_heads,
        rgb_range=rgb_range,
        rgb_mean=rgb_mean,
        official_mean_shift=official,
        num_parameters=sum(v.numel() for k, v in state.items() if k != POSITION_IDS_KEY),
        dtype=str(state[QUERY_KEY].dtype).removeprefix("torch."),
    )


def _check_official_variant(state: Mapping[str, torch.Tensor], source: str) -> None:
    """An IPT body with the MLP, the learned positions and the LayerNorms (official ``--no_mlp/--no_pos/--no_norm``
    variants are refused)."""
    if not any(k.startswith("body.") for k in state):
        raise ConversionError(f"{source}: no official IPT body tensors (body.*) found; is this an IPT checkpoint?")
    for key, flag in (("body.linear_encoding.weight", "--no_mlp"), ("body.position_encoding.pe.weight", "--no_pos")):
        if key not in state:
            raise ConversionError(f"{source}: tensor {key!r} is missing (an official {flag} variant is not supported)")
    has_layers = any(re.match(r"body\.(encoder|decoder)\.layers\.\d+\.", k) for k in state)
    if has_layers and not any(re.match(r"body\.(encoder|decoder)\.layers\.\d+\.norm", k) for k in state):
        raise ConversionError(f"{source}: the transformer layers have no LayerNorms (official --no_norm): unsupported")


def _token_geometry(state: Mapping[str, torch.Tensor], source: str) -> tuple[int, int, int, int]:
    """``(n_feats, patch_dim, embed_dim, num_tokens)`` from the head conv, the token projection and the positions."""
    head_conv = _need(state, "head.0.0.weight", "n_feats (head conv)", source)
    if head_conv.dim() != 4 or head_conv.shape[1] != 3:
        raise ConversionError(f"{source}: head.0.0.weight has shape {tuple(head_conv.shape)}; expected (C, 3, 3, 3)")
    n_feats = int(head_conv.shape[0])
    embed_dim = int(_need(state, "body.linear_encoding.weight", "the token dim", source).shape[1])
    patch_dim = math.isqrt(embed_dim // n_feats)
    if patch_dim**2 * n_feats != embed_dim:
        raise ConversionError(
            f"{source}: token dim {embed_dim} is not n_feats ({n_feats}) x patch_dim^2 for any integer patch_dim"
        )
    pe = state["body.position_encoding.pe.weight"]
    num_tokens = int(pe.shape[0])
    if math.isqrt(num_tokens) ** 2 != num_tokens or pe.dim() != 2 or pe.shape[1] != embed_dim:
        raise ConversionError(
            f"{source}: body.position_encoding.pe.weight has shape {tuple(pe.shape)}; "
            f"expected (tokens, {embed_dim}) with a square number of tokens"
        )
    return n_feats, patch_dim, embed_dim, num_tokens


def _task_count(state: Mapping[str, torch.Tensor], num_tokens: int, embed_dim: int, source: str) -> int:
    """The number of tasks: heads, tails and query rows must agree."""
    query = _need(state, QUERY_KEY, "the task queries", source)
    if query.dim() != 2 or query.shape[1] != num_tokens * embed_dim:
        raise ConversionError(
            f"{source}: {QUERY_KEY} has shape {tuple(query.shape)}; expected (tasks, {num_tokens * embed_dim}) "
            f"= {num_tokens} tokens x {embed_dim}"
        )
    num_heads_blocks = _count(state, r"head\.(\d+)\.")
    num_tails = _count(state, r"tail\.(\d+)\.")
    num_queries = int(query.shape[0])
    if not num_heads_blocks == num_tails == num_queries:
        raise ConversionError(
            f"{source}: {num_heads_blocks} heads, {num_tails} tails and {num_queries} query rows; "
            "a convertible checkpoint has one of each per task"
        )
    return num_queries


# -- converting -----------------------------------------------------------------------------------------------


def resolve_task_names(layout: OfficialLayout, tasks: Sequence[str] | None, source: str = "checkpoint") -> list[str]:
    """Our task name for each head/tail index; the tasks' scales must equal the tails' scales."""
    from ipt.registry import get_task

    if tasks is None:
        tasks = layout.default_tasks
        if tasks is None:
            n = layout.num_tasks
            scales = ", ".join(f"x{s}" for s in layout.tail_scales)
            hint = ",".join(f"sr{s}" if s > 1 else "denoise30" for s in layout.tail_scales)
            raise ConversionError(
                f"{source}: {n} head/tail pair{'s' if n > 1 else ''} with scale{'s' if n > 1 else ''} {scales}: "
                f"name the task of each index with --tasks (e.g. --tasks {hint}); "
                "only the six-head pre-training layout has a default"
            )
    tasks = list(tasks)
    if len(tasks) != layout.num_tasks:
        raise ConversionError(
            f"{source}: {len(tasks)} task(s) given ({', '.join(tasks)}) for {layout.num_tasks} head/tail pair(s)"
        )
    dupes = sorted({t for t in tasks if tasks.count(t) > 1})
    if dupes:
        raise ConversionError(f"{source}: task names must be distinct; repeated: {', '.join(dupes)}")
    for i, (name, scale) in enumerate(zip(tasks, layout.tail_scales)):
        spec = get_task(name)
        if spec.scale != scale:
            raise ConversionError(f"{source}: task {name} has scale {spec.scale} but tail {i} upsamples x{scale}")
    return [get_task(t).name for t in tasks]


def official_name(key: str, task_index: Mapping[str, int]) -> str:
    """The official state-dict name of our tensor ``key`` (``task_embed.<task>`` -> the query matrix)."""
    group, _, rest = key.partition(".")
    if group in ("heads", "tails", "task_embed"):
        task, _, rest = rest.partition(".")
        if group == "task_embed":
            return QUERY_KEY
        return f"{group[:-1]}.{task_index[task]}.{rest}"
    for pattern, repl in _BODY_RULES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, repl, key)
    raise ConversionError(f"our model tensor {key!r} has no official counterpart (converter out of date)")


def _listing(title: str, items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOWN]) + (f", ... ({len(items)} in all)" if len(items) > _SHOWN else "")
    return f"{title}: {shown}"


def convert_official(
    state: Mapping[str, torch.Tensor],
    tasks: Sequence[str] | None = None,
    num_heads: int = DEFAULT_NUM_HEADS,
    source: str = "checkpoint",
) -> "IPT":
    """An :class:`~ipt.core.model.IPT` holding the official weights (float32, eval mode).

    ``tasks[i]`` names head/tail/query ``i`` (default for a six-head checkpoint: the official pre-training
    order ``sr2, sr3, sr4, derain, denoise30, denoise50``). Raises :class:`ConversionError` listing missing,
    unexpected and mis-shaped tensors (official names) unless every tensor is used exactly once.
    """
    from ipt.core.model.ipt import IPT

    state = flatten_state(state, source)
    layout = inspect_official(state, num_heads, source)
    if layout.embed_dim % num_heads:
        raise ConversionError(
            f"{source}: --num-heads {num_heads} does not divide the token dim {layout.embed_dim} "
            f"(n_feats {layout.n_feats} x patch_dim^2 {layout.patch_dim**2})"
        )
    names = resolve_task_names(layout, tasks, source)
    model = IPT(layout.to_model_config(num_heads), names)
    target = model.state_dict()
    index = {name: i for i, name in enumerate(names)}
    plan = {key: official_name(key, index) for key in target}

    used = [k for k in plan.values() if k != QUERY_KEY]
    assert len(used) == len(set(used)), "two of our tensors map to one official tensor"
    expected = set(used) | {QUERY_KEY, *MEAN_SHIFT_KEYS}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected - {POSITION_IDS_KEY})
    shapes = set()
    for key, off in plan.items():
        if off not in state:
            continue
        want = (len(names), layout.num_tokens * layout.embed_dim) if off == QUERY_KEY else tuple(target[key].shape)
        if tuple(state[off].shape) != want:
            shapes.add(f"{off}: expected {want}, found {tuple(state[off].shape)}")
    if missing or unexpected or shapes:
        parts = [_listing(t, items) for t, items in (("missing", missing), ("unexpected", unexpected),
                                                      ("mis-shaped", sorted(shapes))) if items]
        raise ConversionError(f"{source}: tensors do not match the inferred layout ({'; '.join(parts)})")
    _check_position_ids(state, layout, source)
    bad = sorted(k for k in expected if state[k].is_floating_point() and not torch.isfinite(state[k]).all())
    if bad:
        raise ConversionError(f"{source}: {_listing('non-finite values (NaN/inf) in', bad)}")

    converted = {}
    for key, off in plan.items():
        value = state[off]
        if off == QUERY_KEY:
            value = value[index[key.partition(".")[2]]].view(layout.num_tokens, layout.embed_dim)
        converted[key] = value.to(target[key].dtype)
    model.load_state_dict(converted, strict=True)
    return model.eval()


def _check_position_ids(state: Mapping[str, torch.Tensor], layout: OfficialLayout, source: str) -> None:
    """The official position ids are the constant ``arange(tokens)``: verified, then dropped."""
    ids = state.get(POSITION_IDS_KEY)
    if ids is None:
        return
    expected = torch.arange(layout.num_tokens)
    if ids.numel() != layout.num_tokens or not torch.equal(ids.reshape(-1).long(), expected):
        raise ConversionError(
            f"{source}: {POSITION_IDS_KEY} is not arange({layout.num_tokens}) (shape {tuple(ids.shape)}); "
            "the converted model always uses the tokens' own positions"
        )


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_file(
    path: str | Path,
    out_dir: str | Path,
    tasks: Sequence[str] | None = None,
    num_heads: int = DEFAULT_NUM_HEADS,
    key: str | None = None,
) -> Path:
    """Convert the official checkpoint ``path`` into the model directory ``out_dir`` (written atomically).

    ``key`` picks the state dict of a wrapped checkpoint (default: EMA weights first, :func:`find_state_dict`);
    ``config.json`` records under ``source`` the file, its sha256, the key used and the state dicts left aside.
    """
    path, out_dir = Path(path), Path(out_dir)
    if out_dir.exists() and not (out_dir / "config.json").is_file() and (out_dir.is_file() or any(out_dir.iterdir())):
        # The model directory is replaced as a whole: never swap out an unrelated folder or file.
        raise ConversionError(f"{out_dir}: exists and is not a model directory; choose a new or empty OUT_DIR")
    found = load_official_checkpoint(path, key)
    model = convert_official(found.state, tasks, num_heads, source=str(path))
    layout = inspect_official(found.state, num_heads, source=str(path))
    source = {
        "format": "official-pretrained-ipt",
        "file": path.name,
        "sha256": file_sha256(path),
        "key": found.key,
        "other_keys": list(found.others),
        "task_index": {name: i for i, name in enumerate(model.task_names)},
        "layout": layout.model_dump(mode="json"),
    }
    return model.save_pretrained(out_dir, source=source)


# -- exporting (the inverse of converting) ---------------------------------------------------------------------


class ExportError(ConversionError):
    """A model that the official layout (and so spandrel, chaiNNer, ComfyUI) cannot express; the message says why."""


def to_official_state_dict(model: "nn.Module", task_order: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Our :class:`~ipt.core.model.IPT` state dict in the official layout (``head.<i>``, ``body.encoder.layers``,
    ``in_proj_weight``, one ``query_embed`` row per task, the mean-shift convs), task ``i`` = ``task_order[i]``.

    The inverse of :func:`convert_official` through the same name mapping (:func:`official_name`); loading the
    result into the official model with ``strict=True`` gives the same function. Tensors are views of the model's.
    """
    tasks = list(task_order if task_order is not None else model.task_names)
    cfg: ModelConfig = model.config
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    mean = torch.tensor(cfg.rgb_mean, dtype=torch.float32) * cfg.rgb_range
    eye = torch.eye(3).view(3, 3, 1, 1)
    out["sub_mean.weight"], out["sub_mean.bias"] = eye.clone(), -mean
    out["add_mean.weight"], out["add_mean.bias"] = eye.clone(), mean.clone()
    index = {t: i for i, t in enumerate(tasks)}
    for key, value in ours.items():
        group, _, rest = key.partition(".")
        if group == "task_embed" or (group in ("heads", "tails") and rest.partition(".")[0] not in index):
            continue  # task embeddings are stacked below; tasks outside task_order are left out
        out[official_name(key, index)] = value
    out[QUERY_KEY] = torch.stack([ours[f"task_embed.{t}"].reshape(-1) for t in tasks])
    out[POSITION_IDS_KEY] = torch.arange(cfg.num_tokens).expand(1, -1)
    return out


def official_architecture_problems(cfg: ModelConfig) -> list[str]:
    """What the official code hard-codes and ``cfg`` does otherwise (empty: the official IPT class can build it)."""
    problems = []
    if cfg.num_enc_layers != cfg.num_dec_layers:
        problems.append(f"num_enc_layers ({cfg.num_enc_layers}) == num_dec_layers ({cfg.num_dec_layers})")
    if cfg.mlp_ratio != 4.0:
        problems.append(f"mlp_ratio 4 (got {cfg.mlp_ratio:g})")
    if cfg.res_kernel != 5:
        problems.append(f"res_kernel 5 (got {cfg.res_kernel})")
    if cfg.layer_norm_eps != 1e-5:
        problems.append(f"layer_norm_eps 1e-5 (got {cfg.layer_norm_eps:g})")
    return problems


def export_problems(model: "IPT", task: str) -> list[str]:
    """Why ``task`` of ``model`` cannot go into an official-layout file that spandrel loads as the same function.

    spandrel infers every hyperparameter from tensor shapes except the attention heads (it assumes 12) and
    ``pos_every``; it reads ``rgb_range`` back from the mean-shift bias assuming the DIV2K mean, rounded to an
    integer; its ``forward_chop`` steps by ``patch_size / 4``. A task head/tail other than the official
    conv + 2 ResBlocks / upsampler + conv has no official counterpart.
    """
    cfg: ModelConfig = model.config
    problems = [f"the official architecture needs {p}" for p in official_architecture_problems(cfg)]
    if cfg.num_heads != DEFAULT_NUM_HEADS:
        problems.append(
            f"the model has {cfg.num_heads} attention heads; the file cannot store them and spandrel (chaiNNer, "
            f"ComfyUI) always builds {DEFAULT_NUM_HEADS}, which would compute a different function"
        )
    if tuple(cfg.rgb_mean) != OFFICIAL_RGB_MEAN or cfg.rgb_range != round(cfg.rgb_range):
        problems.append(
            f"spandrel reads the value range back assuming the DIV2K mean {OFFICIAL_RGB_MEAN} and an integer range; "
            f"this model has mean {tuple(cfg.rgb_mean)} and range {cfg.rgb_range:g}"
        )
    if cfg.patch_size % 4:
        problems.append(f"patch_size {cfg.patch_size} is not a multiple of 4 (the official forward_chop's stride)")
    spec = model.spec(task)
    for part, ours, official in (("head", model.heads[task], build_head(cfg)),
                                 ("tail", model.tails[task], build_tail(cfg, spec.scale))):
        if repr(ours) != repr(official) or _shapes(ours) != _shapes(official):
            problems.append(
                f"task {task!r} has a custom {part} (plugin {spec.plugin or '?'}); the official layout only has "
                f"the standard IPT {part}"
            )
    return problems


def _shapes(module: "nn.Module") -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def export_official(model: "IPT", task: str) -> dict[str, torch.Tensor]:
    """One task of ``model`` as an official-layout state dict (contiguous copies, the model's dtype).

    One task per file because spandrel always runs the largest-scale head/tail. Raises :class:`ExportError` listing
    every reason when :func:`export_problems` finds any; ``convert_official(export_official(m, t), [t])`` gives
    back ``m``'s task ``t`` bit for bit.
    """
    model._check_task(task)
    problems = export_problems(model, task)
    if problems:
        raise ExportError(f"cannot export task {task!r} in the official layout: " + "; ".join(problems))
    return {k: v.detach().cpu().contiguous().clone() for k, v in to_official_state_dict(model, [task]).items()}


def save_official(state: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Write an official-layout state dict: ``.safetensors`` with safetensors, anything else with ``torch.save``
    (a plain dict of tensors, which ``torch.load(weights_only=True)`` and spandrel read). Atomic."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix == ".safetensors":
        return atomic_write_file(path, lambda tmp: save_file(dict(state), str(tmp)))
    return atomic_write_file(path, lambda tmp: torch.save(dict(state), tmp))


def build_reference(model: "nn.Module", task_order: Sequence[str] | None = None) -> "nn.Module":
    """The official architecture (spandrel's copy of it) holding ``model``'s weights, loaded with ``strict=True``.

    Select task ``i`` of ``task_order`` with ``reference.set_scale(i)``. Raises ``ValueError`` for a config the
    official code hard-codes otherwise (:func:`official_architecture_problems`), ``ImportError`` without spandrel.
    """
    problems = official_architecture_problems(model.config)
    if problems:
        raise ValueError("the official architecture needs " + "; ".join(problems))
    try:
        from spandrel.architectures.IPT.__arch.ipt import IPT as OfficialIPT
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(f"the official reference needs spandrel: pip install 'ipt-framework[bench]' ({exc})") from exc
    cfg: ModelConfig = model.config
    tasks = list(task_order if task_order is not None else model.task_names)
    official = OfficialIPT(
        patch_size=cfg.patch_size, patch_dim=cfg.patch_dim, n_feats=cfg.n_feats, rgb_range=cfg.rgb_range,
        scale=[model.scale(t) for t in tasks], num_heads=cfg.num_heads, num_layers=cfg.num_enc_layers,
        num_queries=len(tasks), dropout_rate=cfg.dropout,
    )
    ref_param = next(model.parameters())
    official.load_state_dict(to_official_state_dict(model, tasks), strict=True)
    return official.to(device=ref_param.device, dtype=ref_param.dtype)

"""Moved to :mod:`ipt.core.model.blocks` (kept for one release so that plugins written against it still load)."""

from ipt.core.model.blocks import *  # noqa: F401,F403
from ipt.core.model.blocks import ResBlock, Upsampler, build_head, build_tail, conv  # noqa: F401

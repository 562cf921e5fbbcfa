"""Moved to :mod:`ipt.core.model.config` (kept for one release so that plugins written against it still load)."""

from ipt.core.model.config import *  # noqa: F401,F403
from ipt.core.model.config import OFFICIAL_RGB_MEAN, PRESETS, ModelConfig, preset  # noqa: F401

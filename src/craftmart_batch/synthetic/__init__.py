"""The synthetic marketplace: deterministic source data and realistic changes to it."""

from __future__ import annotations

import logging

from .change_plan import CHANGE_MIX
from .changes import ChangeSummary, apply_changes
from .common import (
    FIRST_DAY,
    INVALID_SHARE,
    LAST_DAY,
    RULES,
    SHAPES,
    SOURCE_SHARES,
    SOURCES,
    STATUSES,
    TABLES,
    Progress,
    Shape,
    check_shape,
)
from .sources import GenerateSummary, create_sources, generate, sources_ddl, split_orders

logger = logging.getLogger(__name__)

__all__ = [
    "CHANGE_MIX",
    "FIRST_DAY",
    "INVALID_SHARE",
    "LAST_DAY",
    "RULES",
    "SHAPES",
    "SOURCES",
    "SOURCE_SHARES",
    "STATUSES",
    "TABLES",
    "ChangeSummary",
    "GenerateSummary",
    "Progress",
    "Shape",
    "apply_changes",
    "check_shape",
    "create_sources",
    "generate",
    "sources_ddl",
    "split_orders",
]

"""The DP tier (engine): draft docstring, written below."""

from remote_kernel.checks.dp.answer import DPAnswer
from remote_kernel.checks.dp.engine import DPPlan, dp_query, plan_dp_query
from remote_kernel.checks.dp.metadata import (
    DPMetadata,
    DPMetadataError,
    PrivacyUnit,
    parse_metadata,
)
from remote_kernel.checks.dp.shape import check_dp_query

__all__ = [
    "DPAnswer",
    "DPMetadata",
    "DPMetadataError",
    "DPPlan",
    "PrivacyUnit",
    "check_dp_query",
    "dp_query",
    "parse_metadata",
    "plan_dp_query",
]

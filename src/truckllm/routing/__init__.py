"""Key and provider state, limits, cooldowns, breakers, and the choice of key for each attempt."""

from truckllm.routing.estimate import Estimate, estimate
from truckllm.routing.headers import ReportedQuota, parse_quota
from truckllm.routing.keystate import KeyState, RoutingSettings, Status
from truckllm.routing.outcome import Outcome, OutcomeKind, classify_status
from truckllm.routing.outlier import OutlierSettings
from truckllm.routing.router import Pick, Router
from truckllm.routing.strategies import STRATEGIES

__all__ = [
    "STRATEGIES",
    "Estimate",
    "KeyState",
    "Outcome",
    "OutcomeKind",
    "OutlierSettings",
    "Pick",
    "ReportedQuota",
    "Router",
    "RoutingSettings",
    "Status",
    "classify_status",
    "estimate",
    "parse_quota",
]

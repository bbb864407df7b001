"""Key and provider state, and the choice of key for each attempt."""

from truckllm.routing.outcome import Outcome, OutcomeKind, classify_status
from truckllm.routing.router import KeyState, Pick, Router

__all__ = ["KeyState", "Outcome", "OutcomeKind", "Pick", "Router", "classify_status"]

"""The gateway proper: a model name resolved to a route, the attempt loop over its targets, and
the runtime (providers, router, resolver, retry policy) one configuration builds.

The only package that knows both the providers and the routing layer.
"""

from truckllm.gateway.attempts import execute, relay
from truckllm.gateway.body import relay_body, whole_body
from truckllm.gateway.resolve import ModelResolver, Route, Target
from truckllm.gateway.retry import RetryBudget, RetryPolicy
from truckllm.gateway.runtime import Runtime, RuntimeHolder
from truckllm.gateway.served import Served, StreamBroken

__all__ = [
    "ModelResolver",
    "RetryBudget",
    "RetryPolicy",
    "Route",
    "Runtime",
    "RuntimeHolder",
    "Served",
    "StreamBroken",
    "Target",
    "execute",
    "relay",
    "relay_body",
    "whole_body",
]

"""The client-facing ASGI application."""

from truckllm.api.app import App

__all__ = ["App"]

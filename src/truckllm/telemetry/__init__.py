"""Logs (and, later, metrics and request-log sinks)."""

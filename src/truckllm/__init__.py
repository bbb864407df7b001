"""TruckLLM: an OpenAI-compatible gateway and load balancer for many LLM providers and keys."""

__version__ = "0.1.0"

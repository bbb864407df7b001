"""TLS contexts for upstream connections: the system's trust store by default, or a provider's own
CA bundle, client certificate (mutual TLS) and verification switch (``providers[].tls``).

Contexts are cached by their settings and the files' modification times, so every provider with
the same settings shares one context (and one pool of connections per origin), a configuration
reload reuses it, and a certificate rotated on disk is picked up by the next reload."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass

__all__ = ["TLSSettings", "build_context"]


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """``ca_file``: PEM bundle trusted instead of the system's store; ``cert_file`` and
    ``key_file``: the client certificate presented to the upstream (the key may sit in the
    certificate's file); ``verify``: false skips certificate and host-name checks."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True

    def cache_key(self) -> tuple[object, ...]:
        """The settings and the files' modification times: a file changed on disk makes a new
        context."""
        stamps = []
        for path in (self.ca_file, self.cert_file, self.key_file):
            try:
                stamps.append(os.stat(path).st_mtime_ns if path else 0)
            except OSError:
                stamps.append(-1)
        return (self.ca_file, self.cert_file, self.key_file, self.verify, *stamps)


def build_context(settings: TLSSettings | None) -> ssl.SSLContext:
    """A client context for ``settings`` (the defaults when None). Raises :class:`OSError` or
    :class:`ssl.SSLError` for a file that is missing or not PEM."""
    if settings is None:
        return ssl.create_default_context()
    if settings.ca_file:
        context = ssl.create_default_context(cafile=settings.ca_file)
    else:
        context = ssl.create_default_context()
    if not settings.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.cert_file:
        context.load_cert_chain(settings.cert_file, settings.key_file or None)
    return context

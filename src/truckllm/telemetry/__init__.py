"""What the gateway tells operators: structured logs (``log``), one record per request (``record``),
Prometheus metrics (``metrics``, ``exposition``), request-log sinks (``sinks``), wired up by ``hub``."""

"""Start TensorZero's gateway from its PyPI wheel (``pip install tensorzero``) and keep it up.

The wheel carries the Rust gateway as a native extension; ``tensorzero._start_http_gateway`` (what
``tensorzero.patch_openai_client`` uses) starts it in this process on a free port and returns its
base URL, which is printed as one line ``TENSORZERO_URL <url>``. Runs until SIGTERM. Run with the
interpreter of the environment that has ``tensorzero`` (``bench/peers.py --peers-python``)::

    /work/peers-venv/bin/python bench/tensorzero_gateway.py tensorzero.toml
"""

from __future__ import annotations

import signal
import sys
import threading


def main() -> int:
    import tensorzero  # type: ignore[import-not-found]  # in the peers virtualenv only

    gateway = tensorzero._start_http_gateway(
        config_file=sys.argv[1],
        clickhouse_url=None,
        postgres_url=None,
        valkey_url=None,
        async_setup=False,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"TENSORZERO_URL {gateway.base_url}", flush=True)
    stop.wait()
    gateway.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

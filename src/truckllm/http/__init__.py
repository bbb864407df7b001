"""Lean HTTP/1.1 for the hot path: a server that runs the ASGI app and a pooled upstream client,
both asyncio protocols over httptools (llhttp). Measured against uvicorn + aiohttp on the 2-core
machines, a passthrough on these protocols served about 2.9x the requests/s (bench/overhead.py)."""

"""Peak memory of a large audio upload relayed by the gateway.

Spawns ``truckllm mock`` and a gateway (``model_aliases: {ears: <mock>:gpt-4o-transcribe}``, so
the form's ``model`` field is rewritten on the way), then POSTs one ``multipart/form-data``
transcription of ``--mb`` MB of random bytes and reads the gateway's resident set before
(``VmRSS``) and its peak after (``VmHWM``). The gateway relays the upload while it arrives (it
reads the form only up to its ``model`` field, then writes the rest upstream as the client sends
it, keeping a copy in a spool file for retries), so the growth is a few windows of the body,
whatever the upload's size. ``--file-first`` puts the ``model`` field after the file (as the
Node SDK does): the gateway then reads the file into the spool (on disk past 1 MiB) before it
knows where to send it, with the same memory bound.

    python bench/upload.py [--mb 50] [--file-first] [--json out.json]
"""

from __future__ import annotations

import argparse
import http.client
import os
import tempfile
from pathlib import Path
from typing import Any

from common import (
    HOST,
    BenchError,
    default_python,
    free_port,
    proc_status_kb,
    run_and_report,
    start,
    start_gateway,
    wait_http,
)

BOUNDARY = "truckllm-bench-boundary"


def form(size: int, file_first: bool = False) -> bytes:
    model = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nears\r\n'
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    )
    file = head.encode() + os.urandom(size) + b"\r\n"
    parts = file + model.encode() if file_first else model.encode() + file
    return parts + f"--{BOUNDARY}--\r\n".encode()


def bench(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="truckllm-upload-"))
    mock_port = free_port()
    mock = start(
        "mock",
        [args.python, "-m", "truckllm", "mock", "--listen", f"{HOST}:{mock_port}"],
        mock_port,
        tmp,
    )
    size = args.mb * 1024 * 1024
    config = tmp / "gateway.yaml"
    config.write_text(
        f"providers: [{{id: mock, base_url: '{mock.base}/v1', keys: [{{id: k, secret: sk}}]}}]\n"
        "model_aliases: {ears: 'mock:gpt-4o-transcribe'}\n"
        f"server: {{max_body_bytes: {size + 1024 * 1024}}}\n"
    )
    try:
        wait_http(mock.base + "/v1/models")
        gw = start_gateway(args.python, config, tmp)
        try:
            assert gw.proc is not None
            body = form(size, args.file_first)
            before = proc_status_kb(gw.proc.pid, "VmRSS")
            conn = http.client.HTTPConnection(HOST, gw.port, timeout=120)
            headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
            conn.request("POST", "/v1/audio/transcriptions", body=body, headers=headers)
            resp = conn.getresponse()
            answer = resp.read()
            conn.close()
            if resp.status != 200 or str(size).encode() not in answer:
                raise BenchError(f"the upload failed: {resp.status} {answer[:200]!r}")
            peak = proc_status_kb(gw.proc.pid, "VmHWM")
        finally:
            gw.stop()
    finally:
        mock.stop()
    return {
        "upload_mb": args.mb,
        "model_field": "after the file" if args.file_first else "first",
        "rss_before_kb": before,
        "peak_kb": peak,
    }


def report(r: dict[str, Any]) -> str:
    growth = (r["peak_kb"] - r["rss_before_kb"]) / 1024
    return (
        "| upload | model field | RSS before | peak RSS | growth |\n|---|---|---|---|---|\n"
        f"| {r['upload_mb']} MB | {r['model_field']} | {r['rss_before_kb'] / 1024:.0f} MB "
        f"| {r['peak_kb'] / 1024:.0f} MB | {growth:.0f} MB |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--file-first", action="store_true", help="the model field last")
    parser.add_argument("--python", default=default_python())
    parser.add_argument("--json", type=Path)
    return run_and_report(bench, report, parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())

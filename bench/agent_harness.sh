# Shared by bench/claude_code.sh and bench/codex.sh (sourced, not run): a work folder, the agent
# CLI installed from npm into a cache folder, free ports, a refusing proxy on loopback that logs
# every connection attempted through it, `truckllm mock`, the gateway, and the closing report.
# After `harness_start PACKAGE BIN`, these are set: $work, $cli, $mock_port, $gw_port, $proxy_port.

harness_start() {  # PACKAGE BIN CACHE
  work=$(mktemp -d)
  trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
  local cache=$3
  if [ ! -x "$cache/node_modules/.bin/$2" ]; then
    mkdir -p "$cache"
    (cd "$cache" && npm install --no-audit --no-fund --silent "$1" >/dev/null)
  fi
  cli="$cache/node_modules/.bin/$2"
  mock_port=$(harness_port); gw_port=$(harness_port); proxy_port=$(harness_port)
  python3 - "$proxy_port" "$work/proxy.log" <<'PY' &
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
with open(sys.argv[2], "a") as log:
    while True:
        c, _ = s.accept()
        log.write(c.recv(4096).split(b"\r\n", 1)[0].decode("latin-1") + "\n"); log.flush()
        c.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"); c.close()
PY
  truckllm mock --listen "127.0.0.1:$mock_port" --reply-tokens 6 >"$work/mock.log" 2>&1 &
}

harness_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

harness_gateway() {  # CONFIG_FILE: serve it, wait until it answers
  truckllm -config "$1" >"$work/gateway.log" 2>&1 &
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$gw_port/healthz" >/dev/null && return 0
    sleep 0.1
  done
  echo "the gateway did not start:"; cat "$work/gateway.log"; exit 1
}

harness_report() {  # the request log (a file sink at $work/requests.jsonl) and the proxy's log
  sleep 0.5  # the request log's flush interval
  echo "== requests the gateway served: count, endpoint, model, provider, status, stream, with session id"
  python3 - "$work/requests.jsonl" <<'PY'
import collections, json, sys
rows = collections.Counter()
for line in open(sys.argv[1]):
    r = json.loads(line)
    key = (r["endpoint"], r["model"], r["provider"], r["status"], r["stream"])
    rows[(*key, r["session_id"] is not None)] += 1
for row, n in sorted(rows.items()):
    print(f"  {n:4d}", *row)
PY
  echo "== connections the CLI tried beyond loopback (refused):"
  sort "$work/proxy.log" 2>/dev/null | uniq -c || true
}

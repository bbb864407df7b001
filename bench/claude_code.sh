#!/usr/bin/env bash
# Claude Code itself, in print mode, through the gateway in front of `truckllm mock`: once over an
# Anthropic provider (passthrough) and once over an OpenAI-compatible one (translation).
# Needs Node.js and npm; installs @anthropic-ai/claude-code into a cache folder on first run.
# Loopback only: telemetry, auto-update and error reporting are off, and a refusing proxy on
# 127.0.0.1 catches any other connection the CLI attempts (reported at the end).
#
#   . .venv/bin/activate && bash bench/claude_code.sh   # exit 0 when both runs printed an answer
# (`truckllm` must be on the PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
cache=${CLAUDE_CODE_CACHE:-$HOME/.cache/truckllm-claude-code}
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

if [ ! -x "$cache/node_modules/.bin/claude" ]; then
  mkdir -p "$cache"
  (cd "$cache" && npm install --no-audit --no-fund --silent @anthropic-ai/claude-code >/dev/null)
fi
claude="$cache/node_modules/.bin/claude"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mock_port=$(free_port); gw_port=$(free_port); proxy_port=$(free_port)

# A proxy that refuses everything and logs what was asked: nothing may leave loopback.
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
cat >"$work/config.yaml" <<YAML
server:
  listen: "127.0.0.1:$gw_port"
  api_keys: [cc-client-key]
providers:
  - {id: anthropic-mock, type: anthropic, base_url: "http://127.0.0.1:$mock_port", keys: [{secret: sk-ant-mock}]}
  - {id: openai-mock, type: openai, base_url: "http://127.0.0.1:$mock_port/v1", keys: [{secret: sk-oai-mock}]}
logging:
  sinks: [{type: file, path: "$work/requests.jsonl", flush_interval: 0.1}]
model_aliases:
  claude-via-anthropic: anthropic-mock:claude-sonnet-4-5
  claude-via-openai: openai-mock:gpt-4o-mini
YAML
truckllm -config "$work/config.yaml" >"$work/gateway.log" 2>&1 &
up=""
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$gw_port/healthz" >/dev/null && up=1 && break; sleep 0.1
done
if [ -z "$up" ]; then echo "the gateway did not start:"; cat "$work/gateway.log"; exit 1; fi

status=0
for model in claude-via-anthropic claude-via-openai; do
  out=$(cd "$work" && HOME="$work/home" TMPDIR="$work" \
    ANTHROPIC_BASE_URL="http://127.0.0.1:$gw_port" ANTHROPIC_API_KEY=cc-client-key \
    ANTHROPIC_MODEL="$model" ANTHROPIC_SMALL_FAST_MODEL="$model" \
    DISABLE_TELEMETRY=1 DISABLE_AUTOUPDATER=1 DISABLE_ERROR_REPORTING=1 DISABLE_BUG_COMMAND=1 \
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 CLAUDE_CODE_MAX_RETRIES=1 \
    HTTPS_PROXY="http://127.0.0.1:$proxy_port" HTTP_PROXY="http://127.0.0.1:$proxy_port" \
    NO_PROXY=127.0.0.1,localhost \
    timeout 120 "$claude" -p "Reply with the word PONG" --model "$model" \
      --output-format text --no-session-persistence </dev/null 2>&1) && rc=0 || rc=$?
  echo "== $model: exit $rc"
  echo "$out" | tail -5
  if [ "$rc" -ne 0 ] || [ -z "$out" ]; then status=1; fi
done
sleep 0.5  # the request log's flush interval
echo "== requests the gateway served: count, endpoint, model, provider, status, with session id"
python3 - "$work/requests.jsonl" <<'PY'
import collections, json, sys
rows = collections.Counter()
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows[(r["endpoint"], r["model"], r["provider"], r["status"], r["session_id"] is not None)] += 1
for row, n in sorted(rows.items()):
    print(f"  {n:4d}", *row)
PY
echo "== connections the CLI tried beyond loopback (refused):"
sort "$work/proxy.log" 2>/dev/null | uniq -c || true
exit $status

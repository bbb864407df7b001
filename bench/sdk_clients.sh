#!/usr/bin/env bash
# Client SDKs unchanged against the gateway's Responses API, in front of `truckllm mock`: over a
# provider that serves the Responses API (responses_api: passthrough) and over an Anthropic one
# (translation through the internal form).
# - the official Node `openai` SDK (bench/sdk_clients.cjs): responses.create plain and streamed,
#   a function tool round trip with previous_response_id, retrieve, input_items.list, delete;
# - LangChain's ChatOpenAI(use_responses_api=True) and the OpenAI Agents SDK running a
#   tool-using agent (bench/sdk_clients.py).
# Needs Node.js/npm and network access to npm and PyPI on first run: the SDKs go into a cache
# folder ($SDK_CACHE, default ~/.cache/truckllm-sdk-clients), never into the project's venv.
# Loopback only (the Agents SDK's tracing is off).
#
#   bash bench/sdk_clients.sh      # exit 0 when every check passed
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/agent_harness.sh
cache=${SDK_CACHE:-$HOME/.cache/truckllm-sdk-clients}
mkdir -p "$cache/node"
if [ ! -d "$cache/node/node_modules/openai" ]; then
  (cd "$cache/node" && npm install --no-audit --no-fund --silent openai >/dev/null)
fi
if [ ! -x "$cache/venv/bin/python" ]; then
  python3 -m venv "$cache/venv"
  "$cache/venv/bin/pip" install -q langchain-openai openai-agents
fi
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
mock_port=$(harness_port); gw_port=$(harness_port)
truckllm mock --listen "127.0.0.1:$mock_port" --reply-tokens 6 >"$work/mock.log" 2>&1 &
cat >"$work/config.yaml" <<YAML
server:
  listen: "127.0.0.1:$gw_port"
  api_keys: [sdk-client-key]
providers:
  - {id: responses-mock, type: openai, responses_api: true, base_url: "http://127.0.0.1:$mock_port/v1", keys: [{secret: sk-resp-mock}]}
  - {id: anthropic-mock, type: anthropic, base_url: "http://127.0.0.1:$mock_port", keys: [{secret: sk-ant-mock}]}
logging:
  sinks: [{type: file, path: "$work/requests.jsonl", flush_interval: 0.1}]
model_aliases:
  sdk-passthrough: responses-mock:gpt-4.1-mini
  sdk-on-anthropic: anthropic-mock:claude-sonnet-4-5
YAML
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$mock_port/v1/models" >/dev/null && break; sleep 0.1; done
harness_gateway "$work/config.yaml"
base="http://127.0.0.1:$gw_port/v1"
status=0
echo "== Node openai $(node -p "require('$cache/node/node_modules/openai/package.json').version")"
NODE_PATH="$cache/node/node_modules" node bench/sdk_clients.cjs "$base" sdk-client-key \
  sdk-passthrough sdk-on-anthropic || status=1
echo "== $("$cache/venv/bin/pip" list 2>/dev/null | grep -E '^(langchain-openai|openai-agents) ' | tr -s ' ' | paste -sd, -)"
"$cache/venv/bin/python" bench/sdk_clients.py "$base" sdk-client-key \
  sdk-passthrough sdk-on-anthropic || status=1
sleep 0.5  # the request log's flush interval
echo "== requests the gateway served: count, endpoint, model, provider, status, stream"
python3 - "$work/requests.jsonl" <<'PY'
import collections, json, sys
rows = collections.Counter()
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows[(r["endpoint"], r["model"], r["provider"], r["status"], r["stream"])] += 1
for row, n in sorted(rows.items(), key=str):
    print(f"  {n:4d}", *row)
PY
exit $status

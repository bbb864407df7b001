#!/usr/bin/env bash
# Codex CLI itself (`codex exec`) through the gateway in front of `truckllm mock`, over a provider
# that does not speak the Responses API (an OpenAI-compatible chat upstream: translation), and
# over one that does (responses_api: passthrough).
# Needs Node.js and npm; installs @openai/codex into a cache folder on first run.
# Loopback only: analytics and plugins are off (agent-wire.md), and a refusing proxy on 127.0.0.1
# catches any other connection the CLI attempts (reported at the end).
#
#   bash bench/codex.sh            # exit 0 when both runs printed an answer
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/agent_harness.sh
harness_start @openai/codex codex "${CODEX_CACHE:-$HOME/.cache/truckllm-codex}"
cat >"$work/config.yaml" <<YAML
server:
  listen: "127.0.0.1:$gw_port"
  api_keys: [codex-client-key]
providers:
  - {id: chat-mock, type: openai, base_url: "http://127.0.0.1:$mock_port/v1", keys: [{secret: sk-chat-mock}]}
  - {id: responses-mock, type: openai, responses_api: true, base_url: "http://127.0.0.1:$mock_port/v1", keys: [{secret: sk-resp-mock}]}
  - {id: anthropic-mock, type: anthropic, base_url: "http://127.0.0.1:$mock_port", keys: [{secret: sk-ant-mock}]}
logging:
  sinks: [{type: file, path: "$work/requests.jsonl", flush_interval: 0.1}]
model_aliases:
  codex-translated: chat-mock:gpt-4o-mini
  codex-on-anthropic: anthropic-mock:claude-sonnet-4-5
  codex-passthrough: responses-mock:gpt-5-codex
YAML
harness_gateway "$work/config.yaml"

status=0
for model in codex-translated codex-on-anthropic codex-passthrough; do
  home="$work/home-$model"; mkdir -p "$home/codex" "$work/run-$model"
  cat >"$home/codex/config.toml" <<TOML
model = "$model"
model_provider = "truckllm"
check_for_update_on_startup = false
[analytics]
enabled = false
[features]
plugins = false
[model_providers.truckllm]
name = "TruckLLM"
base_url = "http://127.0.0.1:$gw_port/v1"
env_key = "TRUCKLLM_API_KEY"
wire_api = "responses"
request_max_retries = 1
stream_max_retries = 1
TOML
  out=$(cd "$work/run-$model" && HOME="$home" TMPDIR="$work" CODEX_HOME="$home/codex" \
    TRUCKLLM_API_KEY=codex-client-key \
    HTTPS_PROXY="http://127.0.0.1:$proxy_port" HTTP_PROXY="http://127.0.0.1:$proxy_port" \
    ALL_PROXY="http://127.0.0.1:$proxy_port" NO_PROXY=127.0.0.1,localhost \
    timeout 120 "$cli" exec --skip-git-repo-check --sandbox read-only --ephemeral \
      --color never --strict-config "Reply with the word PONG" </dev/null 2>"$work/codex-$model.err") \
    && rc=0 || rc=$?
  echo "== $model: exit $rc, answer: $out"
  if [ "$rc" -ne 0 ] || [ -z "$out" ]; then status=1; tail -5 "$work/codex-$model.err"; fi
done
harness_report
exit $status

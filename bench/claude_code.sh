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
. bench/agent_harness.sh
harness_start @anthropic-ai/claude-code claude "${CLAUDE_CODE_CACHE:-$HOME/.cache/truckllm-claude-code}"
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
harness_gateway "$work/config.yaml"

status=0
for model in claude-via-anthropic claude-via-openai; do
  out=$(cd "$work" && HOME="$work/home" TMPDIR="$work" \
    ANTHROPIC_BASE_URL="http://127.0.0.1:$gw_port" ANTHROPIC_API_KEY=cc-client-key \
    ANTHROPIC_MODEL="$model" ANTHROPIC_SMALL_FAST_MODEL="$model" \
    DISABLE_TELEMETRY=1 DISABLE_AUTOUPDATER=1 DISABLE_ERROR_REPORTING=1 DISABLE_BUG_COMMAND=1 \
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 CLAUDE_CODE_MAX_RETRIES=1 \
    HTTPS_PROXY="http://127.0.0.1:$proxy_port" HTTP_PROXY="http://127.0.0.1:$proxy_port" \
    NO_PROXY=127.0.0.1,localhost \
    timeout 120 "$cli" -p "Reply with the word PONG" --model "$model" \
      --output-format text --no-session-persistence </dev/null 2>&1) && rc=0 || rc=$?
  echo "== $model: exit $rc"
  echo "$out" | tail -5
  if [ "$rc" -ne 0 ] || [ -z "$out" ]; then status=1; fi
done
harness_report
exit $status

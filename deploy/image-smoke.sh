#!/usr/bin/env bash
# Build the image, run it in front of `truckllm mock` (the same image), send requests and check
# the answers, stop it with SIGTERM while a stream is in flight (the stream must finish and the
# gateway exit 0), and report the image's size. Not part of pytest (about a minute; needs root
# and podman). docs/deploy.md has a run's output.
#
#   deploy/image-smoke.sh
#   BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm deploy/image-smoke.sh
#
# BASE_IMAGE unset: the registry's python:3.11-slim-bookworm if it can be pulled, else a base
# made here from Debian packages (deploy/debian-base.sh). ENGINE=docker works too.
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINE=${ENGINE:-podman}
TAG=${TAG:-localhost/truckllm:smoke}
NET=truckllm-smoke
PORT=${PORT:-18080}
CLIENT_KEY=sk-smoke-client
OFFICIAL=docker.io/library/python:3.11-slim-bookworm
LOCAL_BASE=localhost/truckllm-base:bookworm
work=$(mktemp -d)

if ! command -v "$ENGINE" >/dev/null; then
  echo "== installing podman"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah >/dev/null
fi

cleanup() {
  "$ENGINE" rm -f -t 0 smoke-gw smoke-mock >/dev/null 2>&1 || true
  "$ENGINE" network rm -f "$NET" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  "$ENGINE" logs smoke-gw 2>&1 | tail -20 >&2 || true
  exit 1
}

if [ -z "${BASE_IMAGE:-}" ]; then
  if "$ENGINE" image exists "$OFFICIAL" 2>/dev/null || "$ENGINE" pull -q "$OFFICIAL" >/dev/null 2>&1; then
    BASE_IMAGE=$OFFICIAL
  else
    echo "== cannot pull $OFFICIAL: using a base made from Debian packages ($LOCAL_BASE)"
    "$ENGINE" image exists "$LOCAL_BASE" 2>/dev/null || ENGINE=$ENGINE deploy/debian-base.sh "$LOCAL_BASE"
    BASE_IMAGE=$LOCAL_BASE
  fi
fi

# Some sandboxes (this project's CI machine among them) deny what podman's defaults ask of the
# OCI runtime: crun refuses cgroup v1 + v2 "hybrid" hosts, and raising RLIMIT_NOFILE/NPROC needs
# CAP_SYS_RESOURCE. Then: runc, and limits within the hard ones this shell has.
global=()
limits=()
if ! "$ENGINE" run --rm "$BASE_IMAGE" true 2>"$work/probe.err"; then
  echo "== '$ENGINE run' fails here ($(tail -1 "$work/probe.err")): retrying with runc and explicit ulimits"
  command -v runc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc >/dev/null
  global=(--runtime runc)
  nofile=$(ulimit -Hn)
  limits=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=4096:4096")
  "$ENGINE" "${global[@]}" run --rm "${limits[@]}" "$BASE_IMAGE" true || fail "containers cannot run here"
fi
E() { "$ENGINE" "${global[@]}" "$@"; }

echo "== build $TAG (BASE_IMAGE=$BASE_IMAGE)"
start=$(date +%s)
E build --format docker "${limits[@]}" --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$TAG" . >"$work/build.log" 2>&1 \
  || { tail -30 "$work/build.log"; fail "build"; }
echo "   built in $(($(date +%s) - start)) s"

cat >"$work/config.yaml" <<EOF
providers:
  - id: mock
    base_url: http://smoke-mock:9000/v1
    models: [gpt-4o-mini]
    keys:
      - id: mock-1
        secret: \${MOCK_KEY}
server:
  listen: "0.0.0.0:8080"
  api_keys: ["\${TRUCKLLM_CLIENT_KEY}"]
  shutdown_timeout: 20
EOF
chmod 644 "$work/config.yaml"

E network create "$NET" >/dev/null
# Streams of 40 tokens at 20 a second: 2 s each, long enough to be in flight at the SIGTERM.
# (podman's complaints that it cannot reach systemd to schedule HEALTHCHECK timers go to
# engine.log; the health check is run by hand below.)
E run -d --name smoke-mock --network "$NET" "${limits[@]}" "$TAG" \
  truckllm mock --listen 0.0.0.0:9000 --tokens-per-s 20 --reply-tokens 40 >/dev/null 2>>"$work/engine.log"
E run -d --name smoke-gw --network "$NET" "${limits[@]}" -p "127.0.0.1:$PORT:8080" \
  -e MOCK_KEY=sk-mock -e TRUCKLLM_CLIENT_KEY="$CLIENT_KEY" \
  -v "$work/config.yaml:/etc/truckllm/config.yaml:ro" "$TAG" >/dev/null 2>>"$work/engine.log"

url=http://127.0.0.1:$PORT
for _ in $(seq 100); do
  curl -sf "$url/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -sf "$url/readyz" >/dev/null || fail "/readyz never answered 200"
echo "== ready: $(curl -s "$url/readyz")"
echo "   runs as: $(E exec smoke-gw id -u):$(E exec smoke-gw id -g), PID 1 is: $(E exec smoke-gw cat /proc/1/cmdline | tr '\0' ' ')"
E healthcheck run smoke-gw >/dev/null 2>>"$work/engine.log" && echo "   HEALTHCHECK: healthy" || fail "HEALTHCHECK"

body='{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}]}'
answer=$(curl -s "$url/v1/chat/completions" -H "Authorization: Bearer $CLIENT_KEY" \
  -H 'Content-Type: application/json' -d "$body")
python3 - "$answer" <<'PY' || fail "chat answer: $answer"
import json, sys
a = json.loads(sys.argv[1])
text = a["choices"][0]["message"]["content"]
assert text and a["usage"]["completion_tokens"] == 40, a
u = a["usage"]
print(f"== chat completion: {len(text.split())} words, {u['prompt_tokens']} + {u['completion_tokens']} tokens")
PY
status=$(curl -s -o /dev/null -w '%{http_code}' "$url/v1/chat/completions" -H 'Content-Type: application/json' -d "$body")
[ "$status" = 401 ] || fail "no client key: $status, expected 401"
echo "   without the client key: $status"

echo "== SIGTERM with a stream in flight"
stream='{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}'
curl -sN "$url/v1/chat/completions" -H "Authorization: Bearer $CLIENT_KEY" \
  -H 'Content-Type: application/json' -d "$stream" >"$work/stream.txt" &
curl_pid=$!
for _ in $(seq 50); do [ -s "$work/stream.txt" ] && break; sleep 0.05; done
[ -s "$work/stream.txt" ] || fail "the stream did not start"
start=$(date +%s.%N)
E stop -t 25 smoke-gw >/dev/null 2>>"$work/engine.log"  # SIGTERM (the image's STOPSIGNAL); SIGKILL only after 25 s
stopped=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
wait "$curl_pid" || true
code=$(E inspect --format '{{.State.ExitCode}}' smoke-gw)
events=$(grep -c '^data: {' "$work/stream.txt" || true)
grep -q '^data: \[DONE\]' "$work/stream.txt" || fail "the in-flight stream was cut: $(tail -c 300 "$work/stream.txt")"
[ "$code" = 0 ] || fail "exit status $code after SIGTERM"
echo "   the stream finished ($events events, then [DONE]); the gateway exited $code after ${stopped} s"

size=$(E image inspect --format '{{.Size}}' "$TAG")
base=$(E image inspect --format '{{.Size}}' "$BASE_IMAGE")
gz=$(E save "$TAG" 2>/dev/null | gzip -1 | wc -c)
echo "== image $TAG: $((size / 1000000)) MB ($((base / 1000000)) MB of it the base $BASE_IMAGE; $((gz / 1000000)) MB saved and gzipped)"
echo "OK"

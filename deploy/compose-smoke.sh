#!/usr/bin/env bash
# Run deploy/compose.yaml with podman-compose and check it: requests through Caddy reach both
# replicas, the usage ledger is shared through Redis (one replica's admin API counts what the
# other served), Prometheus scrapes both, and restarting a replica under load fails no request.
# Not part of pytest (a few minutes; needs root and podman). docs/deploy.md has a run's output.
#
#   deploy/compose-smoke.sh          (KEEP=1: leave the stack running)
#
# Where the registry's images cannot be pulled (this project's machines), Redis, Caddy and
# Prometheus run from stand-in images made here from Debian's packages of them, on the base of
# deploy/debian-base.sh, through the compose file's *_IMAGE variables; Grafana has no Debian
# package and is left out (its dashboard is checked by tests/test_deploy.py instead).
set -euo pipefail
cd "$(dirname "$0")/.."
export ENGINE=podman
TAG=localhost/truckllm:latest
BASE=localhost/truckllm-base:bookworm
STANDIN=localhost/truckllm-standin
work=$(mktemp -d)
pc_venv=/tmp/truckllm-podman-compose
[ -x "$pc_venv/bin/podman-compose" ] || {
  python3 -m venv "$pc_venv"
  "$pc_venv/bin/pip" install -q podman-compose==1.6.0 2>&1 | grep -v '^WARNING: Location' || true
}
compose() { "$pc_venv/bin/podman-compose" -f deploy/compose.yaml "$@"; }
cleanup() {
  [ -n "${KEEP:-}" ] || compose down -t 5 >"$work/down.log" 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  compose logs --tail 20 >&2 2>/dev/null || true
  exit 1
}

podman image exists "$BASE" || deploy/debian-base.sh "$BASE"
# As in image-smoke.sh: where podman's default OCI runtime cannot start containers here, runc
# with limits inside this shell's hard ones, for every container podman-compose starts.
if ! podman run --rm "$BASE" true 2>/dev/null; then
  command -v runc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc >/dev/null
  cat >"$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=4096:4096"]
[engine]
runtime = "runc"
EOF
  export CONTAINERS_CONF=$work/containers.conf
  echo "== podman's default runtime cannot start containers here: runc (CONTAINERS_CONF)"
fi

echo "== build $TAG and the stand-ins from Debian packages"
podman build -q --format docker --build-arg "BASE_IMAGE=$BASE" -t "$TAG" . >/dev/null
if ! podman pull -q docker.io/library/redis:7.4-alpine >/dev/null 2>&1; then
  printf 'FROM %s\nRUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools caddy prometheus >/dev/null && rm -rf /var/lib/apt/lists/*\n' "$BASE" \
    | podman build -q -t "$STANDIN:services" -f - . >/dev/null
  printf 'FROM %s\nCMD ["redis-server"]\n' "$STANDIN:services" | podman build -q -t "$STANDIN:redis" -f - . >/dev/null
  printf 'FROM %s\nCMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]\n' \
    "$STANDIN:services" | podman build -q -t "$STANDIN:caddy" -f - . >/dev/null
  printf 'FROM %s\nCMD ["prometheus", "--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/tmp/prometheus"]\n' \
    "$STANDIN:services" | podman build -q -t "$STANDIN:prometheus" -f - . >/dev/null
  export REDIS_IMAGE=$STANDIN:redis CADDY_IMAGE=$STANDIN:caddy PROMETHEUS_IMAGE=$STANDIN:prometheus
  services=(redis mock gateway-1 gateway-2 lb prometheus)
  echo "   Redis, Caddy, Prometheus: Debian's packages in $STANDIN:*; Grafana left out"
else
  services=()
fi

echo "== podman-compose up"
compose up -d --no-build "${services[@]}" >"$work/up.log" 2>&1 || { tail -20 "$work/up.log"; fail "compose up"; }
key=sk-compose-client
admin=sk-compose-admin
for _ in $(seq 150); do
  curl -sf localhost:8081/readyz >/dev/null 2>&1 && curl -sf localhost:8082/readyz >/dev/null 2>&1 \
    && curl -sf localhost:8080/readyz >/dev/null 2>&1 && break
  sleep 0.2
done
echo "   readyz: 1 $(curl -s localhost:8081/readyz); 2 $(curl -s localhost:8082/readyz)"
body='{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}'
chat() { curl -s -o /dev/null -w '%{http_code}\n' localhost:8080/v1/chat/completions \
  -H "Authorization: Bearer $key" -H 'Content-Type: application/json' -d "$body"; }

for _ in $(seq 20); do chat; done >"$work/codes.txt"
echo "== 20 requests through Caddy: $(sort "$work/codes.txt" | uniq -c | tr -s ' ' | tr '\n' ';')"
[ "$(grep -c '^200$' "$work/codes.txt")" = 20 ] || fail "not all 200"
served() { curl -s "localhost:$1/metrics" | awk '/^truckllm_requests_total/ {s += $NF} END {print s + 0}'; }
s1=$(served 8081)
s2=$(served 8082)
echo "   served: gateway-1 $s1, gateway-2 $s2"
[ "$s1" -gt 0 ] && [ "$s2" -gt 0 ] || fail "one replica served nothing"
sleep 2  # storage.runtime.flush_interval (1 s): the ledgers' batches reach Redis
usage() { curl -s "localhost:$1/admin/v1/usage" -H "Authorization: Bearer $admin" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["total"]["requests"])'; }
u1=$(usage 8081)
u2=$(usage 8082)
echo "== shared usage ledger (Redis): gateway-1's admin API counts $u1 requests, gateway-2's $u2"
[ "$u1" -ge 20 ] && [ "$u1" = "$u2" ] || fail "the usage is not shared"

promql() {  # the value of a one-series instant query, or 0
  curl -sG localhost:9090/api/v1/query --data-urlencode "query=$1" 2>/dev/null | python3 -c '
import json, sys
try:
    r = json.load(sys.stdin)["data"]["result"]
    print(r[0]["value"][1] if r else 0)
except ValueError:
    print(0)'
}
if [ -n "${PROMETHEUS_IMAGE:-}" ] || podman container exists truckllm_prometheus_1; then
  for _ in $(seq 60); do
    up=$(promql 'sum(up{job="truckllm"})')
    [ "$up" = 2 ] && break
    sleep 0.5
  done
  total=$(promql 'sum(truckllm_requests_total)')
  echo "== Prometheus: $up of 2 gateway targets up; sum(truckllm_requests_total) = $total"
  [ "$up" = 2 ] || fail "Prometheus does not scrape both replicas"
fi

echo "== restart gateway-1, then gateway-2 (SIGTERM: drain delay, drain; start) under load through Caddy"
stream='{"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}'
streamed() {  # "200" for a stream that ended with [DONE], else what came
  out=$(curl -sN localhost:8080/v1/chat/completions -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/json' -d "$stream")
  if grep -q '^data: \[DONE\]' <<<"$out"; then echo 200; else echo "cut: ${out: -120}"; fi
}
( while [ ! -f "$work/stop" ]; do chat; done >"$work/rolling.txt" ) &
loader=$!
( while [ ! -f "$work/stop" ]; do streamed; done >"$work/rolling-streams.txt" ) &
streamer=$!
sleep 1
podman restart -t 40 truckllm_gateway-1_1 >/dev/null
for _ in $(seq 100); do curl -sf localhost:8081/readyz >/dev/null 2>&1 && break; sleep 0.1; done
sleep 1
podman restart -t 40 truckllm_gateway-2_1 >/dev/null
for _ in $(seq 100); do curl -sf localhost:8082/readyz >/dev/null 2>&1 && break; sleep 0.1; done
sleep 1
touch "$work/stop"
wait "$loader" "$streamer"
echo "   $(wc -l <"$work/rolling.txt") requests during the two restarts: $(sort "$work/rolling.txt" | uniq -c | tr -s ' ' | tr '\n' ';')"
echo "   $(wc -l <"$work/rolling-streams.txt") streams beside them: $(sort "$work/rolling-streams.txt" | uniq -c | tr -s ' ' | tr '\n' ';')"
[ "$(grep -vc '^200$' "$work/rolling.txt")" = 0 ] || fail "requests failed during the restarts"
[ "$(grep -vc '^200$' "$work/rolling-streams.txt")" = 0 ] || fail "streams failed during the restarts"
echo "OK"

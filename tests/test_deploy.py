"""The deployment files (docs/deploy.md) against the code they deploy: the compose stack's
gateway configuration served as shipped, by two gateways on one real Redis, exposing every metric
the Grafana dashboard queries; the Helm chart's rendered manifests (deploy/helm/rendered.yaml,
written by deploy/helm/validate.sh) loading as a configuration and agreeing with it; the image's
default configuration and command; the lock files' drift check."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import Gateway
from prometheus_client.parser import text_string_to_metric_families
from redis_server import RedisServer, redis_server  # noqa: F401 - a fixture

from truckllm.api import App
from truckllm.config import Config, load_config, parse_config, parse_listen
from truckllm.providers import provider_registry
from truckllm.testing.mock import MockUpstream
from truckllm.testing.serve import ServerThread

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
DASHBOARD = json.loads((DEPLOY / "grafana/dashboards/truckllm.json").read_text())
RENDERED = DEPLOY / "helm/rendered.yaml"
METRIC = re.compile(r"\b(truckllm_[a-z_]+)")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def compose_config(env: dict[str, str]) -> Config:
    return load_config(str(DEPLOY / "compose/truckllm.yaml"), env, provider_registry().names())


def dashboard_queries() -> list[str]:
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(DASHBOARD)
    return exprs


def test_compose_wires_two_replicas_to_one_redis_the_mock_and_prometheus() -> None:
    services = COMPOSE["services"]
    gateways = [services["gateway-1"], services["gateway-2"]]
    assert gateways[0]["environment"] == gateways[1]["environment"]
    env = gateways[0]["environment"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in gateways[0]["volumes"]}
    assert (DEPLOY / mounted["/etc/truckllm/config.yaml"]).resolve() == (
        DEPLOY / "compose/truckllm.yaml"
    )
    cfg = compose_config(env)
    runtime = cfg.storage.runtime
    assert runtime.type == "redis"
    assert runtime.url is not None and runtime.url.reveal().startswith("redis://redis:")
    assert {p.base_url.split("/")[2].split(":")[0] for p in cfg.providers} == {"mock"}
    assert "mock" in services and "redis" in services
    # SIGKILL only after the gateway's own drain deadline
    grace = gateways[0]["stop_grace_period"]
    assert int(grace.rstrip("s")) > cfg.server.drain_delay + cfg.server.shutdown_timeout
    port = parse_listen(cfg.server.listen)[1]
    prometheus = yaml.safe_load((DEPLOY / "compose/prometheus.yml").read_text())
    job = prometheus["scrape_configs"][0]
    assert job["metrics_path"] == cfg.metrics.path
    assert job["static_configs"][0]["targets"] == [f"gateway-1:{port}", f"gateway-2:{port}"]
    caddy = (DEPLOY / "compose/Caddyfile").read_text()
    assert f"reverse_proxy gateway-1:{port} gateway-2:{port}" in caddy
    assert "health_uri /readyz" in caddy
    provisioned = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/truckllm.yaml").read_text()
    )
    grafana_mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert provisioned["providers"][0]["options"]["path"] in grafana_mounts


@pytest.fixture
def compose_gateways(
    redis_server: RedisServer,  # noqa: F811
    upstream: MockUpstream,
) -> Iterator[list[Gateway]]:
    """The two replicas of deploy/compose.yaml: its gateway configuration as shipped, the mock's
    address and Redis's swapped for the test's own."""
    env = dict(COMPOSE["services"]["gateway-1"]["environment"], REDIS_URL=redis_server.url)
    text = (DEPLOY / "compose/truckllm.yaml").read_text()
    assert "http://mock:9000/v1" in text
    text = text.replace("http://mock:9000/v1", upstream.url)
    running = []
    for _ in range(2):
        cfg = parse_config(text, "compose/truckllm.yaml", env, provider_registry().names())
        running.append(ServerThread(App(cfg)).start())
    yield [Gateway(s.app, s) for s in running]
    for server in running:
        server.stop()


def test_the_dashboard_queries_only_metrics_the_compose_gateways_expose(
    compose_gateways: list[Gateway],
) -> None:
    client = COMPOSE["services"]["gateway-1"]["environment"]["TRUCKLLM_CLIENT_KEY"]
    auth = {"Authorization": f"Bearer {client}"}
    families: dict[str, str] = {}
    for gw in compose_gateways:
        ready = gw.request("GET", "/readyz").json()
        assert ready["status"] == "ready", ready  # Redis reached
        for stream in (False, True):
            body = {
                "model": "fast",
                "stream": stream,
                "messages": [{"role": "user", "content": "hi"}],
            }
            assert gw.post("/v1/chat/completions", body, headers=auth).status == 200
        page = gw.request("GET", "/metrics").body.decode()
        assert list(text_string_to_metric_families(page))  # the page parses
        # the families as declared (the client's parser drops a counter's _total)
        families |= dict(re.findall(r"^# TYPE (\S+) (\S+)$", page, re.M))
    used = {name for expr in dashboard_queries() for name in METRIC.findall(expr)}
    assert len(used) >= 20, used
    for name in used:
        base = name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in families:
                base = name.removesuffix(suffix)
                assert families[base] == "histogram", name
        assert base in families, f"the dashboard queries {name}, which /metrics does not have"


def test_the_dashboard_covers_what_operators_watch() -> None:
    titles = " ".join(p["title"].lower() for p in DASHBOARD["panels"])
    for topic in (
        "requests",
        "error",
        "duration",
        "first token",
        "tokens",
        "spend",
        "key status",
        "cooldown",
        "overhead",
    ):
        assert topic in titles, topic
    used = {name for expr in dashboard_queries() for name in METRIC.findall(expr)}
    assert {
        "truckllm_key_status",
        "truckllm_key_cooldown_until_timestamp_seconds",
        "truckllm_cost_usd_total",
        "truckllm_gateway_overhead_seconds_bucket",
        "truckllm_time_to_first_token_seconds_bucket",
    } <= used


def rendered_variants() -> dict[str, list[dict[str, Any]]]:
    variants: dict[str, list[dict[str, Any]]] = {}
    name = ""
    for chunk in RENDERED.read_text().split("\n---\n"):
        m = re.search(r"^# variant: (\w+)$", chunk, re.M)
        if m:
            name = m.group(1)
        doc = yaml.safe_load(chunk)
        if doc:
            variants.setdefault(name, []).append(doc)
    return variants


def test_the_rendered_chart_is_the_current_chart() -> None:
    chart = DEPLOY / "helm/truckllm"
    digest = hashlib.sha256()
    for f in sorted(p for p in chart.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(chart)).encode() + b"\0" + f.read_bytes() + b"\0")
    assert f"# chart sha256: {digest.hexdigest()}\n" in RENDERED.read_text(), (
        "deploy/helm/truckllm changed: run deploy/helm/validate.sh to re-render and re-check it"
    )


@pytest.mark.parametrize("variant", ["default", "operator"])
def test_the_chart_deploys_the_configuration_it_carries(variant: str) -> None:
    docs = rendered_variants()[variant]
    by_kind = {d["kind"]: d for d in docs}
    default_secret = next(d for d in rendered_variants()["default"] if d["kind"] == "Secret")
    env = {k: v or "set-at-install" for k, v in default_secret["stringData"].items()}
    cfg = parse_config(
        by_kind["ConfigMap"]["data"]["config.yaml"], "configmap", env, provider_registry().names()
    )
    assert cfg.storage.runtime.type == "redis"
    deployment = by_kind["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["truckllm", "-config", "/etc/truckllm/config.yaml"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == "/etc/truckllm" and "subPath" not in mount  # hot reload works
    assert container["ports"][0]["containerPort"] == parse_listen(cfg.server.listen)[1]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    server = cfg.server
    assert server.drain_delay > 0  # /readyz 503 while the endpoints controller catches up
    assert pod["terminationGracePeriodSeconds"] > server.drain_delay + server.shutdown_timeout
    secret_name = container["envFrom"][0]["secretRef"]["name"]
    if variant == "default":
        assert secret_name == by_kind["Secret"]["metadata"]["name"]
        assert (
            by_kind["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"]
            == deployment["metadata"]["name"]
        )
        assert "ServiceMonitor" not in by_kind
    else:
        assert "Secret" not in by_kind and secret_name == "truckllm-secrets"
        monitor = by_kind["ServiceMonitor"]["spec"]
        assert monitor["endpoints"][0]["path"] == cfg.metrics.path
        assert monitor["endpoints"][0]["port"] in {
            p["name"] for p in by_kind["Service"]["spec"]["ports"]
        }
        assert monitor["selector"]["matchLabels"] == by_kind["Service"]["spec"]["selector"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert (
        by_kind["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    )
    assert by_kind["Service"]["spec"]["selector"].items() <= labels.items()
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_image_runs_its_default_configuration_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd and json.loads(cmd.group(1)) == ["truckllm", "-config", "/etc/truckllm/config.yaml"]
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)
    assert re.search(r"^ARG BASE_IMAGE=", dockerfile, re.M)
    assert "--require-hashes -r requirements.lock" in dockerfile
    assert "TRUCKLLM_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz" in dockerfile
    cfg = load_config(
        str(DEPLOY / "config.yaml"),
        {"OPENAI_API_KEY": "sk-x", "TRUCKLLM_CLIENT_KEY": "sk-client"},
        provider_registry().names(),
    )
    assert parse_listen(cfg.server.listen) == ("0.0.0.0", 8080)
    assert cfg.server.api_keys, "the image must not serve without client keys by default"


def test_the_lock_check_names_a_dependency_missing_from_the_locks(tmp_path: Path) -> None:
    for name in (
        "pyproject.toml",
        "requirements.lock",
        "requirements-test.lock",
        "requirements-build.lock",
    ):
        shutil.copy(ROOT / name, tmp_path / name)
    check = [sys.executable, str(DEPLOY / "check_lock.py"), str(tmp_path)]
    assert subprocess.run(check, capture_output=True).returncode == 0
    pyproject = (tmp_path / "pyproject.toml").read_text()
    drifted = pyproject.replace("test = [\n", 'test = [\n    "left-pad-nonexistent>=1",\n', 1)
    drifted = drifted.replace('"orjson>=3.9"', '"orjson>=99"', 1)
    assert drifted.count("left-pad-nonexistent") == 1 and '"orjson>=99"' in drifted
    (tmp_path / "pyproject.toml").write_text(drifted)
    out = subprocess.run(check, capture_output=True, text=True)
    assert out.returncode == 1
    assert (
        "requirements-test.lock: 'left-pad-nonexistent>=1' (the 'test' extra) is not pinned"
        in out.stderr
    )
    assert (
        "requirements.lock: 'orjson>=99' ([project] dependencies) but the lock pins" in out.stderr
    )
    assert "deploy/lock.sh" in out.stderr

"""The chart's operations features: model pulls as init containers, alerts, `helm test` hooks, runtime and
priority classes, and an Ingress that keeps /metrics and the probes inside the cluster."""

from __future__ import annotations

import re
from typing import Any

import helm_python
import kubernetes_validate
import promql_parser
import pytest
import yaml
from helm_python import Chart

from tests.deploy import test_helm_chart as chart_tests
from tests.deploy.test_helm_chart import (
    ALL_OPTIONAL_BUNDLED,
    ALL_OPTIONAL_EXTERNAL,
    GPU_WORKERS,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    RenderFn,
    by_kind,
    container,
    named,
    pod_spec,
)

# The chart fixtures (the real Helm SDK's render), shared with the chart's structural tests.
chart, render_raw, render = chart_tests.chart, chart_tests.render_raw, chart_tests.render

PULLS = ALL_OPTIONAL_EXTERNAL["models"]["pull"]


def init_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_spec(workload).get("initContainers", [])


# --- models ---------------------------------------------------------------------------------------------


def test_default_install_serves_the_demo_model_baked_into_the_worker_image(render: RenderFn) -> None:
    docs = render({})
    assert named(docs, "ConfigMap", "-config")["data"]["FAE_MODELS"] == "fae-demo=/opt/fae/models/fae-demo"
    for name in GPU_WORKERS:
        assert init_containers(named(docs, "Deployment", f"-worker-{name}")) == []  # nothing to fetch first


def test_a_model_source_renders_an_init_container_that_pulls_and_verifies(render: RenderFn) -> None:
    docs = render(ALL_OPTIONAL_EXTERNAL)
    for name in GPU_WORKERS:
        worker = named(docs, "Deployment", f"-worker-{name}")
        inits = init_containers(worker)
        assert [c["name"] for c in inits] == ["pull-model-0", "pull-model-1"]  # encoder weights first
        main_image = container(worker)["image"]
        for init, pull in zip(inits, PULLS, strict=True):
            # `fae models pull` checks every file's SHA-256 against the manifest before the rename into
            # place; an existing copy is re-verified (--verify-existing).
            assert init["command"][:5] == ["fae", "models", "pull", "--into", f"/models/{pull['into']}"]
            assert "--verify-existing" in init["command"]
            env = {e["name"]: e for e in init["env"]}
            assert env["FAE_MODEL_SOURCE"]["value"] == pull["source"]
            assert env["FAE_S3_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "ops-fae-s3"
            assert init["envFrom"] == container(worker)["envFrom"]  # the S3 endpoint from the ConfigMap
            assert init["image"] == main_image
            mounts = {m["name"]: m for m in init["volumeMounts"]}
            assert mounts["models"] == {"name": "models", "mountPath": "/models"}  # writable here only
        assert inits[1]["command"][-2:] == ["--expect-fingerprint", "d1512529"]
        main_mounts = {m["name"]: m for m in container(worker)["volumeMounts"]}
        assert main_mounts["models"]["readOnly"] is True
    assert init_containers(named(docs, "Deployment", "-worker-webhooks")) == []  # it loads no model
    config = named(docs, "ConfigMap", "-config")["data"]
    assert config["FAE_MODELS"] == "fae@2=/models/fae-2,fae@1=/models/fae-1"


def test_extra_init_containers_run_after_the_model_pulls(render: RenderFn) -> None:
    extra = {"name": "warm-cache", "image": "busybox:1.36", "command": ["true"]}
    values = {**ALL_OPTIONAL_EXTERNAL, "worker": {"extraInitContainers": [extra]}}
    inits = init_containers(named(render(values), "Deployment", "-worker-generate"))
    assert [c["name"] for c in inits] == ["pull-model-0", "pull-model-1", "warm-cache"]


@pytest.mark.parametrize(
    ("pull", "complaint"),
    [
        ({"source": "ftp://x/y", "into": "m"}, "/models/pull/0/source"),
        ({"source": "s3://b/p", "into": "../etc"}, "/models/pull/0/into"),
        ({"source": "s3://b/p"}, "into"),
    ],
)
def test_a_bad_model_pull_is_refused_at_install(chart: Chart, pull: dict[str, str], complaint: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as excinfo:
        chart.render({"models": {"pull": [pull]}}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    assert complaint in str(excinfo.value)


# --- scheduling knobs -----------------------------------------------------------------------------------


def test_runtime_and_priority_classes(render: RenderFn) -> None:
    assert "runtimeClassName" not in pod_spec(named(render({}), "Deployment", "-worker-generate"))
    docs = render(
        {
            "worker": {"gpuRuntimeClassName": "nvidia", "priorityClassName": "gpu-batch"},
            "workers": {"finetune": {"priorityClassName": "low", "runtimeClassName": "nvidia-cdi"}},
            "gateway": {"priorityClassName": "api-critical"},
        }
    )
    generate = pod_spec(named(docs, "Deployment", "-worker-generate"))
    finetune = pod_spec(named(docs, "Deployment", "-worker-finetune"))
    webhooks = pod_spec(named(docs, "Deployment", "-worker-webhooks"))
    assert (generate["runtimeClassName"], generate["priorityClassName"]) == ("nvidia", "gpu-batch")
    assert (finetune["runtimeClassName"], finetune["priorityClassName"]) == ("nvidia-cdi", "low")
    assert "runtimeClassName" not in webhooks and webhooks["priorityClassName"] == "gpu-batch"  # no GPU
    assert pod_spec(named(docs, "Deployment", "-gateway"))["priorityClassName"] == "api-critical"
    for doc in by_kind(docs, "Deployment"):
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


# --- ingress --------------------------------------------------------------------------------------------


def _routes(path: str, rule: dict[str, Any]) -> bool:
    if rule["pathType"] == "Exact":
        return path == rule["path"]
    prefix = rule["path"].rstrip("/")
    return path == rule["path"] or path.startswith(prefix + "/")


def test_the_ingress_routes_the_api_but_not_metrics_or_probes(render: RenderFn) -> None:
    ingress = named(render({"gateway": {"ingress": {"enabled": True}}}), "Ingress", "-gateway")
    rules = [p for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    for public in ("/v1/generate", "/v1/jobs/abc", "/v1/files/tenants/a/0.png", "/openapi.json", "/docs"):
        assert any(_routes(public, r) for r in rules), public
    for internal in ("/metrics", "/healthz", "/readyz"):
        assert not any(_routes(internal, r) for r in rules), internal


def test_a_catch_all_ingress_path_needs_an_explicit_opt_in(chart: Chart) -> None:
    root = {
        "enabled": True,
        "hosts": [{"host": "a.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
    }
    with pytest.raises(helm_python.HelmError, match=r"would publish /metrics, /healthz and /readyz"):
        chart.render({"gateway": {"ingress": root}}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    opted_in = {"gateway": {"ingress": {**root, "exposeOperationalPaths": True}}}
    assert chart.render(opted_in, name=RELEASE, namespace=NAMESPACE, is_install=True)


# --- alerts ---------------------------------------------------------------------------------------------

ALERTS = {
    "FaeQueueBacklogGrowing",
    "FaeNoReadyWorker",
    "FaeJobFailureRatioHigh",
    "FaeDeadLetters",
    "FaeWebhookFailures",
    "FaeGpuMemoryNearLimit",
    "FaePinnedModelVersionMissing",
}


def exported_metric_names() -> set[str]:
    """Every series name the service exports: core.metrics' families with their sample suffixes."""
    from prometheus_client import REGISTRY

    from core import metrics  # noqa: F401  (registers every family)

    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("fae_"):
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(
                family.type, [""]
            )
            names |= {family.name + suffix for suffix in suffixes}
    return names


def test_prometheus_rule_is_on_with_the_service_monitor_and_can_be_turned_off(render: RenderFn) -> None:
    assert by_kind(render({}), "PrometheusRule") == []
    assert len(by_kind(render(ALL_OPTIONAL_BUNDLED), "PrometheusRule")) == 1
    off = {
        **ALL_OPTIONAL_BUNDLED,
        "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": False}},
    }
    assert by_kind(render(off), "PrometheusRule") == []
    assert len(by_kind(render({"metrics": {"prometheusRule": {"enabled": True}}}), "PrometheusRule")) == 1


@pytest.mark.parametrize("scenario", [ALL_OPTIONAL_BUNDLED, ALL_OPTIONAL_EXTERNAL])
def test_every_alert_parses_as_promql_and_names_only_exported_metrics(
    render: RenderFn, scenario: dict[str, Any], repo_root
) -> None:
    (rule,) = by_kind(render(scenario), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    exported = exported_metric_names()
    runbooks = (repo_root / "deploy" / "README.md").read_text().lower()
    seen = set()
    for group in rule["spec"]["groups"]:
        assert set(group) == {"name", "rules"}
        for alert in group["rules"]:
            assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"}
            assert re.fullmatch(r"\d+[smh]", alert["for"])
            assert alert["labels"]["severity"] in {"warning", "critical"}
            promql_parser.parse(alert["expr"])  # Prometheus' grammar: a syntax error raises
            used = set(re.findall(r"\bfae_[a-z_]+\b", alert["expr"]))
            assert used and used <= exported, (alert["alert"], used - exported)
            assert f'namespace="{NAMESPACE}"' in alert["expr"]  # never another release's series
            anchor = alert["annotations"]["runbook_url"].rsplit("#", 1)[1]
            assert anchor == alert["alert"].lower() and f"### {anchor}" in runbooks, anchor
            assert alert["annotations"]["summary"] and alert["annotations"]["description"]
            seen.add(alert["alert"])
    assert seen == ALERTS


def test_alert_thresholds_come_from_values(render: RenderFn) -> None:
    values = {
        "metrics": {
            "serviceMonitor": {"enabled": True},
            "prometheusRule": {"queueBacklogJobs": 7, "failureRatio": 0.5, "gpuMemoryRatio": 0.8},
        }
    }
    (rule,) = by_kind(render(values), "PrometheusRule")
    exprs = {r["alert"]: r["expr"] for r in rule["spec"]["groups"][0]["rules"]}
    assert ") > 7 and max by (queue)" in exprs["FaeQueueBacklogGrowing"]
    assert exprs["FaeJobFailureRatioHigh"].endswith("> 0.5")
    assert exprs["FaeGpuMemoryNearLimit"].endswith("> 0.8")


# --- helm test ------------------------------------------------------------------------------------------


def test_helm_test_hooks_check_readiness_and_a_generate_round_trip(render_raw, repo_root) -> None:
    raw = render_raw(ALL_OPTIONAL_BUNDLED)["fae-serve/templates/tests/release-checks.yaml"]
    docs = [d for d in yaml.safe_load_all(raw) if d]
    script = by_kind(docs, "ConfigMap")[0]
    assert script["metadata"]["annotations"]["helm.sh/hook"] == "test"
    shipped = (repo_root / "helm" / "files" / "tests" / "check_release.py").read_text()
    assert script["data"]["check_release.py"].strip() == shipped.strip()
    pods = {p["metadata"]["name"].rsplit("-", 1)[1]: p for p in by_kind(docs, "Pod")}
    assert set(pods) == {"ready", "generate"}
    for check, pod in pods.items():
        kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)
        annotations = pod["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "test"
        assert pod["spec"]["restartPolicy"] == "Never"
        (c,) = pod["spec"]["containers"]
        assert c["command"] == ["python", "/etc/fae/tests/check_release.py", check]
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["FAE_TEST_GATEWAY_URL"] == f"http://{RELEASE}-fae-serve-gateway:80"
        assert env["FAE_API_KEYS_FILE"].startswith("/etc/fae/api-keys/")  # a key with the generate scope
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert int(pods["ready"]["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        pods["generate"]["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    disabled = render_raw({"tests": {"enabled": False}})
    assert disabled.get("fae-serve/templates/tests/release-checks.yaml", "").strip() == ""

"""The Helm chart: rendered and linted by the real Helm v4 SDK, checked against Kubernetes 1.30 schemas."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml
from helm_python import Chart

CHART_DIR = Path(__file__).resolve().parents[2] / "helm"
RELEASE = "fae"
NAMESPACE = "fae-test"
Manifest = dict[str, Any]
RenderFn = Callable[[dict[str, Any]], list[Manifest]]
RawRenderFn = Callable[[dict[str, Any]], dict[str, str]]

KUBE_VERSION = "1.30.0"
# Custom resources: not in the Kubernetes schemas, checked structurally below instead.
CRD_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
GPU_WORKERS = ("generate", "finetune")
ALL_WORKERS = (*GPU_WORKERS, "webhooks")
PROMETHEUS = "http://prometheus-operated.monitoring.svc:9090"

# Every optional part of the chart switched on, with the bundled Redis (password-protected).
ALL_OPTIONAL_BUNDLED: dict[str, Any] = {
    "apiKeys": {"keys": "acme:k-123:generate+finetune,ops:k-456:admin"},
    "provenance": {"existingSecret": "fae-c2pa-signer", "watermarkOptOutTenants": "acme"},
    "s3": {
        "endpointUrl": "https://s3.example.com",
        "accessKeyId": "AKIAEXAMPLE",
        "secretAccessKey": "example-secret",
    },
    "webhooks": {"signingKey": "whsec-example"},
    "config": {"publicUrl": "https://fae.example.com", "extraEnv": {"FAE_LEASE_S": "90"}},
    "redis": {"auth": {"enabled": True, "password": "redis-example"}},
    "gateway": {
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "annotations": {"nginx.ingress.kubernetes.io/proxy-buffering": "off"},
            "hosts": [{"host": "fae.example.com", "paths": [{"path": "/v1", "pathType": "Prefix"}]}],
            "tls": [{"hosts": ["fae.example.com"], "secretName": "fae-tls"}],
        },
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6},
    },
    "workers": {
        "generate": {"keda": {"enabled": True}},
        "finetune": {"keda": {"enabled": True}},
        "webhooks": {"keda": {"enabled": True}},
    },
    "keda": {"prometheus": {"serverAddress": PROMETHEUS}},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
    "worker": {"gpuRuntimeClassName": "nvidia", "priorityClassName": "gpu-batch"},
}

# External Redis and every credential from Secrets the operator created beforehand.
ALL_OPTIONAL_EXTERNAL: dict[str, Any] = {
    "apiKeys": {"existingSecret": "ops-fae-api-keys"},
    "s3": {"existingSecret": "ops-fae-s3", "endpointUrl": "https://minio.storage.svc:9000"},
    "webhooks": {"existingSecret": "ops-fae-webhooks"},
    "provenance": {"existingSecret": "ops-fae-c2pa", "tsaUrl": "http://timestamp.example.com"},
    "redis": {"enabled": False, "existingSecret": "ops-fae-redis", "existingSecretKey": "url"},
    "gateway": {
        "ingress": {
            "enabled": True,
            "hosts": [{"host": "api.example.com", "paths": [{"path": "/v1", "pathType": "Prefix"}]}],
        },
        "autoscaling": {"enabled": True},
    },
    "workers": {"generate": {"keda": {"enabled": True}}},
    "keda": {
        "redis": {
            "address": "redis.data.svc:6379",
            "databaseIndex": 2,
            "enableTLS": True,
            "passwordSecret": {"name": "ops-fae-redis", "key": "password"},
        },
        "prometheus": {"serverAddress": PROMETHEUS},
    },
    "models": {
        "existingClaim": "fae-weights",
        "pull": [
            {"source": "s3://fae-models/encoders/dinov2-small", "into": "dinov2-small"},
            {"source": "s3://fae-models/fae/2", "into": "fae-2", "expectFingerprint": "d1512529"},
        ],
    },
    "config": {"models": "fae@2=/models/fae-2,fae@1=/models/fae-1"},
    "compileCache": {"volume": {"hostPath": {"path": "/var/cache/fae-compile", "type": "DirectoryOrCreate"}}},
    "metrics": {"serviceMonitor": {"enabled": True}},
}

SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "all-optional-bundled-redis": ALL_OPTIONAL_BUNDLED,
    "all-optional-external-redis": ALL_OPTIONAL_EXTERNAL,
}


def by_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[Manifest], kind: str, suffix: str) -> Manifest:
    """The one manifest of `kind` whose name ends with `suffix`."""
    matches = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(suffix)]
    assert len(matches) == 1, (
        f"expected one {kind} named *{suffix}, got {[m['metadata']['name'] for m in matches]}"
    )
    return matches[0]


@pytest.fixture(scope="session")
def chart() -> Iterator[Chart]:
    with Chart.load(str(CHART_DIR)) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render_raw(chart: Chart) -> RawRenderFn:
    """Render the chart offline as `helm install` would: template path -> rendered text."""

    def _render_raw(values: dict[str, Any]) -> dict[str, str]:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)

    return _render_raw


@pytest.fixture(scope="session")
def render(render_raw: RawRenderFn) -> RenderFn:
    """Render the chart and parse every manifest (NOTES.txt left out)."""

    def _render(values: dict[str, Any]) -> list[Manifest]:
        docs: list[Manifest] = []
        for path, text in render_raw(values).items():
            if not path.endswith("NOTES.txt"):
                docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
        return docs

    return _render


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1
    return containers[0]


def env_names(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(workload).get("env", [])}


# --- rendering, lint and schema -------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_rendered_manifest_is_valid_kubernetes(render: RenderFn, scenario: str) -> None:
    docs = render(SCENARIOS[scenario])
    assert docs
    checked = 0
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']} is invalid: {exc.message} at {list(exc.path)}"
            )
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_chart_lints_strictly(scenario: str) -> None:
    report = helm_python.lint(str(CHART_DIR), SCENARIOS[scenario], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], json.dumps(report, indent=2)


def test_defaults_satisfy_the_schema(chart: Chart) -> None:
    assert chart.schema is not None
    chart.validate_schema(chart.values)


@pytest.mark.parametrize(
    ("values_yaml", "complaint"),
    [
        ("gateway:\n  replicaCount: two\n", "/gateway/replicaCount"),
        ('workers:\n  generate:\n    gpus: "1"\n', "/workers/generate/gpus"),
        ('redis:\n  enabled: "yes"\n', "/redis/enabled"),
        ("config:\n  dtype: fp8\n", "/config/dtype"),
        ("config:\n  models: just-a-path\n", "/config/models"),
        ("models:\n  persistence:\n    size: lots\n", "/models/persistence/size"),
        ("gatway:\n  replicaCount: 2\n", "gatway"),
        ("securityContext:\n  allowPrivilegeEscalation: true\n", "/securityContext/allowPrivilegeEscalation"),
        ("podSecurityContext:\n  runAsNonRoot: false\n", "/podSecurityContext/runAsNonRoot"),
    ],
)
def test_values_file_with_a_wrong_value_is_rejected_at_install(
    chart: Chart, values_yaml: str, complaint: str
) -> None:
    values = helm_python.values_from_yaml(values_yaml)  # parsed as `helm install -f` parses a file
    with pytest.raises(helm_python.HelmValuesError) as excinfo:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    assert complaint in str(excinfo.value)


def test_external_redis_without_an_address_fails_with_a_clear_message(chart: Chart) -> None:
    with pytest.raises(helm_python.HelmError, match=r"redis.url or redis.existingSecret"):
        chart.render({"redis": {"enabled": False}}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def test_redis_auth_without_a_password_fails_with_a_clear_message(chart: Chart) -> None:
    with pytest.raises(helm_python.HelmError, match=r"redis.auth.password or redis.auth.existingSecret"):
        chart.render(
            {"redis": {"auth": {"enabled": True}}}, name=RELEASE, namespace=NAMESPACE, is_install=True
        )


# --- workers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_gpu_workers_request_a_gpu_and_land_on_gpu_nodes(render: RenderFn, scenario: str) -> None:
    docs = render(SCENARIOS[scenario])
    for name in GPU_WORKERS:
        worker = named(docs, "Deployment", f"-worker-{name}")
        resources = container(worker)["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == 1
        assert resources["requests"]["nvidia.com/gpu"] == 1
        spec = pod_spec(worker)
        assert spec["nodeSelector"]["nvidia.com/gpu.present"] == "true"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert container(worker)["command"] == ["fae", "worker", "--queues", name]
    webhooks = named(docs, "Deployment", "-worker-webhooks")
    assert "nvidia.com/gpu" not in json.dumps(container(webhooks)["resources"])
    assert "nodeSelector" not in pod_spec(webhooks) and "tolerations" not in pod_spec(webhooks)
    assert env_names(webhooks)["FAE_DEVICE"]["value"] == "cpu"


def test_gpu_worker_probes_wait_for_model_load_and_warm_up(render: RenderFn) -> None:
    docs = render({})
    for name in GPU_WORKERS:
        worker = container(named(docs, "Deployment", f"-worker-{name}"))
        startup, readiness, liveness = (
            worker["startupProbe"],
            worker["readinessProbe"],
            worker["livenessProbe"],
        )
        assert startup["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert readiness["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert liveness["httpGet"] == {"path": "/healthz", "port": "metrics"}
        # Loading the weights plus torch.compile warm-up must fit before the kubelet gives up.
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
        assert worker["ports"] == [{"name": "metrics", "containerPort": 9101, "protocol": "TCP"}]


def test_gpu_workers_mount_models_read_only_and_a_persistent_compile_cache(render: RenderFn) -> None:
    docs = render({})
    claims = {c["metadata"]["name"]: c for c in by_kind(docs, "PersistentVolumeClaim")}
    for name in GPU_WORKERS:
        worker = named(docs, "Deployment", f"-worker-{name}")
        mounts = {m["name"]: m for m in container(worker)["volumeMounts"]}
        assert mounts["models"] == {"name": "models", "mountPath": "/models", "readOnly": True}
        assert mounts["compile-cache"]["mountPath"] == "/cache"
        volumes = {v["name"]: v for v in pod_spec(worker)["volumes"]}
        for volume in ("models", "compile-cache"):
            claim = volumes[volume]["persistentVolumeClaim"]["claimName"]
            assert claim in claims
            assert claims[claim]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert volumes["metrics"]["emptyDir"]["medium"] == "Memory"
    config = named(docs, "ConfigMap", "-config")["data"]
    assert config["FAE_COMPILE_CACHE_DIR"] == "/cache/compile"
    assert config["TORCHINDUCTOR_CACHE_DIR"].startswith("/cache/compile/")
    assert config["TRITON_CACHE_DIR"].startswith("/cache/compile/")
    assert config["FAE_METRICS_DIR"] == "/run/fae-metrics"


def test_existing_claims_and_raw_volumes_replace_the_chart_claims(render: RenderFn) -> None:
    docs = render(ALL_OPTIONAL_EXTERNAL)
    assert by_kind(docs, "PersistentVolumeClaim") == []
    volumes = {v["name"]: v for v in pod_spec(named(docs, "Deployment", "-worker-generate"))["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "fae-weights"
    assert volumes["compile-cache"]["hostPath"]["path"] == "/var/cache/fae-compile"


def test_keda_replaces_fixed_replicas_only_where_enabled(render: RenderFn) -> None:
    docs = render(
        {
            "workers": {"generate": {"keda": {"enabled": True}}},
            "keda": {"prometheus": {"serverAddress": PROMETHEUS}},
        }
    )
    assert "replicas" not in named(docs, "Deployment", "-worker-generate")["spec"]
    assert named(docs, "Deployment", "-worker-finetune")["spec"]["replicas"] == 1
    assert [s["metadata"]["name"] for s in by_kind(docs, "ScaledObject")] == [
        f"{RELEASE}-fae-serve-worker-generate"
    ]


# --- PDBs, security -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_deployment_has_a_pdb_selecting_its_pods(render: RenderFn, scenario: str) -> None:
    docs = render(SCENARIOS[scenario])
    pdbs = by_kind(docs, "PodDisruptionBudget")
    deployments = by_kind(docs, "Deployment")
    assert len(deployments) == 1 + len(ALL_WORKERS)
    for deployment in deployments:
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        matching = [p for p in pdbs if p["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()]
        assert len(matching) == 1, deployment["metadata"]["name"]
        # maxUnavailable (not minAvailable) so a single-replica Deployment never blocks a node drain.
        assert matching[0]["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_all_pods_run_as_non_root_with_no_capabilities(render: RenderFn, scenario: str) -> None:
    docs = render(SCENARIOS[scenario])
    workloads = by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet")
    assert workloads
    for workload in workloads:
        spec = pod_spec(workload)
        pod_ctx = spec["securityContext"]
        assert pod_ctx["runAsNonRoot"] is True and pod_ctx["runAsUser"] > 0
        assert pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for c in spec["containers"] + spec.get("initContainers", []):
            ctx = c["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"]["drop"] == ["ALL"]
            assert "add" not in ctx["capabilities"]
            assert ctx["readOnlyRootFilesystem"] is True
            assert not ctx.get("privileged", False)


# --- secrets, Redis -------------------------------------------------------------------------------------


def test_inline_credentials_become_secrets_and_never_plain_env(render: RenderFn) -> None:
    docs = render(ALL_OPTIONAL_BUNDLED)
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    assert set(secrets) == {f"{RELEASE}-fae-serve-{n}" for n in ("api-keys", "s3", "webhooks", "redis")}
    plain_text = json.dumps([d for d in docs if d["kind"] != "Secret"])
    for secret_value in ("k-123", "example-secret", "whsec-example", "redis-example"):
        assert secret_value not in plain_text
    gateway = named(docs, "Deployment", "-gateway")
    env = env_names(gateway)
    assert env["FAE_S3_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == f"{RELEASE}-fae-serve-s3"
    # Redis password from the Secret, spliced into the URL by the kubelet.
    assert env["FAE_REDIS_URL"]["value"].startswith("redis://:$(REDIS_PASSWORD)@")
    assert list(env).index("REDIS_PASSWORD") < list(env).index("FAE_REDIS_URL")


def test_existing_secrets_are_referenced_and_not_created(render: RenderFn) -> None:
    docs = render(ALL_OPTIONAL_EXTERNAL)
    assert by_kind(docs, "Secret") == []
    assert by_kind(docs, "StatefulSet") == []  # no bundled Redis
    gateway = named(docs, "Deployment", "-gateway")
    env = env_names(gateway)
    assert env["FAE_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "ops-fae-redis", "key": "url"}
    assert env["FAE_S3_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "ops-fae-s3"
    assert env["FAE_WEBHOOK_SIGNING_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "ops-fae-webhooks"
    volumes = {v["name"]: v for v in pod_spec(gateway)["volumes"]}
    assert volumes["api-keys"]["secret"]["secretName"] == "ops-fae-api-keys"
    mounts = {m["name"]: m for m in container(gateway)["volumeMounts"]}
    config = named(docs, "ConfigMap", "-config")["data"]
    assert config["FAE_API_KEYS_FILE"].startswith(mounts["api-keys"]["mountPath"] + "/")
    assert mounts["api-keys"]["readOnly"] is True


def test_c2pa_signer_secret_gives_workers_chain_and_key_and_the_gateway_the_chain_only(
    render: RenderFn, render_raw: RawRenderFn
) -> None:
    docs = render(ALL_OPTIONAL_EXTERNAL)
    config = named(docs, "ConfigMap", "-config")["data"]
    assert config["FAE_C2PA_SIGN_CERT"] == "/etc/fae/c2pa/chain.pem"
    assert config["FAE_C2PA_WITHOUT_SIGNER"] == "refuse"
    assert config["FAE_C2PA_TSA_URL"] == "http://timestamp.example.com"
    gateway = named(docs, "Deployment", "-gateway")
    signer = {v["name"]: v for v in pod_spec(gateway)["volumes"]}["c2pa-signer"]["secret"]
    assert signer["secretName"] == "ops-fae-c2pa"
    assert signer["items"] == [{"key": "chain.pem", "path": "chain.pem"}]
    assert "FAE_C2PA_PRIVATE_KEY" not in env_names(gateway)
    worker = named(docs, "Deployment", "-worker-generate")
    assert env_names(worker)["FAE_C2PA_PRIVATE_KEY"]["value"] == "/etc/fae/c2pa/key.pem"
    mounts = {m["name"]: m for m in container(worker)["volumeMounts"]}
    assert mounts["c2pa-signer"] == {"name": "c2pa-signer", "mountPath": "/etc/fae/c2pa", "readOnly": True}
    # Without a signer the workers refuse to start, and the install notes say how to add one.
    notes = next(text for path, text in render_raw({}).items() if path.endswith("NOTES.txt"))
    assert "no C2PA signer is configured" in notes and "provenance.existingSecret" in notes


def test_without_s3_credentials_the_default_aws_chain_is_left_alone(render: RenderFn) -> None:
    env = env_names(named(render({}), "Deployment", "-gateway"))
    assert "FAE_S3_ACCESS_KEY_ID" not in env and "FAE_S3_SECRET_ACCESS_KEY" not in env


def test_bundled_redis_persists_with_aof_and_never_evicts(render: RenderFn) -> None:
    docs = render({})
    redis = named(docs, "StatefulSet", "-redis")
    args = container(redis)["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "8Gi"
    service = named(docs, "Service", "-redis")
    url = env_names(named(docs, "Deployment", "-gateway"))["FAE_REDIS_URL"]["value"]
    assert url == f"redis://{service['metadata']['name']}:6379/0"
    policy = named(docs, "NetworkPolicy", "-redis")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"


# --- gateway extras -------------------------------------------------------------------------------------


def test_gateway_probes_ingress_and_hpa(render: RenderFn) -> None:
    docs = render(ALL_OPTIONAL_BUNDLED)
    gateway = named(docs, "Deployment", "-gateway")
    c = container(gateway)
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["command"] == ["fae", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert "replicas" not in gateway["spec"]  # the HPA owns it
    hpa = named(docs, "HorizontalPodAutoscaler", "-gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == gateway["metadata"]["name"]
    ingress = named(docs, "Ingress", "-gateway")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {
        "name": named(docs, "Service", "-gateway")["metadata"]["name"],
        "port": {"name": "http"},
    }
    assert ingress["spec"]["tls"] == [{"hosts": ["fae.example.com"], "secretName": "fae-tls"}]


# --- custom resources (structural checks) ---------------------------------------------------------------


def _check_metadata(doc: dict[str, Any]) -> None:
    assert doc["metadata"]["name"]
    assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


@pytest.mark.parametrize("scenario", ["all-optional-bundled-redis", "all-optional-external-redis"])
def test_keda_scaled_objects_are_well_formed(render: RenderFn, scenario: str) -> None:
    docs = render(SCENARIOS[scenario])
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    auths = {a["metadata"]["name"]: a for a in by_kind(docs, "TriggerAuthentication")}
    scaled = by_kind(docs, "ScaledObject")
    assert scaled
    for obj in scaled:
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        _check_metadata(obj)
        spec = obj["spec"]
        assert set(spec) <= {
            "scaleTargetRef",
            "minReplicaCount",
            "maxReplicaCount",
            "pollingInterval",
            "cooldownPeriod",
            "triggers",
        }
        target = spec["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        assert isinstance(spec["minReplicaCount"], int) and spec["maxReplicaCount"] >= max(
            1, spec["minReplicaCount"]
        )
        queues = container(deployments[target["name"]])["command"][-1].split(",")
        lists = [t for t in spec["triggers"] if t["type"] == "redis"]
        running = [t for t in spec["triggers"] if t["type"] == "prometheus"]
        assert len(lists) + len(running) == len(spec["triggers"])
        assert [t["metadata"]["listName"] for t in lists] == queues
        for trigger in lists:
            meta = trigger["metadata"]
            # KEDA trigger metadata values are strings.
            assert all(isinstance(v, str) for v in meta.values())
            assert meta["address"].rsplit(":", 1)[1].isdigit()
            assert int(meta["listLength"]) >= 1
            assert trigger["authenticationRef"]["name"] in auths
        # Queued jobs are on the lists; running ones only in fae_jobs_running: both keep replicas up. Only this
        # Deployment's pods count (its namespace, its pod-name prefix), not another release's or worker's.
        pods = f"{target['name']}-.*"
        assert [t["metadata"]["query"] for t in running] == [
            f'sum(fae_jobs_running{{queue="{queue}",namespace="{NAMESPACE}",pod=~"{pods}"}}) or vector(0)'
            for queue in queues
        ]
        for trigger in running:
            assert all(isinstance(v, str) for v in trigger["metadata"].values())
            assert trigger["metadata"]["serverAddress"] == PROMETHEUS
            assert trigger["metadata"]["threshold"] == lists[0]["metadata"]["listLength"]
    for auth in auths.values():
        _check_metadata(auth)
        refs = auth["spec"]["secretTargetRef"]
        assert refs and all(set(r) == {"parameter", "name", "key"} for r in refs)
        assert refs[0]["parameter"] == "password"


@pytest.mark.parametrize("worker", GPU_WORKERS)
def test_keda_on_a_job_worker_without_prometheus_fails_with_a_clear_message(
    chart: Chart, worker: str
) -> None:
    """Scaling on list length alone would scale a pod away under the job it runs (a fine-tune dies with it)."""
    with pytest.raises(
        helm_python.HelmError, match=rf"workers.{worker}.keda needs keda.prometheus.serverAddress"
    ):
        chart.render(
            {"workers": {worker: {"keda": {"enabled": True}}}},
            name=RELEASE,
            namespace=NAMESPACE,
            is_install=True,
        )


def test_keda_against_external_redis_uses_the_configured_address(render: RenderFn) -> None:
    trigger = by_kind(render(ALL_OPTIONAL_EXTERNAL), "ScaledObject")[0]["spec"]["triggers"][0]["metadata"]
    assert trigger == {
        "address": "redis.data.svc:6379",
        "listName": "generate",
        "listLength": "8",
        "databaseIndex": "2",
        "enableTLS": "true",
    }


def test_bundled_redis_lets_the_keda_operator_in_when_keda_is_on(render: RenderFn) -> None:
    policy = named(render(ALL_OPTIONAL_BUNDLED), "NetworkPolicy", "-redis")
    sources = policy["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}} in sources


@pytest.mark.parametrize("scenario", ["all-optional-bundled-redis", "all-optional-external-redis"])
def test_service_monitor_scrapes_gateway_and_workers(render: RenderFn, scenario: str) -> None:
    docs = render(SCENARIOS[scenario])
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    _check_metadata(monitor)
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    selector = spec["selector"]["matchLabels"]
    endpoints = {e["port"]: e for e in spec["endpoints"]}
    assert all(e["path"] == "/metrics" and e["interval"] for e in endpoints.values())
    scraped = [
        s
        for s in by_kind(docs, "Service")
        if selector.items() <= s["metadata"]["labels"].items()
        and s["metadata"]["labels"]["app.kubernetes.io/component"] != "redis"
    ]
    assert len(scraped) == 1 + len(ALL_WORKERS)
    for service in scraped:
        assert any(p["name"] in endpoints for p in service["spec"]["ports"]), service["metadata"]["name"]


def test_dashboard_config_map_carries_the_shared_dashboard_file(render: RenderFn) -> None:
    dashboard = named(render({}), "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = (CHART_DIR / "files" / "dashboards" / "fae.json").read_text()
    assert json.loads(dashboard["data"]["fae.json"]) == json.loads(shipped)


def test_notes_tell_the_operator_how_to_call_the_api(render_raw: RawRenderFn) -> None:
    notes = render_raw({})["fae-serve/templates/NOTES.txt"]
    assert "port-forward svc/fae-fae-serve-gateway" in notes
    assert "/v1/generate" in notes and "Authorization: Bearer" in notes
    assert "WARNING: no API keys" in notes
    with_ingress = render_raw(ALL_OPTIONAL_BUNDLED)["fae-serve/templates/NOTES.txt"]
    assert "https://fae.example.com" in with_ingress and "WARNING" not in with_ingress


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_fae_variable_the_chart_sets_is_a_real_setting(render: RenderFn, scenario: str) -> None:
    from core import settings

    known = settings.env_names()
    docs = render(SCENARIOS[scenario])
    names = set(named(docs, "ConfigMap", "-config")["data"])
    for deployment in by_kind(docs, "Deployment"):
        names |= set(env_names(deployment))
    unknown = {n for n in names if n.startswith("FAE_")} - known
    assert not unknown, f"not settings in core.settings: {sorted(unknown)}"

"""Authentication on every route: 401 without a valid key, 403 without the scope, 404 for other tenants."""

from __future__ import annotations

import pytest

from core.contract import AdapterRecord, Job, JobKind, JobStatus, adapter_key
from core.jobstore.base import utcnow

JOB_ID = "0123456789abcdef0123456789abcdef"
# (method, path, scope the route needs or None for any valid key)
ROUTES = [
    ("POST", "/v1/generate", "generate"),
    ("GET", "/v1/jobs", None),
    ("GET", f"/v1/jobs/{JOB_ID}", None),
    ("POST", f"/v1/jobs/{JOB_ID}/cancel", None),
    ("GET", f"/v1/jobs/{JOB_ID}/events", None),
    ("POST", "/v1/finetunes", "finetune"),
    ("GET", "/v1/finetunes", "finetune"),
    ("GET", f"/v1/finetunes/{JOB_ID}", "finetune"),
    ("POST", f"/v1/finetunes/{JOB_ID}/cancel", "finetune"),
    ("GET", "/v1/models", None),
    ("GET", "/v1/adapters", None),
    ("DELETE", "/v1/adapters/a1", "finetune"),
    ("GET", "/v1/webhooks/secret", None),
    ("GET", "/v1/admin/dead-letters", "admin"),
    ("POST", f"/v1/admin/dead-letters/{JOB_ID}/replay", "admin"),
]
# A key of each test tenant lacking the scope.
WITHOUT = {"generate": "tuner", "finetune": "root", "admin": "acme"}


def call(client, method: str, path: str, headers: dict[str, str]):
    kwargs = {"json": {"class_label": 1}} if path == "/v1/generate" else {}
    return client.request(method, path, headers=headers, **kwargs)


@pytest.mark.parametrize(("method", "path", "scope"), ROUTES)
def test_missing_or_wrong_key_is_401(make_gateway, method, path, scope) -> None:
    gw = make_gateway()
    for headers in (
        {},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Basic YWxhZGRpbjpzZXNhbWU="},
    ):
        response = call(gw.client, method, path, headers)
        assert response.status_code == 401, (method, path, headers)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path", "scope"), [r for r in ROUTES if r[2]])
def test_missing_scope_is_403(make_gateway, headers, method, path, scope) -> None:
    gw = make_gateway()
    response = call(gw.client, method, path, headers(WITHOUT[scope]))
    assert response.status_code == 403
    assert response.json()["required_scope"] == scope


def test_other_tenants_resources_are_404_everywhere(make_gateway, headers, png) -> None:
    gw = make_gateway(complete=True)
    done = gw.client.post(
        "/v1/generate", json={"class_label": 1}, headers={**headers("acme"), "Prefer": "wait=10"}
    ).json()
    finetune = Job(
        id="f" * 32, kind=JobKind.finetune, status=JobStatus.queued, tenant="acme", created_at=utcnow()
    )
    gw.store.create(finetune)
    gw.store.put_adapter(
        AdapterRecord(
            id="acme-style",
            tenant="acme",
            model="cls",
            key=adapter_key("acme", "acme-style"),
            created_at=utcnow(),
        )
    )
    intruder = headers("globex")
    for method, path in [
        ("GET", f"/v1/jobs/{done['id']}"),
        ("POST", f"/v1/jobs/{done['id']}/cancel"),
        ("GET", f"/v1/jobs/{done['id']}/events"),
        ("GET", f"/v1/jobs/{finetune.id}"),
        ("GET", f"/v1/finetunes/{finetune.id}"),
        ("POST", f"/v1/finetunes/{finetune.id}/cancel"),
        ("DELETE", "/v1/adapters/acme-style"),
    ]:
        response = gw.client.request(method, path, headers=intruder)
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    assert gw.client.get("/v1/jobs", headers=intruder).json()["data"] == []
    assert gw.client.get("/v1/adapters", headers=intruder).json()["data"] == []
    assert gw.store.get(finetune.id).status is JobStatus.queued  # the intruder's cancel did nothing
    assert gw.store.get_adapter("acme", "acme-style") is not None
    # A generate job is not a fine-tune, even for its owner.
    assert gw.client.get(f"/v1/finetunes/{done['id']}", headers=headers("acme")).status_code == 404
    # Output URLs open only the object they were signed for.
    url = done["outputs"][0]["url"]
    assert gw.client.get(url).status_code == 200
    other_key = url.replace("tenants/acme/", "tenants/globex/")
    assert gw.client.get(other_key).status_code == 403


def test_public_probes_need_no_key(make_gateway) -> None:
    gw = make_gateway()
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert gw.client.get(path).status_code == 200, path


def test_shared_job_routes_are_scoped_by_the_jobs_kind(make_gateway) -> None:
    """One tenant, three keys: a generate-only key never sees a fine-tune, a fine-tune-only key never sees a
    generate job, on every route both kinds share (read, list, events, cancel)."""
    keys = (
        "acme:acme-key-0001,acme:acme-gen-0001:generate,acme:acme-ft-0001:finetune,acme:acme-adm-0001:admin"
    )
    gw = make_gateway(api_keys=keys)
    both, gen_only, ft_only, admin_only = (
        {"Authorization": f"Bearer acme-{name}-0001"} for name in ("key", "gen", "ft", "adm")
    )
    made = {
        kind: Job(
            id=kind.value[0] * 32, kind=kind, status=JobStatus.queued, tenant="acme", created_at=utcnow()
        )
        for kind in JobKind
    }
    for job in made.values():
        gw.store.create(job)
    generate_id, finetune_id = made[JobKind.generate].id, made[JobKind.finetune].id
    for key, foreign in ((gen_only, finetune_id), (ft_only, generate_id)):
        for method, path in [
            ("GET", f"/v1/jobs/{foreign}"),
            ("GET", f"/v1/jobs/{foreign}/events"),
            ("POST", f"/v1/jobs/{foreign}/cancel"),
        ]:
            response = gw.client.request(method, path, headers=key)
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["type"].endswith("missing-scope")
    assert gw.store.get(generate_id).status is gw.store.get(finetune_id).status is JobStatus.queued

    def ids(key: dict[str, str]) -> list[str]:
        return [job["id"] for job in gw.client.get("/v1/jobs", headers=key).json()["data"]]

    assert ids(gen_only) == [generate_id] and ids(ft_only) == [finetune_id]
    assert sorted(ids(both)) == sorted(job.id for job in made.values())  # embeddings too: made with generate
    assert gw.client.get("/v1/jobs?kind=finetune", headers=gen_only).status_code == 403
    assert gw.client.get("/v1/jobs?kind=generate", headers=ft_only).status_code == 403
    assert gw.client.get("/v1/jobs", headers=admin_only).status_code == 403
    assert gw.client.get(f"/v1/jobs/{generate_id}", headers=gen_only).status_code == 200
    assert gw.client.get(f"/v1/jobs/{finetune_id}", headers=ft_only).status_code == 200
    embed_id = made[JobKind.embed].id  # made by POST /v1/embeddings, a generate-scope route
    assert gw.client.get(f"/v1/jobs/{embed_id}", headers=gen_only).status_code == 200
    assert gw.client.get(f"/v1/jobs/{embed_id}", headers=ft_only).status_code == 403
    assert [j["id"] for j in gw.client.get("/v1/jobs?kind=embed", headers=gen_only).json()["data"]] == [
        embed_id
    ]

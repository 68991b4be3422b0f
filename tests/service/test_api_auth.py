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

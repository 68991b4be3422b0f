"""The gateway's view of model versions: `GET /v1/models` (typed `Model`), pins at admission, and the metrics
that make latency objectives mean something (held requests apart, build info)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.manifests import write_manifest
from core.settings import CatalogSettings
from service.catalog import ModelCatalog
from tests.service.test_api_admin_health import sample


@pytest.fixture
def versions(tmp_path: Path, model_dirs: dict[str, Path]) -> dict[str, Path]:
    """`cls` version 1 (manifest), version 2 (label only in FAE_MODELS, no manifest: hashed)."""
    one, two = tmp_path / "cls-1", tmp_path / "cls-2"
    shutil.copytree(model_dirs["cls"], one)
    shutil.copytree(model_dirs["cls"], two)
    (two / "generator" / "extra.json").write_text("{}")
    write_manifest(one, "1")
    return {"1": one, "2": two}


def test_models_are_listed_per_version_with_fingerprints(make_gateway, headers, versions) -> None:
    gw = make_gateway(models=f"cls@2={versions['2']},cls@1={versions['1']},txt=/nowhere/txt")
    models = gw.client.get("/v1/models", headers=headers("acme")).json()["data"]
    assert [(m["name"], m["version"], m["current"], m["default"]) for m in models] == [
        ("cls", "2", True, True),
        ("cls", "1", False, False),
        ("txt", None, True, False),
    ]
    assert (
        all(len(m["fingerprint"]) == 64 for m in models[:2])
        and models[0]["fingerprint"] != models[1]["fingerprint"]
    )
    assert (
        models[2]["fingerprint"] is None
    )  # a directory the gateway cannot read: no fingerprint, still listed
    assert models[0]["condition_type"] == "class" and models[0]["num_classes"] == 10
    schema = gw.client.get("/openapi.json").json()["components"]["schemas"]
    assert {"name", "version", "fingerprint", "current", "condition_type"} <= set(
        schema["Model"]["properties"]
    )
    assert schema["ModelList"]["properties"]["data"]["items"] == {"$ref": "#/components/schemas/Model"}


def test_admission_records_the_version_and_keeps_a_pin(make_gateway, headers, versions) -> None:
    gw = make_gateway(models=f"cls@2={versions['2']},cls@1={versions['1']}")
    fingerprints = {
        m["version"]: m["fingerprint"]
        for m in gw.client.get("/v1/models", headers=headers("acme")).json()["data"]
    }

    def submit(model: str | None) -> dict:
        body = {"class_label": 1, **({"model": model} if model else {})}
        response = gw.client.post("/v1/generate", json=body, headers=headers("acme"))
        assert response.status_code == 202, response.text
        return response.json()

    plain, pinned, default = submit("cls"), submit("cls@1"), submit(None)
    by_print = submit(f"cls@sha256:{fingerprints['1'][:16]}")
    assert (plain["model"], plain["model_version"], plain["model_fingerprint"]) == (
        "cls",
        "2",
        fingerprints["2"],
    )
    assert (default["model"], default["model_version"]) == ("cls", "2")
    assert (pinned["model"], pinned["model_version"], pinned["model_fingerprint"]) == (
        "cls@1",
        "1",
        fingerprints["1"],
    )
    assert (by_print["model"], by_print["model_version"]) == (f"cls@{fingerprints['1']}", "1")
    assert [j.model for j in gw.queue.enqueued] == ["cls", "cls@1", "cls", f"cls@{fingerprints['1']}"]

    for unknown in ("cls@3", f"cls@{fingerprints['1'][:8]}", "other@1"):
        refused = gw.client.post(
            "/v1/generate", json={"model": unknown, "class_label": 1}, headers=headers("acme")
        )
        assert refused.status_code == 422 and unknown in refused.json()["detail"], unknown


@pytest.mark.parametrize(
    ("models", "complaint"),
    [
        ("cls=/a,cls=/b", "lists 'cls' twice"),
        ("cls@1=/a,cls@1=/b", "lists 'cls@1' twice"),
        ("cls@=/a", "name[@version]=directory"),
        ("cls", "name[@version]=directory"),
    ],
)
def test_bad_model_lists_are_refused_with_the_entry_named(models: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint.replace("[", r"\[").replace("]", r"\]")):
        CatalogSettings(models=models).model_entries()


def test_a_version_label_alone_pins_when_the_gateway_cannot_read_the_models(tmp_path: Path) -> None:
    """A gateway without the models volume (the chart's default) still knows versions from FAE_MODELS."""
    from core.settings import Settings

    catalog = ModelCatalog(
        Settings().override(models="fae@2=/absent/fae-2,fae@1=/absent/fae-1", data_dir=tmp_path)
    )
    pinned = catalog.resolve("fae@1")
    assert pinned is not None and (pinned.key, pinned.version, pinned.fingerprint) == ("fae@1", "1", None)
    assert pinned.job_fields("fae@1") == {"model": "fae@1", "model_version": "1", "model_fingerprint": None}
    assert catalog.resolve("fae").version == "2"  # type: ignore[union-attr]


def test_held_requests_are_kept_out_of_the_latency_histogram(make_gateway, headers) -> None:
    gw = make_gateway(complete=True)
    route = {"route": "/v1/generate", "method": "POST"}
    before = gw.client.get("/metrics").text
    held = gw.client.post(
        "/v1/generate", json={"class_label": 1}, headers={**headers("acme"), "Prefer": "wait=10"}
    )
    assert held.status_code == 200
    after_held = gw.client.get("/metrics").text
    assert sample(
        after_held, "fae_http_held_request_duration_seconds_count", **route, mode="wait"
    ) == 1 + sample(before, "fae_http_held_request_duration_seconds_count", **route, mode="wait")
    assert sample(after_held, "fae_http_request_duration_seconds_count", **route) == sample(
        before, "fae_http_request_duration_seconds_count", **route
    )
    # Asked to answer at once, the same request is ordinary latency again; both count as requests.
    async_headers = {**headers("acme"), "Prefer": "respond-async, wait=10"}
    assert gw.client.post("/v1/generate", json={"class_label": 1}, headers=async_headers).status_code == 202
    after = gw.client.get("/metrics").text
    assert sample(after, "fae_http_request_duration_seconds_count", **route) == 1 + sample(
        after_held, "fae_http_request_duration_seconds_count", **route
    )
    assert sample(after, "fae_http_requests_total", **route, status="200") >= 1


def test_build_info_says_which_release_runs(make_gateway) -> None:
    text = make_gateway().client.get("/metrics").text
    (info,) = [
        s for f in text_string_to_metric_families(text) if f.name == "fae_build_info" for s in f.samples
    ]
    assert (
        info.value == 1 and info.labels["version"] not in ("", None) and info.labels["python"].count(".") == 2
    )

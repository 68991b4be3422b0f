"""A client generated from the gateway's own `/openapi.json` with `openapi-python-client` (the generator users
run) parses error answers into typed problems: a 422 with its field errors and a 429 with its retry delay,
sent by the real app."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

PACKAGE = "fae_generated_client"  # openapi-python-client is in the dev extra


def test_a_generated_client_parses_422_and_429_into_typed_problems(make_gateway, headers, tmp_path) -> None:
    gw = make_gateway(rate_limit_per_minute=1)
    (tmp_path / "openapi.json").write_text(json.dumps(gw.client.get("/openapi.json").json()))
    (tmp_path / "config.yaml").write_text(
        f"post_hooks: []\nproject_name_override: fae-generated\npackage_name_override: {PACKAGE}\n"
    )
    command = "generate --path openapi.json --config config.yaml --output-path client --meta none"
    generated = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", *command.split()],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (tmp_path / "client" / "api" / "generate" / "generate.py").is_file(), generated.stderr
    (tmp_path / "pkg").mkdir()
    (tmp_path / "client").rename(tmp_path / "pkg" / PACKAGE)
    sys.path.insert(0, str(tmp_path / "pkg"))
    try:
        client_module = importlib.import_module(f"{PACKAGE}.client")
        generate = importlib.import_module(f"{PACKAGE}.api.generate.generate")
        list_jobs = importlib.import_module(f"{PACKAGE}.api.jobs.list_jobs")
        models = importlib.import_module(f"{PACKAGE}.models")

        client = client_module.Client(base_url="http://testserver")
        gw.client.headers.update(headers("acme"))
        client.set_httpx_client(gw.client)  # the real app, through its ASGI test transport

        invalid = generate.sync_detailed(client=client, body=models.GenerateRequest(class_label=1, n=9))
        assert invalid.status_code == 422
        problem = invalid.parsed
        assert isinstance(problem, models.Problem), problem
        assert problem.status == 422 and problem.type_.endswith("validation-error")
        assert [(e.loc, e.type_) for e in problem.errors] == [(["body", "n"], "less_than_equal")]
        assert problem.request_id == invalid.headers["x-request-id"]

        accepted = generate.sync_detailed(
            client=client, body=models.GenerateRequest(class_label=1, seed=2**53 - 1)
        )
        assert accepted.status_code == 202 and isinstance(accepted.parsed, models.Job)
        assert accepted.parsed.links.self_ == f"/v1/jobs/{accepted.parsed.id}"

        limited = generate.sync_detailed(client=client, body=models.GenerateRequest(class_label=1))
        assert limited.status_code == 429
        assert isinstance(limited.parsed, models.Problem)
        assert limited.parsed.retry_after == int(limited.headers["retry-after"]) >= 1

        page = list_jobs.sync(client=client)
        assert isinstance(page, models.JobPage) and [job.id for job in page.data] == [accepted.parsed.id]
    finally:
        sys.path.remove(str(tmp_path / "pkg"))
        for name in [name for name in sys.modules if name.startswith(PACKAGE)]:
            del sys.modules[name]

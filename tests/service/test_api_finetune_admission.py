"""Fine-tune admission (issue 15, item 5): what the trainer would refuse is refused at once, the README's field
name works, and `Idempotency-Key` makes a retried upload one job with one stored dataset."""

from __future__ import annotations

import threading

from core.contract import FINETUNE_MAX_IMAGES, FINETUNE_MIN_IMAGES


def images(png, count: int, field: str = "files", shade: int = 0) -> list:
    return [(field, (f"img{i}.png", png((i, shade, 0)), "image/png")) for i in range(count)]


def datasets(gw, tenant: str = "acme") -> set[str]:
    return {key.split("/")[3] for key in gw.storage.list(f"tenants/{tenant}/datasets/")}


def test_too_few_usable_images_are_refused_at_once_and_nothing_is_kept(make_gateway, headers, png) -> None:
    gw = make_gateway()
    files = [*images(png, FINETUNE_MIN_IMAGES - 1), ("files", ("notes.txt", b"a caption", "text/plain"))]
    response = gw.client.post("/v1/finetunes", files=files, headers=headers("acme"))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert (
        f"{FINETUNE_MIN_IMAGES - 1} usable images" in detail and f"at least {FINETUNE_MIN_IMAGES}" in detail
    )
    assert gw.storage.list("tenants/acme/") == [] and gw.queue.enqueued == []
    enough = gw.client.post("/v1/finetunes", files=images(png, FINETUNE_MIN_IMAGES), headers=headers("acme"))
    assert enough.status_code == 202 and enough.json()["request"]["dataset_images"] == FINETUNE_MIN_IMAGES


def test_an_s3_prefix_with_too_few_images_is_refused(make_gateway, headers, png) -> None:
    gw = make_gateway()
    gw.storage.put_bytes("tenants/acme/sets/small/a.png", png())
    gw.storage.put_bytes("tenants/acme/sets/small/a.txt", b"caption")
    response = gw.client.post(
        "/v1/finetunes", json={"s3_prefix": "tenants/acme/sets/small/"}, headers=headers("acme")
    )
    assert response.status_code == 422 and "1 usable images" in response.json()["detail"]
    assert gw.queue.enqueued == []
    assert FINETUNE_MAX_IMAGES == 1000  # the trainer's other bound, checked the same way


def test_the_readme_field_name_images_is_accepted(make_gateway, headers, png) -> None:
    gw = make_gateway()
    response = gw.client.post(
        "/v1/finetunes", files=images(png, FINETUNE_MIN_IMAGES, field="images"), headers=headers("acme")
    )
    assert response.status_code == 202, response.text
    assert len(gw.storage.list(f"tenants/acme/datasets/{response.json()['id']}/")) == FINETUNE_MIN_IMAGES


def test_multipart_fields_are_converted_but_json_bodies_are_strict(make_gateway, headers, png) -> None:
    gw = make_gateway()
    form = gw.client.post(
        "/v1/finetunes", files=images(png, FINETUNE_MIN_IMAGES), data={"steps": "20"}, headers=headers("acme")
    )
    assert form.status_code == 202 and form.json()["request"]["steps"] == 20
    gw.storage.put_bytes("tenants/acme/sets/a/x.png", png())
    strict = gw.client.post(
        "/v1/finetunes", json={"s3_prefix": "tenants/acme/sets/a/", "steps": "20"}, headers=headers("acme")
    )
    assert strict.status_code == 422 and strict.json()["errors"][0]["loc"] == ["body", "steps"]


def test_a_retried_upload_with_the_same_key_is_one_job_and_one_dataset(make_gateway, headers, png) -> None:
    gw = make_gateway()
    keyed = {**headers("acme"), "Idempotency-Key": "ft-1"}
    data = {"steps": "20", "name": "brand"}
    first = gw.client.post("/v1/finetunes", files=images(png, FINETUNE_MIN_IMAGES), data=data, headers=keyed)
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    again = gw.client.post("/v1/finetunes", files=images(png, FINETUNE_MIN_IMAGES), data=data, headers=keyed)
    assert again.status_code == 202, again.text
    assert again.headers["idempotent-replayed"] == "true" and again.json()["id"] == first.json()["id"]
    assert datasets(gw) == {first.json()["id"]}  # the replay stored nothing
    assert [job.id for job in gw.queue.enqueued] == [first.json()["id"]]
    other_files = gw.client.post(
        "/v1/finetunes", files=images(png, FINETUNE_MIN_IMAGES, shade=9), data=data, headers=keyed
    )
    assert other_files.status_code == 422 and other_files.json()["type"].endswith("idempotency-key-reused")
    other_params = gw.client.post(
        "/v1/finetunes", files=images(png, FINETUNE_MIN_IMAGES), data={"steps": "21"}, headers=keyed
    )
    assert other_params.status_code == 422
    unkeyed = gw.client.post("/v1/finetunes", files=images(png, FINETUNE_MIN_IMAGES), headers=headers("acme"))
    assert unkeyed.status_code == 202 and len(datasets(gw)) == 2


def test_concurrent_retries_with_one_key_leave_one_job_and_one_dataset(make_gateway, headers, png) -> None:
    gw = make_gateway(max_concurrent_uploads=3)
    keyed = {**headers("acme"), "Idempotency-Key": "ft-race"}
    answers: list = []

    def post() -> None:
        answers.append(gw.client.post("/v1/finetunes", files=images(png, FINETUNE_MIN_IMAGES), headers=keyed))

    threads = [threading.Thread(target=post) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(answer.status_code == 202 for answer in answers), [a.text for a in answers]
    (job_id,) = {answer.json()["id"] for answer in answers}
    assert datasets(gw) == {job_id}  # a request that lost the race removed the dataset it stored
    assert [job.id for job in gw.queue.enqueued] == [job_id]


def test_a_keyed_replay_is_answered_even_at_the_rate_limit(make_gateway, headers, png) -> None:
    gw = make_gateway(rate_limit_per_minute=1)
    keyed = {**headers("acme"), "Idempotency-Key": "ft-2"}
    first = gw.client.post("/v1/finetunes", files=images(png, FINETUNE_MIN_IMAGES), headers=keyed)
    assert first.status_code == 202
    again = gw.client.post("/v1/finetunes", files=images(png, FINETUNE_MIN_IMAGES), headers=keyed)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    limited = gw.client.post("/v1/finetunes", files=images(png, FINETUNE_MIN_IMAGES), headers=headers("acme"))
    assert limited.status_code == 429 and limited.headers["retry-after"]

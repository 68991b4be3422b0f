"""The gateway's checks of the options issue 15 added to generation: a negative prompt only for text models,
`response_format`, `webhook_events`, and the OpenAI route's errors in OpenAI's shape (the fake queue runs
no model: these are refused before any job exists)."""

from __future__ import annotations


def test_a_negative_prompt_on_a_class_model_is_refused(make_gateway, headers) -> None:
    gw = make_gateway()
    refused = gw.client.post(
        "/v1/generate",
        json={"model": "cls", "class_label": 1, "negative_prompt": "blurry"},
        headers=headers("acme"),
    )
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["loc"] == ["body", "negative_prompt"]
    assert "class-conditional" in refused.json()["detail"]
    accepted = gw.client.post(
        "/v1/generate",
        json={"model": "txt", "prompt": "shoe", "negative_prompt": "blurry"},
        headers=headers("acme"),
    )
    assert accepted.status_code == 202 and accepted.json()["request"]["negative_prompt"] == "blurry"
    assert gw.queue.enqueued[-1].request["negative_prompt"] == "blurry"


def test_response_format_and_webhook_events_are_checked(make_gateway, headers) -> None:
    gw = make_gateway()
    for body, field in (
        ({"response_format": "png"}, "response_format"),
        ({"webhook_events": []}, "webhook_events"),
        ({"webhook_events": ["job.finished"]}, "webhook_events"),
    ):
        response = gw.client.post(
            "/v1/generate", json={"model": "txt", "prompt": "shoe", **body}, headers=headers("acme")
        )
        assert response.status_code == 422, body
        assert response.json()["errors"][0]["loc"][:2] == ["body", field]


def test_the_openai_route_answers_openais_error_shape(make_gateway, headers) -> None:
    gw = make_gateway()
    on_class_model = gw.client.post(
        "/v1/images/generations", json={"model": "cls", "prompt": "shoe"}, headers=headers("acme")
    )
    assert on_class_model.status_code == 400
    error = on_class_model.json()["error"]
    assert (
        error["param"] == "prompt"
        and error["type"] == "invalid_request_error"
        and "class" in error["message"]
    )
    missing = gw.client.post("/v1/images/generations", json={"model": "txt"}, headers=headers("acme"))
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "prompt"
    unauthenticated = gw.client.post("/v1/images/generations", json={"prompt": "shoe"})
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"]["type"] == "authentication_error"
    assert unauthenticated.headers["x-request-id"]
    assert gw.queue.enqueued == []

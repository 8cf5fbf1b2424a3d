"""The HTTP API in-process: every endpoint, every bad input as a 4xx JSON error, admin token, backpressure."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from mtlora import Engine, InputError
from mtlora.server import ServerSettings, create_app
from mtlora.server.settings import ADMIN_TOKEN_ENV


@pytest.fixture(scope="module")
def client(trained_project: Path) -> Iterator[TestClient]:
    settings = ServerSettings(max_inputs=8, max_text_chars=500, max_body_bytes=20_000)
    app = create_app(lambda: Engine.from_config(trained_project, precision="fp32"), settings)
    with TestClient(app) as test_client:
        yield test_client


def error_of(response) -> dict:
    assert 400 <= response.status_code < 500 or response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()["error"]


def test_predict_one_and_many(client: TestClient) -> None:
    one = client.post("/v1/predict", json={"inputs": "loved this great movie", "task": "sentiment"})
    assert one.status_code == 200, one.text
    result = one.json()["result"]
    assert result["task"] == "sentiment" and result["label"] in ("negative", "positive")
    many = client.post("/v1/predict", json={"inputs": [
        "where is my refund", {"text": "the dog sat", "text_pair": "the dog sat"},
        {"question": "who sat on the mat", "context": "the cat sat on the mat"}], "router": "keywords"})
    assert many.status_code == 200, many.text
    results = many.json()["results"]
    assert results[0]["task"] == "support" and results[0]["routed_by"] == "keywords"
    assert results[2]["task"] == "qa" and results[2]["answer"] and results[2]["start"] is not None


def test_route_tasks_health_and_metrics(client: TestClient) -> None:
    route = client.post("/v1/route", json={"input": "where is my refund", "router": "keywords"}).json()
    assert route["task"] == "support" and set(route["scores"]) >= {"support"} and route["reading"] is None
    assert route["reason"] is None  # won on its score: nothing to explain
    semantic = client.post("/v1/route", json={"input": "where is my refund", "router": "semantic"}).json()
    assert semantic["router"] == "semantic" and semantic["reading"] in ("embeddings", "encoder")  # the cascade's
    tasks = client.get("/v1/tasks").json()
    assert {t["name"] for t in tasks["tasks"]} == {"sentiment", "support", "paraphrase", "similarity", "qa"}
    assert "example_inputs" not in tasks["tasks"][0]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["ready"] is True
    assert client.head("/healthz").status_code == client.head("/readyz").status_code == 200  # probes that use HEAD
    assert client.post("/v1/predict", json={"inputs": "where is my refund", "task": "support"}).status_code == 200
    routed = client.post("/v1/predict", json={"inputs": "where is my refund", "router": "semantic"}).json()["result"]
    metrics = client.get("/metrics").text
    assert f'mtlora_routes_total{{reading="{routed["route_reading"]}",router="semantic"}}' in metrics
    assert 'mtlora_routes_total{reading="",router="explicit"}' in metrics
    assert "mtlora_requests_total" in metrics and "mtlora_batch_size_bucket" in metrics
    assert 'mtlora_answers_total{task="support"}' in metrics
    assert client.get("/docs").status_code == 200
    assert "mtlora" in client.get("/").text


def test_openapi_documents_the_errors_as_they_are_sent(client: TestClient) -> None:
    """A client generated from /openapi.json must not expect FastAPI's `{"detail": [...]}`: every error
    this app sends is `{"error": {"type", "message"}}`, for each status it can send."""
    from mtlora.server.schemas import ErrorResponse

    spec = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    predict = spec["paths"]["/v1/predict"]["post"]["responses"]
    assert {"400", "404", "413", "422", "503"} <= set(predict)
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if not status.startswith("2") and path != "/readyz":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
    assert set(spec["paths"]["/readyz"]["get"]["responses"]) == {"200", "503"}
    invalid = client.post("/v1/predict", json={"inputs": 5})
    assert invalid.status_code == 422 and ErrorResponse.model_validate(invalid.json()).error.details


def test_metrics_count_each_request_by_endpoint_and_status(client: TestClient) -> None:
    def count(status: int) -> float:
        line = f'mtlora_requests_total{{endpoint="/v1/predict",status="{status}"}}'
        values = [float(row.split()[-1]) for row in client.get("/metrics").text.splitlines() if row.startswith(line)]
        return values[0] if values else 0.0

    ok, refused = count(200), count(413)
    assert client.post("/v1/predict", json={"inputs": "where is my refund", "task": "support"}).status_code == 200
    oversize = client.post("/v1/predict", content=json.dumps({"inputs": "x" * 30_000}),
                           headers={"content-type": "application/json"})
    assert oversize.status_code == 413
    assert (count(200), count(413)) == (ok + 1, refused + 1)


def test_metrics_label_requests_by_route_not_by_url(client: TestClient) -> None:
    """A client inventing URLs must not invent time series: each counts under its route, or "other"."""
    for path in ("/v1/nope", "/v1/x/../y", "/v1/adapters/made-up-1", "/v1/adapters/made-up-2"):
        client.post(path)
    endpoints = {row.split('endpoint="')[1].split('"')[0]
                 for row in client.get("/metrics").text.splitlines() if row.startswith("mtlora_requests_total{")}
    assert "/v1/adapters/{name}" in endpoints and "other" in endpoints
    assert not any("made-up" in e or "nope" in e or ".." in e for e in endpoints), endpoints


@pytest.mark.parametrize(("body", "status", "kind"), [
    ('{"inputs": ', 422, "invalid_request"),                                    # malformed JSON
    ('{"inputs": 42}', 422, "invalid_request"),                                 # wrong type
    ('{"task": "sentiment"}', 422, "invalid_request"),                          # missing field
    ('{"inputs": "hi", "colour": 1}', 422, "invalid_request"),                  # unknown field
    ('{"inputs": "   "}', 422, "empty_text"),
    ('{"inputs": "\\u0000\\u0001"}', 422, "empty_text"),                        # control characters only
    ('{"inputs": "\\ufffd\\u0301"}', 422, "empty_text"),                        # U+FFFD and a lone combining mark
    ('{"inputs": "<sentiment>  "}', 422, "empty_text"),                         # nothing after the task's prefix
    ('{"inputs": "a\\ud800b"}', 422, "bad_input"),                               # half a surrogate pair: not text
    ('{"inputs": "hi", "task": " "}', 422, "bad_input"),
    ('{"inputs": "hi", "router": ""}', 422, "bad_input"),
    ('{"inputs": []}', 422, "invalid_request"),
    (json.dumps({"inputs": ["a"] * 9}), 413, "too_many_inputs"),
    (json.dumps({"inputs": "a" * 501}), 413, "text_too_long"),
    (json.dumps({"inputs": "x" * 30_000}), 413, "body_too_large"),
    ('{"inputs": "hi", "task": "nope"}', 404, "not_found"),
    ('{"inputs": "hi", "router": "telepathy"}', 404, "not_found"),
    ('{"inputs": "only one text", "task": "paraphrase"}', 422, "bad_input"),    # wrong shape for the task
    ('{"inputs": "hi", "task": "sentiment", "router": "learned"}', 422, "bad_input"),  # the router would be ignored
    ('{"inputs": ["fine", {"text": "a", "text_pair": "b"}], "task": "sentiment"}', 422, "bad_input"),
])
def test_bad_requests_get_a_4xx_json_error(client: TestClient, body: str, status: int, kind: str) -> None:
    response = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert error_of(response)["type"] == kind
    if kind == "bad_input" and body.startswith('{"inputs": ['):  # says which of several inputs
        assert error_of(response)["message"].startswith("inputs[1]: task 'sentiment'"), response.text


@pytest.mark.parametrize(("body", "content_type", "headline"), [
    ('{"inputs": ', "application/json", "body is not valid JSON: "),
    ('{"inputs": "hi"}', "text/plain", "body: send a JSON object, with the header content-type: application/json"),
    ('{"inputs": {"text": "a", "txt_pair": "b"}}', "application/json",
     "inputs.txt_pair: unknown field (did you mean 'text_pair'?); valid fields: text, text_pair"),
    ('{"inputs": ["a", {"text": "t", "question": "q"}]}', "application/json",
     "inputs[1]: an input is a {text, text_pair} or a {question, context} object, not a mix of the two"),
    ('{"inputs": [{"question": "q", "contxt": "c"}]}', "application/json",
     "inputs[0].contxt: unknown field (did you mean 'context'?); valid fields: question, context"),
    ('{"inputs": ["a", {"question": "q"}]}', "application/json", "inputs[1].context: Field required"),
    ('{"inputs": 5}', "application/json", "inputs: expected a text, a {text, text_pair} or a {question, context}"),
    ('{"inputs": "hi", "colour": 1}', "application/json", "colour: unknown field; valid fields: inputs, task, router"),
    ('{"inputs": "hi", "tsk": "x"}', "application/json", "tsk: unknown field (did you mean 'task'?); valid fields: "
                                                         "inputs, task, router"),
    ('{"inputs": "hi", "task": 3}', "application/json", "task: Input should be a valid string"),
    ('[1, 2]', "application/json", "body: Input should be a valid dictionary"),
])
def test_invalid_bodies_are_explained_by_the_shape_the_client_meant(client: TestClient, body: str,
                                                                     content_type: str, headline: str) -> None:
    response = client.post("/v1/predict", content=body, headers={"content-type": content_type})
    assert error_of(response)["message"].startswith(headline), response.text


def test_an_empty_task_or_router_name_is_told_the_names_it_may_take(client: TestClient) -> None:
    task = client.post("/v1/predict", json={"inputs": "hi", "task": ""})
    assert error_of(task)["message"].startswith("task is empty: name a loaded task (paraphrase, "), task.text
    assert error_of(task)["message"].endswith("or leave task out to route each input")
    router = client.post("/v1/route", json={"input": "hi", "router": " "})
    assert error_of(router)["message"] == ("router is empty: name one of explicit, keywords, semantic, learned, or "
                                           "leave router out for the project's default"), router.text


def test_route_names_its_input_field_in_errors(client: TestClient) -> None:
    response = client.post("/v1/route", json={"input": "  "})
    assert response.status_code == 422 and error_of(response)["message"] == "input: the text is empty"
    pair = client.post("/v1/predict", json={"inputs": ["fine", {"text": "a", "text_pair": " "}]})
    assert error_of(pair)["message"] == "inputs[1].text_pair: the text is empty", pair.text
    plural = client.post("/v1/route", json={"inputs": "hi"})  # /v1/predict's name for it
    assert error_of(plural)["message"] == "inputs: unknown field (did you mean 'input'?); valid fields: input, " \
                                          "router", plural.text
    prefix_only = client.post("/v1/route", json={"input": "<support>"})
    assert error_of(prefix_only)["message"].startswith("text is empty"), prefix_only.text
    # The same error, of the same type, when it is one of several inputs.
    in_a_list = error_of(client.post("/v1/predict", json={"inputs": ["fine", "<support>"]}))
    assert in_a_list["type"] == "empty_text" and in_a_list["message"].startswith("inputs[1]: text is empty"), in_a_list


def test_a_chunked_body_is_held_to_the_size_limit(client: TestClient) -> None:
    """Without a Content-Length the limit applies to the bytes as they arrive; a small body still works."""
    headers = {"content-type": "application/json"}
    big = json.dumps({"inputs": ["a"] * 5000}).encode()  # 25 kB against the fixture's 20 kB limit
    oversize = client.post("/v1/predict", content=iter([big[:15_000], big[15_000:]]), headers=headers)
    assert oversize.request.headers.get("content-length") is None
    assert oversize.status_code == 413 and error_of(oversize)["type"] == "body_too_large"
    small = json.dumps({"inputs": "where is my refund", "task": "support"}).encode()
    answered = client.post("/v1/predict", content=iter([small[:10], small[10:]]), headers=headers)
    assert answered.status_code == 200 and answered.json()["result"]["task"] == "support"


def test_invalid_utf8_is_a_4xx(client: TestClient) -> None:
    response = client.post("/v1/predict", content=b'{"inputs": "caf\xe9"}',
                           headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500
    error_of(response)


@pytest.mark.parametrize(("body", "message"), [
    (b'{"inputs": "caf\xe9"}', "body is not UTF-8 text: byte 0xe9 at offset 15 (invalid continuation byte); send "
                               "the JSON encoded as UTF-8"),
    (b"[" * 5_000 + b"]" * 5_000, "body nests its JSON arrays or objects too deeply to parse"),
])
def test_an_unparsable_body_says_why(client: TestClient, body: bytes, message: str) -> None:
    """Not FastAPI's bare "There was an error parsing the body", which leaves the client guessing."""
    response = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and error_of(response)["type"] == "unreadable_body"
    assert error_of(response)["message"].startswith(message), response.text


def test_a_bad_input_gets_its_error_and_the_next_request_its_answer(client: TestClient) -> None:
    # Sharing a batch with a bad input is test_a_bad_input_costs_its_batch_a_few_engine_calls_not_one_per_input's.
    bad = client.post("/v1/predict", json={"inputs": "one text only", "task": "similarity"})
    good = client.post("/v1/predict", json={"inputs": "loved this great movie", "task": "sentiment"})
    assert bad.status_code == 422 and good.status_code == 200


def test_admin_endpoints_need_the_token(client: TestClient, monkeypatch) -> None:
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    for call in (client.delete, client.post):  # unloading and (re)loading alike
        assert error_of(call("/v1/adapters/qa"))["type"] == "admin_disabled"
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "s3cret")
    for call in (client.delete, client.post):
        assert call("/v1/adapters/qa").status_code == 401
        assert call("/v1/adapters/qa", headers={"Authorization": "Bearer wrong"}).status_code == 403
        assert call("/v1/adapters/qa", headers={"Authorization": "Basic s3cret"}).status_code == 401  # the scheme too
    auth = {"Authorization": "bearer s3cret"}  # the scheme's name in any case
    assert client.delete("/v1/adapters/..%2Fsecrets", headers=auth).status_code in (400, 404)
    assert client.post("/v1/adapters/bad.name..x", headers=auth).status_code == 400
    unloaded = client.delete("/v1/adapters/qa", headers=auth)
    assert unloaded.status_code == 200 and "qa" not in unloaded.json()["tasks"]
    assert client.post("/v1/predict", json={"inputs": "hi", "task": "qa"}).status_code == 404
    loaded = client.post("/v1/adapters/qa", headers=auth)
    assert loaded.status_code == 200 and "qa" in loaded.json()["tasks"]
    missing = client.post("/v1/adapters/missing", headers=auth)
    assert missing.status_code == 404 and "No adapter 'missing' in registry <registry>." in error_of(missing)["message"]


def test_full_queue_answers_503_and_stays_healthy(trained_project: Path) -> None:
    import httpx

    engine = Engine.from_config(trained_project, tasks=["sentiment"], precision="fp32")
    app = create_app(lambda: engine, ServerSettings(max_queue=2, max_inputs=2, max_batch=2, max_wait_ms=0))
    two = {"inputs": ["great film"] * 2, "task": "sentiment"}

    async def run() -> tuple[list[httpx.Response], int, int]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                with engine._lock:  # the engine busy: the first request waits on it, the second fills the queue
                    calls = []
                    for _ in range(3):
                        calls.append(asyncio.ensure_future(http.post("/v1/predict", json=two)))
                        await asyncio.sleep(0.3)
                answered = [await call for call in calls]
                healthy = (await http.get("/healthz")).status_code
                later = await http.post("/v1/predict", json={"inputs": "great film", "task": "sentiment"})
                return answered, healthy, later.status_code

    (first, second, busy), healthy, later = asyncio.run(run())
    assert (first.status_code, second.status_code, busy.status_code) == (200, 200, 503)
    assert busy.headers["Retry-After"] == "1" and error_of(busy)["type"] == "overloaded"
    assert (healthy, later) == (200, 200)


def test_a_request_that_just_fits_a_partly_full_queue_is_queued_and_one_input_more_is_503(
        trained_project: Path) -> None:
    """All of a request's inputs are queued or none: at the bound it fits, one over it is told to retry (not
    a 500 from a queue that filled half way), and the queue-depth gauge counts what waits."""
    import httpx

    engine = Engine.from_config(trained_project, tasks=["sentiment"], precision="fp32")
    app = create_app(lambda: engine, ServerSettings(max_queue=3, max_inputs=2, max_batch=1, max_wait_ms=0))

    def inputs(count: int) -> dict:
        return {"inputs": ["great film"] * count, "task": "sentiment"}

    async def run() -> tuple[list[int], httpx.Response, list[str]]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:

                async def depth() -> str:
                    return next(line for line in (await http.get("/metrics")).text.splitlines()
                                if line.startswith("mtlora_queue_depth "))

                with engine._lock:  # the engine busy: the worker holds one input, the rest wait in the queue
                    taken = asyncio.ensure_future(http.post("/v1/predict", json=inputs(1)))
                    await asyncio.sleep(0.3)
                    waiting = asyncio.ensure_future(http.post("/v1/predict", json=inputs(2)))
                    await asyncio.sleep(0.3)
                    depths = [await depth()]
                    over = await http.post("/v1/predict", json=inputs(2))  # 2 queued + 2 > 3
                    fitting = asyncio.ensure_future(http.post("/v1/predict", json=inputs(1)))  # 2 + 1 = 3
                    await asyncio.sleep(0.3)
                    depths.append(await depth())
                return [(await call).status_code for call in (taken, waiting, fitting)], over, depths

    answered, over, depths = asyncio.run(run())
    assert answered == [200, 200, 200]
    assert over.status_code == 503 and over.headers["Retry-After"] == "1" and error_of(over)["type"] == "overloaded"
    assert depths == ["mtlora_queue_depth 2.0", "mtlora_queue_depth 3.0"]


def test_the_batching_window_gathers_inputs_that_come_within_max_wait_ms() -> None:
    from mtlora.server.batcher import MicroBatcher
    from mtlora.server.metrics import Metrics

    calls: list[list[str]] = []

    class Echo:
        def predict_batch(self, items: list, tasks: list, router: str | None) -> list[dict]:
            calls.append(items)
            return [{"echo": item} for item in items]

    async def run() -> None:
        batcher = MicroBatcher(Echo(), ServerSettings(max_wait_ms=400, max_batch=8), Metrics())  # type: ignore[arg-type]
        batcher.start()
        submitted = [asyncio.create_task(batcher.submit(["first"], ["t"], None))]
        await asyncio.sleep(0.1)  # within the first input's window
        submitted.append(asyncio.create_task(batcher.submit(["second"], ["t"], None)))
        await asyncio.sleep(0.6)  # past it: the next input opens a window of its own
        submitted.append(asyncio.create_task(batcher.submit(["third"], ["t"], None)))
        await asyncio.wait_for(asyncio.gather(*submitted), 5)
        await batcher.stop()

    asyncio.run(run())
    assert calls == [["first", "second"], ["third"]]


@pytest.mark.parametrize("chunked", [False, True])
def test_the_size_limits_take_a_text_or_body_exactly_at_the_limit(client: TestClient, chunked: bool) -> None:
    headers = {"content-type": "application/json"}
    text = "great film " * 45 + "a" * 5  # 500 characters: the fixture's limit
    assert client.post("/v1/predict", json={"inputs": text, "task": "sentiment"}).status_code == 200
    body = json.dumps({"inputs": "where is my refund", "task": "support"}).encode()
    at_limit = body + b" " * (20_000 - len(body))  # the fixture's limit, in trailing white space JSON allows
    for content, status in ((at_limit, 200), (at_limit + b" ", 413)):
        response = client.post("/v1/predict", content=iter([content]) if chunked else content, headers=headers)
        assert response.status_code == status, (len(content), response.text)


def test_readyz_is_503_until_the_engine_serves_and_once_the_batcher_has_stopped(trained_project: Path) -> None:
    """A load balancer sends traffic only where /readyz says 200; /healthz is alive all along."""
    import httpx

    app = create_app(lambda: Engine.from_config(trained_project, tasks=["sentiment", "support"], precision="fp32"))

    async def readyz(http: httpx.AsyncClient) -> tuple[int, dict]:
        response = await http.get("/readyz")
        return response.status_code, response.json()

    async def run() -> list[tuple[int, dict]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            seen = [await readyz(http)]  # no lifespan yet: no engine
            async with app.router.lifespan_context(app):
                seen.append(await readyz(http))
            seen.append(await readyz(http))
            assert (await http.get("/healthz")).status_code == 200
        return seen

    before, serving, after = asyncio.run(run())
    assert before == (503, {"ready": False, "tasks": []})
    assert serving == (200, {"ready": True, "tasks": ["sentiment", "support"]})
    assert after == (503, {"ready": False, "tasks": []})


def test_a_queue_smaller_than_one_request_is_refused() -> None:
    """A request of max_inputs inputs could never be queued: it would get 503 "retry" for ever."""
    with pytest.raises(ValidationError) as caught:
        ServerSettings(max_queue=8, max_inputs=9)
    assert [e["msg"] for e in caught.value.errors()] == [
        "Value error, max_queue (8) is below max_inputs (9): a request of that many inputs could never be queued; "
        "raise max_queue or lower max_inputs"]
    assert ServerSettings(max_queue=9, max_inputs=9).max_queue == 9


def test_route_calls_wait_in_the_queue_and_are_decided_in_one_engine_call(trained_project: Path,
                                                                         monkeypatch) -> None:
    """Each route call took an engine call of its own beside the batches, so 32 route clients held a
    one-input prediction up for a second; they now queue with the inputs, bounded by `max_queue`, and
    those waiting together are routed together."""
    import httpx

    engine = Engine.from_config(trained_project, tasks=["sentiment", "support"], precision="fp32")
    calls: list[int] = []
    route = engine.route
    monkeypatch.setattr(engine, "route", lambda requests, router=None: calls.append(len(requests)) or route(
        requests, router))
    app = create_app(lambda: engine, ServerSettings(max_queue=3, max_inputs=1, max_wait_ms=0))

    async def run() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                def ask(text: str) -> asyncio.Future:
                    return asyncio.ensure_future(http.post("/v1/route", json={"input": text, "router": "keywords"}))

                with engine._lock:  # the engine busy: the first call is taken and waits, the rest queue
                    first = ask("great film")
                    await asyncio.sleep(0.3)
                    waiting = [ask(text) for text in ("a great movie", "my refund", "a film", "the refund")]
                    await asyncio.sleep(0.3)
                return [await call for call in (first, *waiting)]

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 503]
    assert responses[4].json()["error"]["type"] == "overloaded"
    assert [r.json()["task"] for r in responses[:4]] == ["sentiment", "sentiment", "support", "sentiment"]
    assert calls == [1, 3]


def test_concurrent_requests_are_batched_together(trained_project: Path) -> None:
    import httpx

    settings = ServerSettings(max_wait_ms=100, max_batch=16)
    app = create_app(lambda: Engine.from_config(trained_project, precision="fp32"), settings)

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            texts = ["loved this great movie", "where is my refund"] * 4
            return await asyncio.gather(*(http.post("/v1/predict", json={"inputs": t, "router": "keywords"})
                                          for t in texts))

    async def run() -> tuple[list[httpx.Response], str]:
        async with app.router.lifespan_context(app):
            responses = await burst()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                metrics = (await http.get("/metrics")).text
        return responses, metrics

    responses, metrics = asyncio.run(run())
    assert all(r.status_code == 200 for r in responses)
    assert [r.json()["result"]["task"] for r in responses] == ["sentiment", "support"] * 4
    count = next(line for line in metrics.splitlines() if line.startswith("mtlora_batch_size_count"))
    assert float(count.split()[-1]) < 8  # fewer engine calls than requests


def test_a_server_fault_is_a_counted_json_500_and_the_server_goes_on(trained_project: Path) -> None:
    engine = Engine.from_config(trained_project, tasks=["sentiment"], precision="fp32")
    answer = engine.predict_batch

    def failing_on_marker(items: list, *args: object, **kwargs: object) -> list:
        if "kernel-fault" in items:
            raise RuntimeError("a kernel failed")
        return answer(items, *args, **kwargs)

    engine.predict_batch = failing_on_marker  # type: ignore[method-assign]
    with TestClient(create_app(lambda: engine), raise_server_exceptions=False) as http:
        failed = http.post("/v1/predict", json={"inputs": "kernel-fault", "task": "sentiment"})
        after = http.post("/v1/predict", json={"inputs": "great film", "task": "sentiment"})
        metrics = http.get("/metrics").text
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "internal_error"
    assert "RuntimeError" in failed.json()["error"]["message"]
    assert after.status_code == 200
    assert 'mtlora_requests_total{endpoint="/v1/predict",status="500"} 1.0' in metrics
    assert 'mtlora_errors_total{type="internal_error"} 1.0' in metrics


def test_worker_takes_what_is_queued_without_waiting() -> None:
    """Inputs already queued when the engine frees up go in one call, up to max_batch, even with no wait."""
    from mtlora.server.batcher import MicroBatcher
    from mtlora.server.metrics import Metrics

    class CountingEngine:
        def __init__(self) -> None:
            self.calls: list[int] = []

        def predict_batch(self, items: list, tasks: list, router: str | None) -> list[dict]:
            self.calls.append(len(items))
            return [{"task": task, "echo": item} for item, task in zip(items, tasks, strict=True)]

    engine = CountingEngine()

    async def run() -> list[list[dict]]:
        batcher = MicroBatcher(engine, ServerSettings(max_wait_ms=0, max_batch=3), Metrics())  # type: ignore[arg-type]
        requests = [asyncio.create_task(batcher.submit([f"text {i}"], ["t"], None)) for i in range(5)]
        await asyncio.sleep(0)  # every request is queued before the worker starts
        batcher.start()
        answers = await asyncio.gather(*requests)
        await batcher.stop()
        return answers

    answers = asyncio.run(run())
    assert engine.calls == [3, 2]
    assert [a[0]["echo"] for a in answers] == [f"text {i}" for i in range(5)]


class _Panic(BaseException):
    """What a Rust tokenizer's panic raises (pyo3's PanicException is not an Exception)."""


@pytest.mark.parametrize("crash", [RuntimeError("kernel failed"), _Panic("stride must be less than max_len")])
def test_an_engine_crash_fails_only_its_input_and_the_worker_goes_on(crash: BaseException) -> None:
    """An error that is not an input error (a failing kernel, out of memory, a panic) must not stop the worker."""
    from mtlora.server.batcher import MicroBatcher
    from mtlora.server.metrics import Metrics

    class CrashingEngine:
        def predict_batch(self, items: list, tasks: list, router: str | None) -> list[dict]:
            if "boom" in items:
                raise crash
            return [{"echo": item} for item in items]

    async def run() -> tuple[list, list]:
        batcher = MicroBatcher(CrashingEngine(), ServerSettings(max_wait_ms=0), Metrics())  # type: ignore[arg-type]
        together = [asyncio.create_task(batcher.submit([text], ["t"], None)) for text in ("ok", "boom", "fine")]
        await asyncio.sleep(0)  # all three in one engine call
        batcher.start()
        outcomes = await asyncio.wait_for(asyncio.gather(*together, return_exceptions=True), 5)
        later = await asyncio.wait_for(batcher.submit(["after"], ["t"], None), 5)
        await batcher.stop()
        return outcomes, later

    outcomes, later = asyncio.run(run())
    assert outcomes[0] == [{"echo": "ok"}] and outcomes[2] == [{"echo": "fine"}]
    assert isinstance(outcomes[1], RuntimeError) and str(crash) in str(outcomes[1])
    assert later == [{"echo": "after"}]


def test_a_bad_input_costs_its_batch_a_few_engine_calls_not_one_per_input() -> None:
    from mtlora.server.batcher import MicroBatcher
    from mtlora.server.metrics import Metrics

    calls: list[int] = []

    class OneBadInput:
        def predict_batch(self, items: list, tasks: list, router: str | None) -> list[dict]:
            calls.append(len(items))
            if "boom" in items:
                raise InputError("boom is not an input")
            return [{"echo": item} for item in items]

    async def run() -> list:
        batcher = MicroBatcher(OneBadInput(), ServerSettings(max_wait_ms=0, max_batch=16), Metrics())  # type: ignore[arg-type]
        texts = [f"text {i}" for i in range(16)]
        texts[5] = "boom"
        together = [asyncio.create_task(batcher.submit([text], ["t"], None)) for text in texts]
        await asyncio.sleep(0)
        batcher.start()
        outcomes = await asyncio.wait_for(asyncio.gather(*together, return_exceptions=True), 5)
        await batcher.stop()
        return outcomes

    outcomes = asyncio.run(run())
    assert isinstance(outcomes[5], InputError)
    assert [o for i, o in enumerate(outcomes) if i != 5] == [[{"echo": f"text {i}"}] for i in range(16) if i != 5]
    assert calls[0] == 16 and len(calls) <= 1 + 2 * 4  # halving 16 four times, against 17 calls one by one


def test_a_batch_is_answered_in_one_engine_call_per_router() -> None:
    from mtlora.server.batcher import MicroBatcher
    from mtlora.server.metrics import Metrics

    calls: list[tuple[list, str | None]] = []

    class Echo:
        def predict_batch(self, items: list, tasks: list, router: str | None) -> list[dict]:
            calls.append((items, router))
            return [{"echo": item, "router": router} for item in items]

    async def run() -> list:
        batcher = MicroBatcher(Echo(), ServerSettings(max_wait_ms=0, max_batch=16), Metrics())  # type: ignore[arg-type]
        asked = [("a", None), ("b", "keywords"), ("c", None), ("d", "semantic"), ("e", "keywords")]
        waiting = [asyncio.create_task(batcher.submit([text], [None], router)) for text, router in asked]
        await asyncio.sleep(0)
        batcher.start()
        outcomes = await asyncio.wait_for(asyncio.gather(*waiting), 5)
        await batcher.stop()
        return outcomes

    outcomes = asyncio.run(run())
    assert [o[0]["router"] for o in outcomes] == [None, "keywords", None, "semantic", "keywords"]
    assert sorted(calls, key=str) == sorted([(["a", "c"], None), (["b", "e"], "keywords"), (["d"], "semantic")],
                                            key=str)


def test_route_decisions_queued_with_predictions_are_made_in_a_call_of_their_own() -> None:
    from mtlora.server.batcher import MicroBatcher
    from mtlora.server.metrics import Metrics

    calls: list[tuple[str, list, str | None]] = []

    class Echo:
        def predict_batch(self, items: list, tasks: list, router: str | None) -> list[dict]:
            calls.append(("predict", items, router))
            return [{"echo": item} for item in items]

        def route(self, items: list, router: str | None = None) -> list[str]:
            calls.append(("route", items, router))
            return [f"route {item}" for item in items]

    async def run() -> list:
        batcher = MicroBatcher(Echo(), ServerSettings(max_wait_ms=0, max_batch=16), Metrics())  # type: ignore[arg-type]
        asked = [("a", False), ("b", True), ("c", False), ("d", True)]
        waiting = [asyncio.create_task(batcher.submit([text], [None], None, route_only=route_only))
                   for text, route_only in asked]
        await asyncio.sleep(0)
        batcher.start()
        outcomes = await asyncio.wait_for(asyncio.gather(*waiting), 5)
        await batcher.stop()
        return outcomes

    assert asyncio.run(run()) == [[{"echo": "a"}], ["route b"], [{"echo": "c"}], ["route d"]]
    assert sorted(calls) == [("predict", ["a", "c"], None), ("route", ["b", "d"], None)]


def test_the_batch_size_histogram_counts_engine_calls() -> None:
    """mtlora_batch_size is "inputs per engine call": a batch of three routers is three calls, and one split
    around a bad input is as many as it took; it counted one per batch."""
    from mtlora.server.batcher import MicroBatcher
    from mtlora.server.metrics import Metrics

    class Echo:
        def predict_batch(self, items: list, tasks: list, router: str | None) -> list[dict]:
            if "boom" in items:
                raise InputError("boom is not an input")
            return [{"echo": item} for item in items]

    metrics = Metrics()

    async def run() -> None:
        batcher = MicroBatcher(Echo(), ServerSettings(max_wait_ms=0, max_batch=16), metrics)  # type: ignore[arg-type]
        asked = [("a", None), ("b", "keywords"), ("c", None), ("d", "semantic"), ("boom", "semantic")]
        waiting = [asyncio.create_task(batcher.submit([text], [None], router)) for text, router in asked]
        await asyncio.sleep(0)
        batcher.start()
        await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 5)
        await batcher.stop()

    asyncio.run(run())
    count = metrics.registry.get_sample_value("mtlora_batch_size_count")
    total = metrics.registry.get_sample_value("mtlora_batch_size_sum")
    # ["a", "c"], ["b"], and ["d", "boom"] failing then split into ["d"] and ["boom"]: five calls of 7 inputs.
    assert (count, total) == (5.0, 7.0)


def test_shutdown_answers_what_is_in_flight(trained_project: Path) -> None:
    import httpx

    app = create_app(lambda: Engine.from_config(trained_project, tasks=["sentiment"], precision="fp32"),
                     ServerSettings(max_wait_ms=200))

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            async with app.router.lifespan_context(app):
                pending = [asyncio.create_task(http.post("/v1/predict", json={"inputs": "great film",
                                                                              "task": "sentiment"}))
                           for _ in range(6)]
                await asyncio.sleep(0.05)  # queued, waiting for the batch window
            # The lifespan has ended; had it dropped the queue, these would never be answered.
            return await asyncio.wait_for(asyncio.gather(*pending), 30)

    assert [r.status_code for r in asyncio.run(run())] == [200] * 6


def test_every_error_type_is_snake_case() -> None:
    from mtlora.errors import DataError, RegistryError
    from mtlora.server.app import _as_problem

    assert _as_problem(RegistryError("no learned router trained")).kind == "registry_error"
    assert _as_problem(DataError("f.jsonl:3", "bad")).kind == "data_error"


def test_a_client_that_hangs_up_has_its_queued_inputs_dropped_and_counted_as_499() -> None:
    """A client gone (a timeout, a closed tab) no longer costs the engine its inputs, and /metrics does not
    count an answer nobody received as a 200; nor a body cut off half way as a 400 unreadable body."""
    import threading
    from types import SimpleNamespace

    import httpx

    calls: list[list] = []
    gate = threading.Event()

    class Gated:  # an engine busy until the gate opens
        tasks, default_router, registry = ["t"], "keywords", SimpleNamespace(root="/registry")

        def predict_batch(self, items: list, tasks: list, router: str | None) -> list[dict]:
            gate.wait(10)
            calls.append(list(items))
            return [{"task": "t", "routed_by": "explicit", "echo": item} for item in items]

    app = create_app(lambda: Gated(), ServerSettings(max_wait_ms=0))  # type: ignore[arg-type, return-value]

    async def leaving(body: bytes, sent_whole: bool) -> None:
        """A raw ASGI call whose client hangs up after sending `body` (the whole of it, or a part)."""
        hang_up = asyncio.Event()
        messages = [{"type": "http.request", "body": body, "more_body": not sent_whole}]

        async def receive() -> dict:
            if messages:
                return messages.pop(0)
            await hang_up.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            pass

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
                 "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
                 "client": ("127.0.0.1", 1), "server": ("test", 80)}
        call = asyncio.ensure_future(app(scope, receive, send))
        await asyncio.sleep(0.2)  # its input queued behind the busy engine (or its body half sent)
        hang_up.set()
        await asyncio.wait_for(call, 5)

    async def run() -> str:
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport,
                                                                       base_url="http://test") as http:
            busy = asyncio.ensure_future(http.post("/v1/predict", json={"inputs": "busy", "task": "t"}))
            await asyncio.sleep(0.2)  # the engine holds "busy"
            await leaving(json.dumps({"inputs": "gone", "task": "t"}).encode(), sent_whole=True)
            await leaving(b'{"inputs": "cut', sent_whole=False)
            gate.set()
            assert (await busy).status_code == 200
            await asyncio.sleep(0.2)
            return (await http.get("/metrics")).text

    metrics = asyncio.run(run())
    assert calls == [["busy"]]  # "gone" was never run
    assert 'mtlora_requests_total{endpoint="/v1/predict",status="499"} 2.0' in metrics
    assert 'mtlora_errors_total{type="client_closed_request"} 2.0' in metrics
    assert 'status="400"' not in metrics and 'unreadable_body' not in metrics


def test_readyz_is_503_once_every_adapter_is_unloaded(trained_project: Path, monkeypatch) -> None:
    """`serve` refuses to start without an adapter (it would answer every input "unroutable" and call itself
    ready); unloading the last one over HTTP must not leave the load balancer sending it traffic either."""
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    app = create_app(lambda: Engine.from_config(trained_project, tasks=["sentiment"], precision="fp32"))
    with TestClient(app) as http:
        assert http.delete("/v1/adapters/sentiment", headers=auth).json()["tasks"] == []
        empty = http.get("/readyz")
        assert empty.status_code == 503 and empty.json()["ready"] is False, empty.text
        assert empty.json()["reason"] == "no adapter is loaded: load one with POST /v1/adapters/{name}"
        assert http.post("/v1/adapters/sentiment", headers=auth).status_code == 200
        again = http.get("/readyz")
        assert again.status_code == 200 and again.json() == {"ready": True, "tasks": ["sentiment"]}


def test_the_learned_router_is_read_again_once_retrained(trained_project: Path, tmp_path: Path, monkeypatch) -> None:
    """POST /v1/adapters/router was refused ("loads by itself"), and the router adapter once loaded stayed
    for the server's life: after `mtlora train-router` the server routed with the old one until restarted."""
    import shutil

    import yaml

    import mtlora

    shutil.copytree(trained_project.parent, tmp_path / "project")
    path = tmp_path / "project" / trained_project.name

    def train_router(steps: int) -> None:
        config = yaml.safe_load(path.read_text())
        config["router"] = {"features": "encoder", "training": {"max_steps": steps, "max_length": 32}}
        path.write_text(yaml.safe_dump(config))
        mtlora.train_router(path, progress=False, log=lambda _: None)

    def scores_of(engine: Engine) -> dict[str, float]:
        return engine.route(["a great film"], "learned")[0].scores

    train_router(2)
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    app = create_app(lambda: Engine.from_config(path, tasks=["sentiment", "support"], precision="fp32"))
    with TestClient(app) as http:
        def served() -> dict[str, float]:
            return http.post("/v1/route", json={"input": "a great film", "router": "learned"}).json()["scores"]

        before = served()
        train_router(6)
        retrained = scores_of(Engine.from_config(path, tasks=["sentiment", "support"], precision="fp32"))
        assert before != pytest.approx(retrained)  # the retrained router routes differently
        reloaded = http.post("/v1/adapters/router", headers=auth)
        assert reloaded.status_code == 200, reloaded.text
        assert served() == pytest.approx(retrained)
        unload = http.delete("/v1/adapters/router", headers=auth)
        assert unload.status_code == 400 and "POST /v1/adapters/router reads it again" in error_of(unload)["message"]


def test_reading_again_a_learned_router_that_was_never_trained_says_so(trained_project: Path, monkeypatch) -> None:
    """POST /v1/adapters/router answered 200 "loaded" on a registry without a learned router: nothing was read,
    and the admin learned of it only when a request routed with it."""
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "s3cret")
    app = create_app(lambda: Engine.from_config(trained_project, tasks=["sentiment"], precision="fp32"))
    with TestClient(app) as http:
        response = http.post("/v1/adapters/router", headers={"Authorization": "Bearer s3cret"})
        assert response.status_code == 400, response.text
        assert "train it first with `mtlora train-router`" in error_of(response)["message"]
        assert http.get("/readyz").json() == {"ready": True, "tasks": ["sentiment"]}  # still serving as before

"""`beeray serve` (beeray/serve.py) against a real server on 127.0.0.1: Ray Serve with two API replicas
over one catalogue. The request parsers are tested first, without Ray."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

import beeray
from beeray.serve import MAX_BODY, ApiError, parse_body, parse_items, parse_recommend, parse_texts


def test_bad_requests_get_a_4xx_and_one_line():
    cases = [
        (lambda: parse_items({"items": [{"id": "a"}]}, 10), 400, "'text' must be a non-empty string"),
        (lambda: parse_items({"items": [{"id": "a", "text": "  "}]}, 10), 400, "non-empty string"),
        (lambda: parse_items({"items": [{"id": "", "text": "x"}]}, 10), 400, "an id must be"),
        (lambda: parse_items({"items": "a"}, 10), 400, "field 'items' must be list, got str"),
        (lambda: parse_items([1], 10), 400, "must be a JSON object"),
        (lambda: parse_items({"items": [{"id": str(j), "text": "x"} for j in range(11)]}, 10), 413, "limit is 10"),
        (lambda: parse_items({"items": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}, 10), 400, "twice"),
        (lambda: parse_recommend({"history": []}), 400, "'history' is empty"),
        (lambda: parse_recommend({"history": ["a"], "k": "5"}), 400, "field 'k' must be int, got str"),
        (lambda: parse_recommend({"history": ["a"], "k": 0}), 400, "'k' must be between 1"),
        (lambda: parse_recommend({"history": ["a"], "only_new": 1}), 400, "'only_new' must be bool"),
        (lambda: parse_texts({"texts": [""]}, 10), 400, "non-empty strings"),
        (lambda: parse_body(b"{", 100), 400, "not valid JSON"),
        (lambda: parse_body(b"x" * 101, 100), 413, "the limit is 100"),
    ]
    for call, status, words in cases:
        with pytest.raises(ApiError) as err:
            call()
        assert err.value.status == status and words in str(err.value) and "\n" not in str(err.value), words
    assert parse_recommend({"history": [1, "b"]}) == {"history": ["1", "b"], "k": 10, "exclude_history": True,
                                                      "only_new": False}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, method: str = "GET", body=None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def oversized(url: str, declare: bool) -> tuple[int, dict]:
    """POST a body one byte over the limit. Declared in Content-Length, only the headers are sent: the server
    answers before reading a body, and a client still sending one would race the connection's close (a reset).
    Undeclared (chunked), the whole body is sent and the server must count it as it reads."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        if declare:
            conn.putrequest("POST", "/v1/items")
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(MAX_BODY + 1))
            conn.endheaders()
        else:
            conn.request("POST", "/v1/items", body=iter([b" " * MAX_BODY, b" "]),
                         headers={"Content-Type": "application/json"}, encode_chunked=True)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def service(ray_session, shop, tiny_model_dir, tmp_path_factory):
    from ray import serve

    from beeray.serve import start

    catalog = tmp_path_factory.mktemp("serve") / "catalog"
    port = _free_port()
    url = start(str(tiny_model_dir), str(catalog), items=str(shop), port=port, replicas=2)
    yield {"url": url, "catalog": catalog, "port": port, "model": str(tiny_model_dir), "shop": shop}
    serve.shutdown()


@pytest.mark.slow
def test_the_service_scores_as_beeray_recommend_and_new_items_count_at_once(service):
    url = service["url"]
    assert call(f"{url}/healthz") == (200, {"ok": True})
    status, info = call(f"{url}/v1/info")
    assert status == 200 and info["size"] == 400 and info["version"] == 1
    history = ["b000-printer", "b001-toner"]
    status, got = call(f"{url}/v1/recommend", "POST", {"history": history, "k": 10})
    offline = beeray.recommend(history, k=10, model=service["model"], items=service["shop"])
    assert status == 200 and [i["id"] for i in got["items"]] == list(offline["item_id"])
    np.testing.assert_allclose([i["score"] for i in got["items"]], offline["score"], rtol=1e-5, atol=1e-7)
    # A new item with the text of the history's printer: recommendable in the next read, on any replica.
    texts = dict(zip(offline["item_id"], offline["text"]))
    printer = call(f"{url}/v1/recommend", "POST", {"history": ["b001-toner"], "k": 400, "exclude_history": False})
    printer_text = next(i["text"] for i in printer[1]["items"] if i["id"] == "b000-printer")
    for j in range(6):  # two replicas: every read, wherever it lands, sees the write acknowledged before it
        status, added = call(f"{url}/v1/items", "POST", {"items": [{"id": f"new-{j}", "text": printer_text}]})
        assert status == 200 and added["ids"] == [f"new-{j}"] and added["size"] == 401 + j
        status, got = call(f"{url}/v1/recommend", "POST", {"history": ["b000-printer"], "k": 3, "only_new": True})
        assert status == 200 and got["version"] >= added["version"] and got["items"][0]["id"].startswith("new-")
    assert texts  # the offline path gave texts too
    status, vec = call(f"{url}/v1/embed", "POST", {"texts": ["a red kettle", "toner"]})
    assert status == 200 and np.allclose(np.linalg.norm(vec["vectors"], axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_bad_requests_write_nothing(service):
    url = service["url"]
    before = call(f"{url}/v1/info")[1]["version"]
    bad = [
        ("/v1/recommend", {"history": ["no-such-item"]}, 404, "no item with id 'no-such-item'"),
        ("/v1/items", {"items": [{"id": "x"}]}, 400, "'text' must be"),
        ("/v1/items", {"items": [{"id": "x", "text": 5}]}, 400, "'text' must be"),
        ("/v1/items", {"items": [{"id": str(j), "text": "t"} for j in range(300)]}, 413, "limit is 256"),
        ("/v1/recommend", {"history": "b000-printer"}, 400, "must be list"),
    ]
    for path, body, status, words in bad:
        got = call(f"{url}{path}", "POST", body)
        assert got[0] == status and words in got[1]["error"], (path, got)
    declared = oversized(url, declare=True)
    assert declared[0] == 413 and f"the limit is {MAX_BODY:,}" in declared[1]["error"], declared
    chunked = oversized(url, declare=False)
    assert chunked[0] == 413 and f"the limit is {MAX_BODY:,}" in chunked[1]["error"], chunked
    assert call(f"{url}/v1/items/no-such-item", "DELETE")[0] == 404
    assert call(f"{url}/v1/info")[1]["version"] == before


@pytest.mark.slow
def test_concurrent_writers_to_one_id_and_a_killed_writer_lose_nothing(service):
    import ray

    url = service["url"]
    acknowledged: list[tuple[int, str]] = []

    def write(w: int) -> None:
        for j in range(5):
            text = f"writer {w} text {j}"
            status, done = call(f"{url}/v1/items", "POST", {"items": [{"id": "contested", "text": text}]})
            assert status == 200
            acknowledged.append((done["version"], text))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    versions = sorted(v for v, _ in acknowledged)
    assert len(set(versions)) == 10  # each write its own version
    last_text = max(acknowledged)[1]
    # The writer's replica dies: Serve replaces it, and it reopens the catalogue from disk.
    writers = [a for a in ray.util.list_named_actors(all_namespaces=True) if "writer" in a["name"]]
    assert writers, ray.util.list_named_actors(all_namespaces=True)
    ray.kill(ray.get_actor(writers[0]["name"], namespace=writers[0]["namespace"]), no_restart=True)
    deadline = time.time() + 120
    while True:
        status, info = call(f"{url}/v1/info")
        if status == 200 or time.time() > deadline:
            break
        time.sleep(1)
    assert status == 200 and info["version"] == versions[-1]
    status, got = call(f"{url}/v1/recommend", "POST", {"history": ["b000-printer"], "k": 500, "only_new": True})
    assert last_text in [i["text"] for i in got["items"] if i["id"] == "contested"]


@pytest.mark.slow
def test_a_restart_keeps_every_acknowledged_item(service):
    from ray import serve

    from beeray.serve import start

    url = service["url"]
    status, added = call(f"{url}/v1/items", "POST", {"items": [{"id": "kept", "text": "a printer that survives"}]})
    assert status == 200
    serve.shutdown()
    start(service["model"], str(service["catalog"]), items=str(service["shop"]), port=service["port"], replicas=2)
    status, info = call(f"{url}/v1/info")
    assert status == 200 and info["version"] == added["version"] and info["size"] == added["size"]
    status, got = call(f"{url}/v1/recommend", "POST", {"history": ["kept"], "k": 3})  # a known id (else 404)
    assert status == 200 and len(got["items"]) == 3 and got["version"] == added["version"]

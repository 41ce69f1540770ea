"""The Ray Serve app on the test session's real local Ray cluster, over real HTTP (127.0.0.1)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from mbta_ray.registry import Registry, evaluation_of
from mbta_ray.serve.schemas import PredictRequest, PredictResponse
from tests.test_registry import make_model
from tests.test_serve_inference import request_at_b

PORT = 8765
URL = f"http://127.0.0.1:{PORT}"
REPO = Path(__file__).resolve().parent.parent


#: Tests run exactly one model replica (the shipped two cost CI time, and a test that follows one
#: replica's state must not be answered by another); the kill test runs two.
ONE_REPLICA = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}


def _deploy(root, **args) -> None:
    from ray import serve

    from mbta_ray.serve.app import build

    # Without the live deployment (tests/test_live.py runs it): these tests follow the model replica.
    serve.run(
        build({"registry": str(root), **args}, ONE_REPLICA, live=False), name="mbta", route_prefix="/", blocking=False
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(f"{URL}/-/routes", timeout=2).status_code == 200 and requests.get(
                f"{URL}/healthz", timeout=5
            ).status_code in (200, 503):
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the Serve app did not come up")


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("serve")
    # The shipped HTTP options (timeouts included), on the test's port.
    shipped = yaml.safe_load((REPO / "serve_config.yaml").read_text())["http_options"]
    serve.start(http_options={**shipped, "port": PORT})
    _deploy(root)
    yield root
    serve.shutdown()


def body(**overrides) -> dict:
    return request_at_b(**overrides).model_dump(mode="json")


@contextmanager
def requests_flowing(threads: int, on_response: Callable[[requests.Response], None]):
    """``threads`` clients posting /predict back to back (each answer to ``on_response``) for the
    body of the with-block, plus a second before and after it."""
    stop = threading.Event()

    def load() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                on_response(s.post(f"{URL}/predict", json=body(), timeout=30))

    workers = [threading.Thread(target=load) for _ in range(threads)]
    for t in workers:
        t.start()
    try:
        time.sleep(1.0)
        yield
        time.sleep(1.0)
    finally:
        stop.set()
        for t in workers:
            t.join(timeout=60)


def test_without_a_model_the_api_says_503_with_a_reason(served):
    r = requests.get(f"{URL}/healthz", timeout=10)
    assert r.status_code == 503 and "no production model" in r.json()["detail"]
    assert str(served) not in r.text  # the reason, without the server's paths
    r = requests.post(f"{URL}/predict", json=body(), timeout=10)
    assert r.status_code == 503 and "run `make run`" in r.json()["detail"]
    assert requests.get(f"{URL}/model", timeout=10).status_code == 503


def test_predictions_over_http_match_offline_predictions(served, tmp_path):
    from mbta_ray.serve.inference import ModelRunner

    reg = Registry(served)
    model_dir = make_model(tmp_path / "m1", 100.0)
    version = reg.register(model_dir, evaluation=evaluation_of(model_dir))["version"]
    assert reg.promote(version).accepted
    _deploy(served, version=version)  # a new user_config: the replica reloads in place

    health = requests.get(f"{URL}/healthz", timeout=10).json()
    assert health == {"ready": True, "model_version": version}
    info = requests.get(f"{URL}/model", timeout=10).json()
    assert info["version"] == version and info["metrics"]["mae"] == 100.0 and info["family"] == "xgboost"

    r = requests.post(f"{URL}/predict", json=body(), timeout=30)
    assert r.status_code == 200, r.text
    got = r.json()
    (expected,) = ModelRunner(reg.fetch(version), version=version).predict([request_at_b()])
    assert got["model_version"] == version
    assert [p["predicted_travel_seconds"] for p in got["predictions"]] == [
        p.predicted_travel_seconds for p in expected.predictions
    ]

    batch = {
        "requests": [
            body(),
            body(
                stop_id="A",
                previous_stop=None,
                actual_arrival="2024-03-12T12:01:00Z",
                scheduled_arrival="2024-03-12T12:00:00Z",
            ),
        ]
    }
    r = requests.post(f"{URL}/predict/batch", json=batch, timeout=30)
    assert r.status_code == 200 and len(r.json()["responses"]) == 2
    assert r.json()["responses"][0]["predictions"] == got["predictions"]


@pytest.mark.parametrize(
    "payload, status, needle",
    [
        ({"route_id": "Red"}, 422, "stops_ahead"),
        ("not json", 422, "JSON"),
        ({"__body__": "x" * 1_100_000}, 413, "limit"),
    ],
)
def test_bad_payloads_get_4xx_naming_the_problem(served, payload, status, needle):
    if isinstance(payload, dict) and "__body__" in payload:
        r = requests.post(
            f"{URL}/predict", data=payload["__body__"], timeout=10, headers={"content-type": "application/json"}
        )
    elif isinstance(payload, str):
        r = requests.post(f"{URL}/predict", data=payload, timeout=10, headers={"content-type": "application/json"})
    else:
        r = requests.post(f"{URL}/predict", json=payload, timeout=10)
    assert r.status_code == status and needle in r.text, r.text
    bad = body()
    bad["actual_arrival"] = "2024-03-12T12:06:30"  # no offset
    r = requests.post(f"{URL}/predict", json=bad, timeout=10)
    assert r.status_code == 422 and "actual_arrival" in r.text and "UTC offset" in r.text


def test_serve_config_matches_the_code(tmp_path):
    """serve_config.yaml is `serve build`'s output for the app, except the app name and the host."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parent.parent
    out = tmp_path / "built.yaml"
    subprocess.run(
        [str(Path(sys.executable).parent / "serve"), "build", "mbta_ray.serve.app:app", "-o", str(out)],
        cwd=repo,
        check=True,
        capture_output=True,
        timeout=120,
    )
    built, ours = yaml.safe_load(out.read_text()), yaml.safe_load((repo / "serve_config.yaml").read_text())
    assert ours["http_options"]["host"] == "127.0.0.1"
    (b_app,), (o_app,) = built["applications"], ours["applications"]
    assert o_app["name"] == "mbta"
    for key in ("route_prefix", "import_path", "deployments"):
        assert o_app[key] == b_app[key], key
    for key in ("proxy_location", "grpc_options", "logging_config"):
        assert ours[key] == built[key], key
    assert ours["http_options"]["port"] == built["http_options"]["port"]


def test_hot_reload_while_requests_flow(served, tmp_path):
    """Promote a new model and redeploy: every request in flight gets a 200, and the answers switch
    from the old version to the new one without a restart."""
    from mbta_ray.serve.app import deploy

    reg = Registry(served)
    if reg.production() is None:  # when run on its own
        first = make_model(tmp_path / "m1", 100.0)
        reg.promote(reg.register(first, evaluation=evaluation_of(first))["version"])
    old = deploy(str(served))
    model_dir = make_model(tmp_path / "m2", 50.0, rounds=12)
    new = reg.register(model_dir, evaluation=evaluation_of(model_dir))["version"]
    assert reg.promote(new).accepted and new != old

    seen, failures = [], []

    def record(r: requests.Response) -> None:
        (seen.append(r.json()["model_version"]) if r.status_code == 200 else failures.append(r.text))

    with requests_flowing(3, record):
        assert deploy(str(served)) == new
        deadline = time.time() + 60
        while time.time() < deadline and (not seen or seen[-1] != new):
            time.sleep(0.2)
    assert not failures, failures[:3]
    assert old in seen and seen[-1] == new
    assert requests.get(f"{URL}/healthz", timeout=10).json()["model_version"] == new


def _ensure_model(served, tmp_path) -> str:
    """The production model of the served registry (registered here when a test runs on its own)."""
    from mbta_ray.serve.app import deploy

    reg = Registry(served)
    if reg.production() is None:
        model_dir = make_model(tmp_path / "m-own", 100.0)
        reg.promote(reg.register(model_dir, evaluation=evaluation_of(model_dir))["version"])
    version = deploy(str(served))
    deadline = time.time() + 60
    while requests.get(f"{URL}/healthz", timeout=10).json().get("model_version") != version:
        assert time.time() < deadline, "the model did not load"
        time.sleep(0.3)
    return version


def test_inputs_the_model_cannot_handle_get_422_over_http(served, tmp_path):
    version = _ensure_model(served, tmp_path)
    r = requests.post(f"{URL}/predict", json=body(route_id="Purple"), timeout=10)
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "route_id"] and err["type"] == "unknown_route" and version in err["msg"]
    bad = body(stops_ahead=[{"stop_id": "C"}, {"stop_id": "nowhere"}])
    r = requests.post(f"{URL}/predict/batch", json={"requests": [body(), bad]}, timeout=10)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "requests", 1, "stops_ahead", 1, "stop_id"]
    # A batch of unknown stops answers a short list, as a batch of invalid bodies does (not megabytes).
    nowhere = body(stops_ahead=[{"stop_id": f"nowhere-{i}"} for i in range(20)])
    r = requests.post(f"{URL}/predict/batch", json={"requests": [nowhere] * 10}, timeout=10)
    detail = r.json()["detail"]
    assert r.status_code == 422 and len(detail) == 51, len(detail)
    assert detail[-1] == {"loc": ["body"], "type": "too_many_errors", "msg": "150 more errors"}


def test_openapi_docs_list_the_endpoints(served):
    assert requests.get(f"{URL}/docs", timeout=10).status_code == 200
    spec = requests.get(f"{URL}/openapi.json", timeout=10).json()
    assert {"/predict", "/predict/batch", "/healthz", "/model"} <= set(spec["paths"])
    assert "PredictRequest" in spec["components"]["schemas"]
    assert "422" in spec["paths"]["/predict"]["post"]["responses"]
    for path in ("/predict", "/predict/batch"):
        assert {"413", "422", "503"} <= set(spec["paths"][path]["post"]["responses"])
    for path in ("/healthz", "/model"):
        assert "503" in spec["paths"][path]["get"]["responses"]


def test_custom_metrics_reach_the_metrics_endpoint(served, ray_local, tmp_path):
    """The node's metrics agent (what the dashboard and Prometheus scrape) exports our metrics."""
    import re

    version = _ensure_model(served, tmp_path)
    assert requests.post(f"{URL}/predict", json=body(), timeout=30).status_code == 200
    assert requests.post(f"{URL}/predict", json={"route_id": "Red"}, timeout=30).status_code == 422
    port = ray_local.nodes()[0]["MetricsExportPort"]
    wanted = {
        "predictions": re.compile(r'^ray_mbta_predictions_total\{[^}]*model_version="' + re.escape(version)),
        "rejected": re.compile(r'^ray_mbta_rejected_requests_total\{[^}]*reason="validation"'),
        "model": re.compile(r'^ray_mbta_model_loaded\{[^}]*model_version="' + re.escape(version) + r'"[^}]*\} 1\.0'),
        "batch": re.compile(r"^ray_mbta_batch_size_count\{"),
    }
    deadline, missing = time.time() + 90, set(wanted)
    while missing and time.time() < deadline:  # exported every few seconds
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines()
        missing = {k for k, rx in wanted.items() if not any(rx.search(line) for line in text)}
        time.sleep(2)
    assert not missing, f"not exported: {missing}"


def _fuzz_bodies():
    """Arbitrary JSON, and valid bodies with fields replaced, dropped or added."""
    from hypothesis import strategies as st

    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(10**12), 10**12)
        | st.floats(allow_nan=False)
        | st.text(max_size=40)
        | st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
        | st.text(min_size=2_000, max_size=20_000)
        | st.sampled_from(
            [
                "9999-12-31T23:00:00-05:00",
                "0001-01-01T00:00:00+14:00",
                "2024-03-12T12:06:30+23:59",
                "\ud800",
                "2024-03-12T12:06:30Z",
                "2024-03-12T12:06:30",
                "nan",
                "-1",
                "1e309",
                "B",
                "tm-8316",
                "Red",
                "2099-01-01T00:00:00Z",
            ]
        )
    )
    anything = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=12,
    )
    base = body()
    fields = sorted(base) + ["stops_ahead.0.stop_id", "stops_ahead.0.scheduled_arrival", "previous_stop.stop_id"]

    @st.composite
    def mutated(draw):
        b = body()
        for _ in range(draw(st.integers(1, 3))):
            path = draw(st.sampled_from(fields)).split(".")
            parent = b
            for p in path[:-1]:
                # An earlier mutation may have replaced a container: walk only what is still there.
                if isinstance(parent, list):
                    parent = parent[int(p)] if p.isdigit() and int(p) < len(parent) else None
                else:
                    parent = parent.get(p)
                if not isinstance(parent, (dict, list)):
                    break
            else:
                if isinstance(parent, list) and not (path[-1].isdigit() and int(path[-1]) < len(parent)):
                    continue
                key = int(path[-1]) if isinstance(parent, list) else path[-1]
                if draw(st.booleans()) and isinstance(parent, dict):
                    parent.pop(key, None)
                else:
                    parent[key] = draw(anything)
        if draw(st.booleans()):
            b[draw(st.text(min_size=1, max_size=8))] = draw(anything)
        return b

    return mutated() | anything | st.builds(lambda rs: {"requests": rs}, st.lists(mutated(), max_size=3))


def test_fuzzed_bodies_never_get_a_5xx(served, tmp_path):
    from hypothesis import HealthCheck, given, settings

    _ensure_model(served, tmp_path)
    session = requests.Session()
    seen: dict[int, int] = {}

    @settings(
        max_examples=600,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(_fuzz_bodies())
    def check(payload):
        path = "/predict/batch" if isinstance(payload, dict) and "requests" in payload else "/predict"
        # Python's encoder writes NaN/Infinity, which the server's JSON parser accepts: fuzz those too.
        r = session.post(
            f"{URL}{path}", data=json.dumps(payload), timeout=30, headers={"content-type": "application/json"}
        )
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code < 500, (payload, r.status_code, r.text[:500])
        if r.status_code == 422:
            assert r.json()["detail"], r.text

    check()
    assert seen.get(422, 0) > 100 and sum(seen.values()) >= 600, seen


def test_a_killed_model_replica_costs_no_requests_and_comes_back(served, tmp_path):
    """ray.kill one of two model replicas while a bounded load runs: every request gets a 200 (the
    ingress retries on the other replica) and Serve starts a replacement."""
    import ray
    from ray import serve

    from mbta_ray.serve.app import build

    version = _ensure_model(served, tmp_path)
    two = {"autoscaling_config": {"min_replicas": 2, "max_replicas": 2}}
    serve.run(
        build({"registry": str(served), "version": version}, predictor_options=two, live=False),
        name="mbta",
        route_prefix="/",
        blocking=False,
    )

    def replicas() -> list[str]:
        return sorted(
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if "Predictor" in a["name"] and a["namespace"] == "serve"
        )

    def running() -> int:
        app = serve.status().applications["mbta"]
        return app.deployments["Predictor"].replica_states.get("RUNNING", 0)

    deadline = time.time() + 90
    while running() != 2 or len(replicas()) != 2:
        assert time.time() < deadline, serve.status()
        time.sleep(0.5)
    before = replicas()

    ok, failures = [0], []

    def record(r: requests.Response) -> None:
        if r.status_code == 200:
            ok[0] += 1
        else:
            failures.append((r.status_code, r.text[:300]))

    with requests_flowing(4, record):
        ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)
        deadline = time.time() + 90
        while time.time() < deadline and not (running() == 2 and len(replicas()) == 2 and replicas() != before):
            time.sleep(0.5)
    after = replicas()
    assert not failures, failures[:3]
    assert ok[0] > 20 and len(after) == 2 and before[0] not in after and running() == 2, (ok, before, after)
    _deploy(served, version=version)  # back to the default autoscaling for any later test


def test_smoke_checks_every_answer_and_scores_them(served, tmp_path):
    """`mbta-ray smoke`'s core over real HTTP: requests rebuilt from example rows as the ETL made them
    (previous stop included), every answer checked, MAE reported; a wrong version is caught."""
    from mbta_ray.features import compute_features, pair_events
    from mbta_ray.serve import smoke
    from tests.test_features import STOPS, events
    from tests.test_serve_inference import TRIP

    version = _ensure_model(served, tmp_path)
    rows = compute_features(pair_events(events(TRIP, service_date="2024-03-12"), k=3), STOPS)
    examples = smoke.examples_from_split(rows, 10)
    assert len(examples) == 3  # u = A, B, C
    at_b = next(e for e in examples if e.body["stop_id"] == "B")
    assert at_b.body["previous_stop"]["stop_id"] == "A" and [s["stop_id"] for s in at_b.body["stops_ahead"]] == [
        "C",
        "D",
    ]
    assert at_b.actual_travel == [330.0, 810.0]

    report = smoke.run(URL, examples, concurrency=2)
    assert report.passed, report.failures
    assert report.model_version == version and report.sent == 4 and report.predictions == 6  # 3 + 2 + 1 stops
    assert report.mae()["all"]["n"] == 6 and np.isfinite(report.mae()["all"]["mae"])

    answer = PredictResponse.model_validate(requests.post(f"{URL}/predict", json=at_b.body, timeout=30).json())
    assert smoke.check(at_b, answer, version) == []
    assert "expected 'v-other'" in smoke.check(at_b, answer, "v-other")[0]


def test_following_production_picks_up_a_promotion_without_a_redeploy(served, tmp_path):
    """version "production" (serve_config.yaml's, and the RayService's) re-reads the pointer: a model
    promoted by a pipeline run reaches the running replicas by itself."""
    reg = Registry(served)
    _ensure_model(served, tmp_path)
    _deploy(served, poll_s="1")
    before = requests.get(f"{URL}/healthz", timeout=10).json()["model_version"]
    model_dir = make_model(tmp_path / "m-follow", 10.0, rounds=7)
    new = reg.register(model_dir, evaluation=evaluation_of(model_dir))["version"]
    assert reg.promote(new).accepted and new != before
    deadline = time.time() + 60
    while requests.get(f"{URL}/healthz", timeout=10).json()["model_version"] != new:
        assert time.time() < deadline, "the promoted model was not picked up"
        time.sleep(0.5)
    r = requests.post(f"{URL}/predict", json=body(), timeout=30)
    assert r.status_code == 200 and r.json()["model_version"] == new


def test_concurrent_callers_each_get_their_own_answer(served, tmp_path):
    """Distinct requests (different stops, lengths, and one the model refuses) sent at once share
    Predictor batches: each caller gets the answer to its own request."""
    from concurrent.futures import ThreadPoolExecutor

    from mbta_ray.serve.inference import ModelRunner

    version = _ensure_model(served, tmp_path)
    runner = ModelRunner(Registry(served).fetch(version), version=version)
    variants = [
        body(),
        body(stops_ahead=[{"stop_id": "C"}]),
        body(
            stop_id="A",
            previous_stop=None,
            actual_arrival="2024-03-12T12:01:00Z",
            scheduled_arrival="2024-03-12T12:00:00Z",
            stops_ahead=[{"stop_id": "B"}, {"stop_id": "C"}, {"stop_id": "D"}],
        ),
        body(route_id="Purple"),
    ]
    payloads = [variants[i % len(variants)] for i in range(48)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda p: requests.post(f"{URL}/predict", json=p, timeout=60), payloads))
    for payload, r in zip(payloads, answers):
        if payload["route_id"] == "Purple":
            assert r.status_code == 422 and r.json()["detail"][0]["type"] == "unknown_route", r.text
            continue
        assert r.status_code == 200, r.text
        (expected,) = runner.predict([PredictRequest.model_validate(payload)])
        got = r.json()
        assert got["stop_id"] == payload["stop_id"]
        assert [p["stop_id"] for p in got["predictions"]] == [s["stop_id"] for s in payload["stops_ahead"]]
        assert [p["predicted_travel_seconds"] for p in got["predictions"]] == [
            p.predicted_travel_seconds for p in expected.predictions
        ]


def _raw_post(path: str, text: str, **kwargs) -> requests.Response:
    return requests.post(
        f"{URL}{path}", data=text.encode("utf-8"), timeout=30, headers={"content-type": "application/json"}, **kwargs
    )


def test_the_body_limit_counts_bytes_received_even_when_chunked(served):
    """Transfer-Encoding: chunked has no Content-Length: the limit holds on the bytes that arrive."""

    def chunks(total: int):
        payload = json.dumps({**body(), "trip_id": "x" * total}).encode()
        for i in range(0, len(payload), 64 * 1024):
            yield payload[i : i + 64 * 1024]

    for size in (2 << 20, 16 << 20):
        r = requests.post(f"{URL}/predict", data=chunks(size), timeout=60, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "limit" in r.text, (size, r.status_code, r.text[:300])
    small = requests.post(f"{URL}/predict", data=chunks(10), timeout=30, headers={"content-type": "application/json"})
    assert small.status_code in (200, 503), small.text[:300]  # within the limit: answered (503 without a model)


def test_errors_echo_only_a_short_excerpt_of_the_input(served):
    """A 900 KB field or a 3,000-request batch gets a 422 of a few KB, not the input back."""
    r = _raw_post("/predict", json.dumps({**body(), "trip_id": "y" * 900_000}))
    assert r.status_code == 422 and "trip_id" in r.text and len(r.content) < 5_000, len(r.content)
    assert "900,000 characters" in r.text
    tiny = {"route_id": "Red"}
    r = _raw_post("/predict/batch", json.dumps({"requests": [tiny] * 3_000}))
    assert r.status_code == 422 and len(r.content) < 20_000, len(r.content)
    assert "more errors" in r.text or "more items" in r.text


def test_a_body_that_is_not_utf8_gets_a_4xx(served):
    r = requests.post(f"{URL}/predict", data=b"\xff\xfe{" * 50, timeout=10, headers={"content-type": "text/plain"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])


@pytest.mark.parametrize(
    "where, value",
    [
        ("trip_id", "\\ud800"),
        ("extra_key", "\\udfff"),
        ("actual_arrival", "9999-12-31T23:00:00-05:00"),
        ("stops_ahead.0.scheduled_arrival", "9999-12-31T23:00:00-05:00"),
        ("previous_stop.actual_arrival", "9999-12-31T23:00:00-05:00"),
        ("previous_stop.scheduled_arrival", "9999-12-31T23:00:00-05:00"),
        ("previous_stop.scheduled_arrival", "2024-03-15T12:00:00Z"),  # days away: outside the 6 h window
    ],
)
def test_surrogates_and_extreme_times_get_a_422_not_a_500(served, where, value):
    payload = body()
    payload["previous_stop"] = {"stop_id": payload["stop_id"] + "x", "actual_arrival": payload["actual_arrival"]}
    if where == "extra_key":
        text = json.dumps(payload)[:-1] + ', "\\udfff": 1}'
    else:
        parts = where.split(".")
        parent = payload
        for p in parts[:-1]:
            parent = parent[int(p)] if p.isdigit() else parent[p]
        parent[parts[-1]] = "@@VALUE@@"
        text = json.dumps(payload).replace('"@@VALUE@@"', f'"{value}"')
    r = _raw_post("/predict", text)
    assert r.status_code == 422, (where, r.status_code, r.text[:300])
    assert r.json()["detail"], r.text


#: A loop route: the trip passes B twice (sequences 20 and 40), as bus loops in the test split do.
LOOP = [
    ("A", 10, "2024-03-12T12:01:00Z", "2024-03-12T12:00:00Z"),
    ("B", 20, "2024-03-12T12:06:30Z", "2024-03-12T12:05:00Z"),
    ("C", 30, "2024-03-12T12:12:00Z", "2024-03-12T12:10:00Z"),
    ("B", 40, "2024-03-12T12:18:00Z", "2024-03-12T12:15:00Z"),
    ("A", 50, "2024-03-12T12:25:00Z", "2024-03-12T12:20:00Z"),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smoke_passes_on_a_loop_route_whatever_the_sample(served, tmp_path, seed):
    """The API answers what the ETL trains on: stops ahead that revisit u or repeat, by position."""
    from mbta_ray.features import compute_features, pair_events
    from mbta_ray.serve import smoke
    from tests.test_features import STOPS, events

    version = _ensure_model(served, tmp_path)
    rows = compute_features(pair_events(events(LOOP, service_date="2024-03-12"), k=4), STOPS)
    examples = smoke.examples_from_split(rows, 10, seed=seed)
    assert len(examples) == 4  # one per visit: A, B (20), C, B (40)
    first_b = next(e for e in examples if e.body["stop_sequence"] == 20)
    assert [s["stop_id"] for s in first_b.body["stops_ahead"]] == ["C", "B", "A"]  # u itself, ahead
    report = smoke.run(URL, examples, concurrency=2)
    assert report.passed, report.failures
    assert report.model_version == version and report.sent == 5


def test_a_broken_production_pointer_degrades_the_service_instead_of_taking_it_down(served, tmp_path):
    """production.json pointing at a version whose file fails its checksum: running replicas keep
    their model and say `degraded`; a replica started now falls back to the last promoted version
    that verifies, so requests still get 200s."""
    import json as _json
    from pathlib import Path

    reg = Registry(served)
    good = _ensure_model(served, tmp_path)
    _deploy(served, poll_s="1")  # follow the pointer, re-read every second
    bad_dir = make_model(tmp_path / "m-bad", 50.0, rounds=6)
    bad = reg.register(bad_dir, evaluation=evaluation_of(bad_dir))["version"]
    (Path(reg.base) / bad / "model.ubj").write_bytes(b"tampered")
    pointer = Path(reg.base) / "production.json"
    record = _json.loads(pointer.read_text())
    pointer.write_text(_json.dumps({**record, "version": bad}))  # edited by hand: promote would refuse

    def health() -> dict:
        return requests.get(f"{URL}/healthz", timeout=10).json()

    deadline = time.time() + 60
    while health().get("status") != "degraded":
        assert time.time() < deadline, health()
        time.sleep(0.5)
    h = health()
    assert h["ready"] and h["model_version"] == good and bad in h["detail"] and "CorruptModel" in h["detail"]
    assert str(served) not in h["detail"]
    assert requests.post(f"{URL}/predict", json=body(), timeout=30).status_code == 200

    # New replicas (other actor options: Serve replaces them), nothing loaded, the pointer still broken.
    from ray import serve

    from mbta_ray.serve.app import build

    options = {**ONE_REPLICA, "ray_actor_options": {"num_cpus": 0.45}}
    serve.run(
        build({"registry": str(served), "poll_s": "1"}, options, live=False),
        name="mbta",
        route_prefix="/",
        blocking=False,
    )
    deadline = time.time() + 90
    while health().get("model_version") != good:
        assert time.time() < deadline, health()
        time.sleep(0.5)
    assert health()["status"] == "degraded"
    assert requests.post(f"{URL}/predict", json=body(), timeout=30).status_code == 200

    pointer.write_text(_json.dumps(record))  # repaired: back to ok
    deadline = time.time() + 60
    while health().get("status", "ok") != "ok":
        assert time.time() < deadline, health()
        time.sleep(0.5)
    _deploy(served)


def _seconds_until_closed(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """Read until the server closes the connection (or ``limit`` passes): (seconds, what it sent)."""
    start, got = time.monotonic(), b""
    sock.settimeout(limit)
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except TimeoutError:
        pass
    except ConnectionResetError:
        pass
    return time.monotonic() - start, got


def test_slow_bodies_and_idle_connections_are_cut_off(served):
    """The shipped timeouts hold on a real proxy: a body trickled (headers in, body never finished)
    gets a 408 after request_timeout_s; a keep-alive connection left idle is closed after
    keep_alive_timeout_s. Both run at once (the test costs ~10 s)."""
    http = yaml.safe_load((REPO / "serve_config.yaml").read_text())["http_options"]
    request_timeout, keep_alive = float(http["request_timeout_s"]), float(http["keep_alive_timeout_s"])
    results: dict[str, tuple[float, bytes]] = {}

    def slow_body() -> None:
        with socket.create_connection(("127.0.0.1", PORT), timeout=5) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
            sock.sendall(b'Content-Length: 1000\r\n\r\n{"route_id": ')
            results["slow"] = _seconds_until_closed(sock, request_timeout + 20)

    def idle() -> None:
        with socket.create_connection(("127.0.0.1", PORT), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            first = b""
            while b"\r\n\r\n" not in first:
                first += sock.recv(65536)
            head, _, rest = first.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            while len(rest) < length:
                rest += sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 "), head[:100]  # 200, or 503 before a model is loaded
            results["idle"] = _seconds_until_closed(sock, keep_alive + 20)

    threads = [threading.Thread(target=slow_body), threading.Thread(target=idle)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=request_timeout + 40)
    waited, answer = results["slow"]
    assert request_timeout - 1 <= waited <= request_timeout + 10 and answer.startswith(b"HTTP/1.1 408"), (
        waited,
        answer[:200],
    )
    waited, extra = results["idle"]
    assert keep_alive - 1 <= waited <= keep_alive + 10 and extra == b"", (waited, extra[:200])


def test_ray_and_serve_listen_on_loopback_only(served, ray_local):
    """Under `make run`, `make serve` and the tests, every port the Ray node opens (GCS, raylet,
    dashboard and its agent, the metrics exporters, Serve's proxy) is bound to 127.0.0.1: nothing
    another machine can reach, and the metrics endpoint is still there on 127.0.0.1."""
    import psutil

    ours = {os.getpid()}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "ray" in cmdline and ("session_" in cmdline or "ray::" in cmdline or "/ray/" in cmdline):
            ours.add(proc.info["pid"])
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in ours]
    node = ray_local.nodes()[0]
    ports = {c.laddr.port for c in listening}
    assert node["MetricsExportPort"] in ports and PORT in ports, (sorted(ports), node["MetricsExportPort"])
    exposed = [c for c in listening if not ipaddress.ip_address(c.laddr.ip.removeprefix("::ffff:")).is_loopback]
    # The one exception Ray leaves no way around: each Serve replica's inter-deployment gRPC server
    # is bound to [::]:0 in ray/serve/_private/replica.py (README, Limits).
    replica_grpc = [c for c in exposed if psutil.Process(c.pid).name().startswith("ray::ServeReplica")]
    assert all(c.laddr.ip == "::" for c in replica_grpc), replica_grpc
    assert exposed == replica_grpc, [(c.laddr, psutil.Process(c.pid).name()) for c in exposed]
    assert requests.get(f"http://127.0.0.1:{node['MetricsExportPort']}/metrics", timeout=10).status_code == 200

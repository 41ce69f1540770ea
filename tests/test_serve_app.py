"""The Ray Serve app on the test session's real local Ray cluster, over real HTTP (127.0.0.1)."""

from __future__ import annotations

import time

import pytest
import requests

from mbta_ray.registry import Registry, evaluation_of
from tests.test_registry import make_model
from tests.test_serve_inference import request_at_b

PORT = 8765
URL = f"http://127.0.0.1:{PORT}"


def _deploy(root, **args) -> None:
    from ray import serve

    from mbta_ray.serve.app import build

    serve.run(build({"registry": str(root), **args}), name="mbta", route_prefix="/", blocking=False)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(f"{URL}/-/routes", timeout=2).status_code == 200 and \
                    requests.get(f"{URL}/healthz", timeout=5).status_code in (200, 503):
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the Serve app did not come up")


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    from ray import serve

    root = tmp_path_factory.mktemp("serve")
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    _deploy(root)
    yield root
    serve.shutdown()


def body(**overrides) -> dict:
    return request_at_b(**overrides).model_dump(mode="json")


def test_without_a_model_the_api_says_503_with_a_reason(served):
    r = requests.get(f"{URL}/healthz", timeout=10)
    assert r.status_code == 503 and "no production model" in r.json()["detail"]
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
    assert [p["predicted_travel_seconds"] for p in got["predictions"]] == \
        [p.predicted_travel_seconds for p in expected.predictions]

    batch = {"requests": [body(), body(stop_id="A", previous_stop=None, actual_arrival="2024-03-12T12:01:00Z",
                                      scheduled_arrival="2024-03-12T12:00:00Z")]}
    r = requests.post(f"{URL}/predict/batch", json=batch, timeout=30)
    assert r.status_code == 200 and len(r.json()["responses"]) == 2
    assert r.json()["responses"][0]["predictions"] == got["predictions"]


@pytest.mark.parametrize("payload, status, needle", [
    ({"route_id": "Red"}, 422, "stops_ahead"),
    ("not json", 422, "JSON"),
    ({"__body__": "x" * 300_000}, 413, "limit"),
])
def test_bad_payloads_get_4xx_naming_the_problem(served, payload, status, needle):
    if isinstance(payload, dict) and "__body__" in payload:
        r = requests.post(f"{URL}/predict", data=payload["__body__"], timeout=10,
                          headers={"content-type": "application/json"})
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
    subprocess.run([str(Path(sys.executable).parent / "serve"), "build", "mbta_ray.serve.app:app", "-o", str(out)],
                   cwd=repo, check=True, capture_output=True, timeout=120)
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
    import threading

    from mbta_ray.serve.app import deploy

    reg = Registry(served)
    if reg.production() is None:  # when run on its own
        first = make_model(tmp_path / "m1", 100.0)
        reg.promote(reg.register(first, evaluation=evaluation_of(first))["version"])
    old = deploy(str(served))
    model_dir = make_model(tmp_path / "m2", 50.0, rounds=12)
    new = reg.register(model_dir, evaluation=evaluation_of(model_dir))["version"]
    assert reg.promote(new).accepted and new != old

    seen, failures, stop = [], [], threading.Event()

    def load() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                r = s.post(f"{URL}/predict", json=body(), timeout=30)
                (seen.append(r.json()["model_version"]) if r.status_code == 200 else failures.append(r.text))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        assert deploy(str(served)) == new
        deadline = time.time() + 60
        while time.time() < deadline and (not seen or seen[-1] != new):
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not failures, failures[:3]
    assert old in seen and seen[-1] == new
    assert requests.get(f"{URL}/healthz", timeout=10).json()["model_version"] == new

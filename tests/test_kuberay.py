"""KubeRay manifests: every check passes on the repo's manifests, and each one fails on a broken one
(no API server runs here; kuberay/check.py is what CI runs)."""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "kuberay"))

import check  # noqa: E402  (kuberay/check.py)


@pytest.fixture(scope="module")
def resources():
    return check.manifests()


def _doc(resources, kind: str) -> dict:
    return copy.deepcopy(next(d for docs in resources.values() for d in docs if d.get("kind") == kind))


def test_the_manifests_pass_every_check(resources):
    kinds = {d["kind"] for docs in resources.values() for d in docs}
    assert {"RayCluster", "RayJob", "RayService", "PersistentVolumeClaim", "ServiceAccount"} <= kinds
    results = check.run_all()
    failed = {k: v for k, v in results.items() if v and not v[0].startswith("(")}
    assert not failed, failed


def test_yamllint_rejects_bad_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: ConfigMap\nkind: Secret\ndata:\n  - a\n  -   b\n")
    errors = check.check_yamllint([bad])
    assert any("bad.yaml:3:1: duplication of key" in e for e in errors), errors
    assert any("bad.yaml:6" in e for e in errors), errors


@pytest.mark.parametrize(
    "kind, path, value, needle",
    [
        (
            "RayService",
            ["spec", "rayClusterConfig", "headGroupSpec", "rayStartParam"],
            {"num-cpus": "0"},
            "'rayStartParam' was unexpected",
        ),
        (
            "RayJob",
            ["spec", "rayClusterSpec", "workerGroupSpecs", 0, "maxReplicas"],
            "four",
            "'four' is not of type 'integer'",
        ),
        ("RayJob", ["spec", "shutdownAfterJobFinish"], True, "'shutdownAfterJobFinish' was unexpected"),
        (
            "RayCluster",
            ["spec", "headGroupSpec", "template", "spec", "containers", 0, "resources", "limit"],
            {"cpu": 1},
            "'limit' was unexpected",
        ),
    ],
)
def test_crd_schemas_reject_unknown_fields_and_wrong_types(resources, kind, path, value, needle):
    doc = _doc(resources, kind)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    errors = check.validate_ray_resource(doc, "test")
    assert any(needle in e for e in errors), errors
    assert all(e.startswith(f"test: {kind}/") for e in errors)


def test_a_missing_required_field_is_an_error_but_a_defaulted_one_is_not(resources):
    doc = _doc(resources, "RayCluster")
    del doc["spec"]["headGroupSpec"]["template"]
    assert any("'template' is a required property" in e for e in check.validate_ray_resource(doc, "test"))
    schema = check._strict(
        {
            "type": "object",
            "required": ["a", "b"],
            "properties": {"a": {"type": "string"}, "b": {"type": "integer", "default": 1}},
        }
    )
    assert schema["required"] == ["a"] and schema["additionalProperties"] is False


def test_builtin_kinds_are_checked_strictly(resources):
    pvc = _doc(resources, "PersistentVolumeClaim")
    assert check.validate_builtin(pvc, "test") == []
    pvc["spec"]["accessMode"] = ["ReadWriteOnce"]
    errors = check.validate_builtin(pvc, "test")
    assert errors and "accessMode" in errors[0], errors


def test_serve_config_v2_is_validated_and_kept_equal_to_serve_config_yaml(resources):
    svc = _doc(resources, "RayService")
    config = yaml.safe_load(svc["spec"]["serveConfigV2"])

    def errors_with(mutate) -> list[str]:
        c = copy.deepcopy(config)
        mutate(c)
        broken = copy.deepcopy(svc)
        broken["spec"]["serveConfigV2"] = yaml.safe_dump(c)
        return check.check_serve_config({"test": [broken]})

    assert errors_with(lambda c: None) == []
    bounds = errors_with(
        lambda c: c["applications"][0]["deployments"][0]["autoscaling_config"].update(min_replicas=5, max_replicas=2)
    )
    assert bounds and "serveConfigV2" in bounds[0] and "max_replicas" in bounds[0], bounds
    wrong = errors_with(lambda c: c["applications"][0]["deployments"][0].update(max_ongoing_requests="many"))
    assert wrong and "max_ongoing_requests" in wrong[0], wrong
    drift = errors_with(lambda c: c["applications"][0]["deployments"][1].update(max_ongoing_requests=7))
    assert drift == [
        f"test: RayService/{svc['metadata']['name']}: spec.serveConfigV2: applications differs "
        "from serve_config.yaml (run `python kuberay/render.py`)"
    ], drift


def test_versions_must_match_the_pinned_ray(resources):
    ray = check.pinned_ray_version()
    job = _doc(resources, "RayJob")
    assert check.check_versions({"test": [job]}) == []
    job["spec"]["rayClusterSpec"]["rayVersion"] = "2.59.0"
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] = "mbta-ray:2.59.0"
    errors = check.check_versions({"test": [job]})
    assert any(f"rayVersion '2.59.0', pinned ray is {ray}" in e for e in errors), errors
    assert any("image tag '2.59.0'" in e for e in errors), errors


def test_generated_files_must_be_current():
    target = REPO / "kuberay" / "base" / "rayservice.yaml"
    original = target.read_text()
    try:
        target.write_text(original.replace("excludeHeadPodFromServeSvc: true", "excludeHeadPodFromServeSvc: false"))
        errors = check.check_rendered()
        assert errors and "rayservice.yaml" in errors[0] and "render.py" in errors[0], errors
    finally:
        target.write_text(original)
    assert check.check_rendered() == []


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_fails_on_a_broken_overlay(tmp_path):
    overlay = tmp_path / "overlays" / "broken"
    shutil.copytree(REPO / "kuberay" / "base", tmp_path / "base")
    overlay.mkdir(parents=True)
    (overlay / "kustomization.yaml").write_text(
        "resources:\n  - ../../base\npatches:\n  - path: missing-patch.yaml\n    target: {kind: RayJob}\n"
    )
    out = check.kustomize(overlay)
    assert isinstance(out, str) and "missing-patch.yaml" in out, out
    good = check.kustomize("minikube")
    assert isinstance(good, list) and {d["kind"] for d in good} >= {"RayJob", "RayService", "PersistentVolumeClaim"}


def test_ci_workflow_is_valid_and_consistent_with_the_makefile():
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "ci.yml").read_text())
    assert set(workflow["jobs"]) == {"test", "manifests", "image"}
    assert check.check_yamllint([REPO / ".github" / "workflows" / "ci.yml"]) == []
    makefile = (REPO / "Makefile").read_text()
    runs = [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]
    for target in (r.split()[1] for r in runs if r.startswith("make ")):
        assert f"\n{target}:" in makefile, f"ci.yml runs `make {target}`, which the Makefile lacks"
    assert "make test" in runs and "make test" in (REPO / ".ci" / "run").read_text()
    ray = check.pinned_ray_version()
    for entry in workflow["jobs"]["image"]["strategy"]["matrix"]["include"]:
        assert (REPO / entry["dockerfile"]).is_file() and entry["tag"].startswith(ray)
    for target in ("image", "image-gpu"):
        assert f"mbta-ray:{ray}" in makefile.split(f"\n{target}:")[1].split("\n\n")[0]

"""Manifest checks without a Kubernetes API server (make test runs them; CI runs `python kuberay/check.py`).

    python kuberay/check.py             # every check on the base and both overlays; exit 1 on any error

- yamllint on every YAML file under kuberay/ (``.yamllint`` beside this file).
- Strict JSON-schema validation of every RayCluster/RayJob/RayService against the KubeRay v1.7.0 CRDs
  vendored in ``crds/``: unknown fields are rejected (as kubeconform --strict does), and fields both
  required and defaulted count as optional (the API server fills defaults before validating).
- ``kubernetes-validate --strict`` for built-in kinds (PVC, ServiceAccount, ...).
- The RayService's ``serveConfigV2``: Ray's ``ServeDeploySchema`` and ``AutoscalingConfig``, and
  equal to ``serve_config.yaml`` except ``render.KUBERNETES_HTTP`` (host 0.0.0.0, keep-alive).
- Versions: the manifests' rayVersion, the image tags and the Dockerfiles' base images name the Ray
  version pinned in pyproject.toml.
- ``render.py --check`` (the generated files are current) and ``kubectl kustomize`` of each overlay
  where kubectl exists.
Each check returns a list of error strings naming the file, resource and field.
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from render import KUBERNETES_HTTP  # beside this file: what the cluster changes in the HTTP options

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CRDS = HERE / "crds"
OVERLAYS = ("minikube", "gke")
KUBERNETES_VERSION = "1.32.0"  # what the built-in kinds are checked against (GKE regular channel)
RAY_KINDS = ("RayCluster", "RayJob", "RayService")


# --- sources -------------------------------------------------------------------------------------


def pinned_ray_version() -> str:
    m = re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    if not m:
        raise ValueError("pyproject.toml: no pinned ray[...]==X.Y.Z dependency")
    return m.group(1)


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 1 MB each


def load_documents(path: Path) -> list[dict]:
    return [d for d in yaml.load_all(path.read_text(), Loader=_LOADER) if d]


def kustomize(overlay: str | Path) -> list[dict] | str:
    """An overlay's (name under overlays/, or a folder) rendered resources, or an error string."""
    folder = Path(overlay) if isinstance(overlay, Path) else HERE / "overlays" / overlay
    out = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        return f"{folder.name}: kubectl kustomize failed: {out.stderr.strip()[:500]}"
    return [d for d in yaml.load_all(out.stdout, Loader=_LOADER) if d]


def manifests() -> dict[str, list[dict]]:
    """Name -> resources: the base files, and each overlay's kustomize output where kubectl exists."""
    out = {
        f"base/{p.name}": load_documents(p)
        for p in sorted((HERE / "base").glob("*.yaml"))
        if p.name != "kustomization.yaml"
    }
    for overlay in OVERLAYS:
        for p in sorted((HERE / "overlays" / overlay).glob("*.yaml")):
            docs = load_documents(p)
            if (
                docs
                and isinstance(docs[0], dict)
                and "apiVersion" in docs[0]
                and docs[0].get("kind") != "Kustomization"
            ):
                out[f"overlays/{overlay}/{p.name}"] = docs
        if shutil.which("kubectl"):
            built = kustomize(overlay)
            if isinstance(built, list):
                out[f"overlays/{overlay} (kustomize)"] = built
    return out


# --- CRD schemas ---------------------------------------------------------------------------------


@functools.cache
def crd_schema(kind: str) -> dict:
    """The v1 openAPIV3Schema of a KubeRay kind, made strict (see module docstring)."""
    for path in CRDS.glob("ray.io_*.yaml"):
        crd = yaml.load(path.read_text(), Loader=_LOADER)
        if crd["spec"]["names"]["kind"] == kind:
            version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
            return _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    raise KeyError(f"no CRD for kind {kind} in {CRDS}")


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            defaulted = {k for k, v in props.items() if isinstance(v, dict) and "default" in v}
            if "required" in node:
                node["required"] = [r for r in node["required"] if r not in defaulted]
        for v in node.values():
            _strict(v)
    elif isinstance(node, list):
        for v in node:
            _strict(v)
    return node


def _path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(root)"


def validate_ray_resource(doc: dict, where: str) -> list[str]:
    import jsonschema

    kind = doc.get("kind")
    if doc.get("apiVersion") != "ray.io/v1":
        return [f"{where}: {kind} apiVersion {doc.get('apiVersion')!r}, expected 'ray.io/v1'"]
    validator = jsonschema.Draft7Validator(crd_schema(kind))
    name = (doc.get("metadata") or {}).get("name")
    return [
        f"{where}: {kind}/{name}: {_path(e)}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


def validate_builtin(doc: dict, where: str) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [
            f"{where}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}: "
            f"{'.'.join(map(str, exc.path)) or '(root)'}: {exc.message}"
        ]
    except kubernetes_validate.utils.SchemaNotFoundError as exc:
        return [f"{where}: {doc.get('kind')}: no schema in kubernetes {KUBERNETES_VERSION}: {exc}"]
    return []


# --- checks ------------------------------------------------------------------------------------


def check_yamllint(paths: Iterable[Path] | None = None) -> list[str]:
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig(file=str(HERE / ".yamllint"))
    paths = sorted(p for p in HERE.rglob("*.yaml") if CRDS not in p.parents) if paths is None else paths
    errors = []
    for p in paths:
        for problem in linter.run(p.read_text(), config, str(p)):
            if problem.level == "error":
                errors.append(
                    f"{p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}:{problem.line}:{problem.column}: "
                    f"{problem.desc} ({problem.rule})"
                )
    return errors


def check_schemas(resources: dict[str, list[dict]]) -> list[str]:
    errors = []
    for where, docs in resources.items():
        for doc in docs:
            if not isinstance(doc, dict) or "kind" not in doc:
                errors.append(f"{where}: a document without kind")
            elif doc["kind"] in RAY_KINDS:
                errors += validate_ray_resource(doc, where)
            else:
                errors += validate_builtin(doc, where)
    return errors


def check_serve_config(resources: dict[str, list[dict]]) -> list[str]:
    from pydantic import ValidationError
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    ours = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    errors, seen = [], 0
    for where, docs in resources.items():
        for doc in docs:
            if doc.get("kind") != "RayService":
                continue
            seen += 1
            name = f"{where}: RayService/{doc['metadata'].get('name')}: spec.serveConfigV2"
            try:
                config = yaml.safe_load(doc["spec"]["serveConfigV2"])
                ServeDeploySchema.model_validate(config)
                for app in config.get("applications", []):
                    for dep in app.get("deployments", []):
                        if "autoscaling_config" in dep:
                            AutoscalingConfig(**dep["autoscaling_config"])
            except (KeyError, yaml.YAMLError, ValidationError, ValueError, TypeError) as exc:
                errors.append(f"{name}: {exc}")
                continue
            expected = {**ours, "http_options": {**ours.get("http_options", {}), **KUBERNETES_HTTP}}
            for key in sorted(set(expected) | set(config)):
                if config.get(key) != expected.get(key):
                    errors.append(f"{name}: {key} differs from serve_config.yaml (run `python kuberay/render.py`)")
    if not seen:
        errors.append("no RayService found to check its serveConfigV2")
    return errors


def check_versions(resources: dict[str, list[dict]]) -> list[str]:
    ray = pinned_ray_version()
    errors = []
    for where, docs in resources.items():
        for doc in docs:
            if doc.get("kind") not in RAY_KINDS:
                continue
            text = yaml.safe_dump(doc)
            spec = doc.get("spec", {})
            cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec
            if str(cluster.get("rayVersion")) != ray:
                errors.append(f"{where}: {doc['kind']}: rayVersion {cluster.get('rayVersion')!r}, pinned ray is {ray}")
            for tag in re.findall(r"image: \S*mbta-ray:(\S+)", text):
                if not tag.startswith(ray):
                    errors.append(f"{where}: {doc['kind']}: image tag {tag!r} does not start with ray {ray}")
    for dockerfile in sorted(HERE.glob("Dockerfile*")):
        base = re.search(r"^FROM rayproject/ray:(\S+)", dockerfile.read_text(), re.M)
        if not base or not base.group(1).startswith(f"{ray}-"):
            errors.append(f"kuberay/{dockerfile.name}: base image {base.group(1) if base else None!r} is not ray {ray}")
    return errors


def check_rendered() -> list[str]:
    out = subprocess.run(
        [sys.executable, str(HERE / "render.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    return [] if out.returncode == 0 else [out.stderr.strip() or out.stdout.strip()]


def check_kustomize() -> list[str]:
    if not shutil.which("kubectl"):
        return []
    return [r for r in (kustomize(o) for o in OVERLAYS) if isinstance(r, str)]


def run_all() -> dict[str, list[str]]:
    resources = manifests()
    return {
        "yamllint": check_yamllint(),
        "schemas (KubeRay CRDs, kubernetes-validate)": check_schemas(resources),
        "serveConfigV2": check_serve_config(resources),
        "versions": check_versions(resources),
        "rendered files current": check_rendered(),
        "kubectl kustomize": check_kustomize() if shutil.which("kubectl") else ["(kubectl not found: skipped)"],
    }


def main() -> None:
    failed = False
    for name, errors in run_all().items():
        skipped = errors and errors[0].startswith("(")
        ok = not errors or skipped
        print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + errors[0] if skipped else ''}")
        for e in [] if ok else errors:
            print(f"     {e}")
        failed |= not ok
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

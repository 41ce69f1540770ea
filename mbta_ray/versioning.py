"""Versioned, immutable feature datasets: ``<root>/datasets/<name>/<version>/``.

A version is the hash of the inputs' checksums, the ETL config and the feature code version, so the
same inputs give the same version and a re-run is a no-op. A version folder is written under a
temporary name and renamed into place, so a crash mid-write never leaves a half version behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mbta_ray.errors import DataError, MbtaRayError
from mbta_ray.schema import FEATURE_CODE_VERSION

MANIFEST = "manifest.json"
_TMP_PREFIX = ".tmp-"


class VersionNotFound(MbtaRayError, LookupError):
    """No dataset version matches."""


def compute_version(
    input_checksums: list[tuple[str, str]], config: dict, code_version: str = FEATURE_CODE_VERSION
) -> str:
    """Content hash of (role/format, sha256) of every input, the config and the feature code version.

    File paths are left out on purpose: the same bytes moved elsewhere are the same dataset.
    """
    payload = json.dumps(
        {"inputs": sorted(input_checksums), "config": config, "feature_code_version": code_version},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def datasets_dir(root: str | Path, name: str) -> Path:
    # Absolute: Ray workers read and write these folders from their own working directory, which
    # is not the driver's when it joined a running cluster (RAY_ADDRESS).
    return Path(root).resolve() / "datasets" / name


def version_dir(root: str | Path, name: str, version: str) -> Path:
    return datasets_dir(root, name) / version


def exists(root: str | Path, name: str, version: str) -> bool:
    return (version_dir(root, name, version) / MANIFEST).is_file()


@dataclass(frozen=True)
class WriteResult:
    path: Path
    version: str
    created: bool  # False: the version already existed and nothing was written


def write_atomically(root: str | Path, name: str, version: str, write: Callable[[Path], None]) -> WriteResult:
    """Run ``write(tmp_dir)`` and move the result into place as ``version``, all or nothing.

    ``write`` must create everything, manifest last. If the version exists already, nothing runs.
    """
    final = version_dir(root, name, version)
    if exists(root, name, version):
        return WriteResult(final, version, created=False)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{_TMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        if not (tmp / MANIFEST).is_file():
            raise RuntimeError(f"dataset writer finished without writing {MANIFEST}")
        try:
            os.rename(tmp, final)  # atomic on one filesystem; fails if final now exists
        except OSError:
            if exists(root, name, version):  # a concurrent writer won: same content by construction
                shutil.rmtree(tmp, ignore_errors=True)
                return WriteResult(final, version, created=False)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return WriteResult(final, version, created=True)


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write manifest.json via a temp file + rename (the manifest marks a version as complete)."""
    tmp = folder / (MANIFEST + ".part")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str))
    os.replace(tmp, folder / MANIFEST)


def load_manifest(root: str | Path, name: str, version: str) -> dict:
    path = version_dir(root, name, version) / MANIFEST
    if not path.is_file():
        raise VersionNotFound(f"no dataset version {version!r} of {name!r} under {Path(root).resolve()}")
    return _read_manifest(path)


def _read_manifest(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON ({exc}); the dataset version is damaged: delete its folder and ingest again"
        ) from exc


def list_versions(root: str | Path, name: str | None = None) -> list[dict]:
    """Manifests of complete versions (temporary folders are ignored), newest first."""
    base = Path(root) / "datasets"
    names = [name] if name else sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    out = []
    for n in names:
        folder = datasets_dir(root, n)
        if not folder.is_dir():
            continue
        for child in folder.iterdir():
            if child.name.startswith(_TMP_PREFIX) or not (child / MANIFEST).is_file():
                continue
            out.append(_read_manifest(child / MANIFEST))
    return sorted(out, key=lambda m: m.get("created_at", ""), reverse=True)


def resolve(root: str | Path, version: str, name: str | None = None) -> tuple[str, str]:
    """Find (name, version) from a full version or a unique prefix of one."""
    matches = [(m["name"], m["version"]) for m in list_versions(root, name) if m["version"].startswith(version)]
    if not matches:
        raise VersionNotFound(f"no dataset version matching {version!r} under {Path(root).resolve()}")
    if len(set(matches)) > 1:
        raise VersionNotFound(f"version prefix {version!r} is ambiguous: {sorted(set(matches))}")
    return matches[0]

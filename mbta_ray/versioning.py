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

from mbta_ray.errors import ConfigError, DataError, MbtaRayError
from mbta_ray.schema import FEATURE_CODE_VERSION, SPLITS

MANIFEST = "manifest.json"
_TMP_PREFIX = ".tmp-"


class VersionNotFound(MbtaRayError, LookupError):
    """No dataset version matches."""


class DamagedVersion(DataError):
    """A version's manifest is unreadable or not the shape its readers need; the message names it."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path  # the manifest (optional: Ray re-creates errors from their message alone)


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


def _folder_name(value: str, what: str) -> str:
    """``value`` if it is one folder name (a user's dataset name or version becomes a path)."""
    if not value or value in (".", "..") or "/" in value or "\0" in value:
        raise ConfigError(f"invalid {what} {value[:80]!r}: one folder name, without '/' or '..'")
    return value


def datasets_dir(root: str | Path, name: str) -> Path:
    # Absolute: Ray workers read and write these folders from their own working directory, which
    # is not the driver's when it joined a running cluster (RAY_ADDRESS).
    return Path(root).resolve() / "datasets" / _folder_name(name, "dataset name")


def version_dir(root: str | Path, name: str, version: str) -> Path:
    return datasets_dir(root, name) / _folder_name(version, "dataset version")


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


def load_manifest(root: str | Path, name: str, version: str, *, complete: bool = False) -> dict:
    """A version's manifest, checked (``_check_manifest``; ``complete``: every count the ETL writes)."""
    path = version_dir(root, name, version) / MANIFEST
    if not path.is_file():
        raise VersionNotFound(f"no dataset version {version!r} of {name!r} under {Path(root).resolve()}")
    return _read_manifest(path, complete)


_DAMAGED = "the dataset version is damaged: delete its folder and ingest again"
#: Counts every manifest the ETL writes has (``etl._accounting``), and the per-split ones.
_COUNTS = ("rows_in", "rows_out", "quarantined", "trips", "examples", "examples_expected")
_SPLIT_COUNTS = ("trips_by_split", "examples_by_split")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_manifest(path: Path, complete: bool = False) -> dict:
    """The manifest at ``path``, or a ``DamagedVersion`` naming it (and the field) when it is not valid
    UTF-8 JSON or not the shape its readers index into."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DamagedVersion(f"{path}: not valid JSON ({exc}); {_DAMAGED}", path) from exc
    except OSError as exc:
        raise DamagedVersion(f"{path}: cannot be read ({exc.strerror or exc})", path) from exc
    problem = _check_manifest(manifest, path, complete)
    if problem:
        raise DamagedVersion(f"{path}: {problem}; {_DAMAGED}", path)
    return manifest


def _check_manifest(m: object, path: Path, complete: bool) -> str | None:
    """What is wrong with a manifest's shape, or None. Always: an object naming its own dataset and
    version (the folders it lies in), a created_at text and a ``counts`` object whose counts, where
    present, are counts. ``complete``: also every count and input that ``data list/show`` print."""
    if not isinstance(m, dict):
        return f"expected a JSON object, got {type(m).__name__}"
    for key, expected in (("name", path.parent.parent.name), ("version", path.parent.name)):
        if m.get(key) != expected:  # resolve() turns it into a folder: it must be this one
            return f"field {key!r} is {str(m.get(key))[:40]!r}, expected {expected!r} (its folder)"
    if not isinstance(m.get("created_at"), str):
        return "field 'created_at' missing or not text"
    counts = m.get("counts")
    if not isinstance(counts, dict):
        return "field 'counts' missing or not an object"
    for key in _COUNTS:
        if (key in counts or complete) and not _is_count(counts.get(key)):
            return f"field 'counts.{key}' missing or not a count"
    for key in _SPLIT_COUNTS:
        if key in counts or complete:
            by_split = counts.get(key)
            if not isinstance(by_split, dict) or not all(_is_count(by_split.get(s)) for s in SPLITS):
                return f"field 'counts.{key}' must map {', '.join(SPLITS)} to counts"
    reasons = counts.get("quarantined_by_reason", {} if not complete else None)
    if not isinstance(reasons, dict) or not all(_is_count(n) for n in reasons.values()):
        return "field 'counts.quarantined_by_reason' must map reasons to counts"
    inputs = m.get("inputs", [] if not complete else None)
    if not isinstance(inputs, list) or not all(
        isinstance(i, dict) and isinstance(i.get("format"), str) for i in inputs
    ):
        return "field 'inputs' must be a list of objects with a 'format'"
    return None


def list_versions(
    root: str | Path, name: str | None = None, *, damaged: list[DamagedVersion] | None = None, complete: bool = False
) -> list[dict]:
    """Manifests of complete versions (temporary folders are ignored), newest first.

    A damaged manifest raises its ``DamagedVersion``; with ``damaged`` it is appended there instead and
    left out, so one damaged version does not hide the others. ``complete``: as in ``load_manifest``.
    """
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
            try:
                out.append(_read_manifest(child / MANIFEST, complete))
            except DamagedVersion as exc:
                if damaged is None:
                    raise
                damaged.append(exc)
    return sorted(out, key=lambda m: m["created_at"], reverse=True)


def resolve(root: str | Path, version: str, name: str | None = None) -> tuple[str, str]:
    """Find (name, version) from a full version or a unique prefix of one. A damaged version is
    matched by its folder name, so naming it gives its error and naming another one still works."""
    damaged: list[DamagedVersion] = []
    matches = {
        (m["name"], m["version"]): None
        for m in list_versions(root, name, damaged=damaged)
        if m["version"].startswith(version)
    }
    for exc in damaged:
        if exc.path is not None and exc.path.parent.name.startswith(version):
            matches[(exc.path.parent.parent.name, exc.path.parent.name)] = exc
    if not matches:
        raise VersionNotFound(f"no dataset version matching {version!r} under {Path(root).resolve()}")
    if len(matches) > 1:
        raise VersionNotFound(f"version prefix {version!r} is ambiguous: {sorted(matches)}")
    ((found, exc),) = matches.items()
    if exc is not None:
        raise exc
    return found

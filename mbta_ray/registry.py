"""Model registry: ``<root>/registry/<model>/<version>/``, a ``production`` pointer and an audit log.

``root`` is a local folder or a URI that pyarrow.fs opens (``file://``, ``gs://``, ``s3://``; a
mounted volume is a local folder), so a RayJob on a cluster writes where a RayService reads.

- A version holds the packaged model files (safe formats only) and ``metadata.json``: family,
  params, metrics on a named test split, dataset version, code version, created_at and the sha256
  of every file. ``metadata.json`` is written last: a version without it is incomplete and ignored.
- ``production.json`` is the pointer and the deploy record the server reads (model, version,
  family, metrics, dataset, promoted_at). It is replaced in one step (temp file + rename locally, a
  single object write on object stores), so a crash mid-promotion leaves the old pointer intact.
- ``audit/`` gets one new JSON file per promotion decision (accepted, refused or forced); entries
  are never rewritten, so the log is append-only on every filesystem.
- Loading verifies every file's checksum: a corrupt or missing model file is refused by name.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from mbta_ray import evaluate, paths, versioning
from mbta_ray.defaults import METRIC_MODES
from mbta_ray.defaults import MODEL_NAME as DEFAULT_MODEL
from mbta_ray.errors import MbtaRayError
from mbta_ray.models import bundle
from mbta_ray.models.bundle import METADATA_FILE as METADATA
from mbta_ray.paths import sha256_file
from mbta_ray.schema import TARGET
from mbta_ray.storage import open_root

logger = logging.getLogger(__name__)

PRODUCTION = "production.json"
AUDIT_DIR = "audit"
#: What a version may hold: XGBoost UBJSON, JSON, parquet, and torch state dicts of plain tensors
#: (``.pt``, only ever loaded with ``torch.load(weights_only=True)``). Nothing that unpickles objects.
SAFE_SUFFIXES = (".ubj", ".json", ".parquet", ".pt", ".safetensors")


class RegistryError(MbtaRayError, RuntimeError):
    """A registry operation cannot go on; the message says what and where."""


class InvalidName(RegistryError, ValueError):
    """A model, version or file name that could escape the registry folder (separators, ``..``)."""


#: Model, version and file names: one path component, no separators, no leading dot, no "..".
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(value: object, what: str) -> str:
    """``value`` if it is a safe registry name, else ``InvalidName`` (the value is shown truncated)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or ".." in value:
        shown = repr(value)[:80] + ("..." if len(repr(value)) > 80 else "")
        raise InvalidName(
            f"invalid {what} {shown}: registry names are 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..'"
        )
    return value


class CorruptModel(RegistryError):
    """A model version's files are missing or do not match their recorded checksums."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Decision:
    """The outcome of ``promote``: what was decided and why (also the audit entry)."""

    accepted: bool
    candidate: str
    production_before: str | None
    metric: str
    candidate_value: float | None
    production_value: float | None
    forced: bool
    reason: str
    dataset: dict | None
    at: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _audit_problem(entry: object) -> str | None:
    """What is wrong with an audit entry's shape (the fields ``registry audit`` prints), or None."""
    if not isinstance(entry, dict):
        return f"expected a JSON object, got {type(entry).__name__}"
    for key in ("at", "candidate", "reason"):
        if not isinstance(entry.get(key), str):
            return f"field {key!r} missing or not text"
    for key in ("accepted", "forced"):
        if not isinstance(entry.get(key), bool):
            return f"field {key!r} missing or not true/false"
    if entry.get("production_before") is not None and not isinstance(entry["production_before"], str):
        return "field 'production_before' not text"
    return None


class Registry:
    """One logical model's versions under ``<root>/registry/<model>/``."""

    def __init__(self, root: str | Path, model: str = DEFAULT_MODEL, filesystem: pafs.FileSystem | None = None) -> None:
        """``filesystem``: use this pyarrow filesystem with ``root`` as a path in it (instead of
        resolving ``root`` as a URI), e.g. an fsspec filesystem wrapped in ``pafs.PyFileSystem``."""
        where = open_root(root, filesystem, what="registry root")
        self._root = where
        self.fs, self.root_uri, self.local = where.fs, where.uri, where.local
        self.model = check_name(model, "model name")
        self.base = where.path("registry", model)

    def __repr__(self) -> str:
        return f"Registry({self._root.name!r}, model={self.model!r})"

    # --- small filesystem helpers --------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def _exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def _read_json(self, path: str) -> dict:
        """A registry JSON document; a file edited by hand into anything but a JSON object is a
        ``CorruptModel`` (never a decode error). Its fields are checked by the readers that know
        them (``_read_metadata``, ``production``), so none fails with a KeyError further on."""
        try:
            with self.fs.open_input_stream(path) as f:
                data = json.loads(f.read().decode())
        except FileNotFoundError as exc:
            raise RegistryError(f"{path}: not found") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptModel(f"{path}: not valid JSON ({exc})") from exc
        except OSError as exc:
            raise CorruptModel(f"{path}: cannot be read ({exc})") from exc
        if not isinstance(data, dict):
            raise CorruptModel(f"{path}: not a JSON object")
        return data

    def _write_json_atomically(self, path: str, data: dict) -> None:
        """Temp file, then one rename (local) or one object write (object stores)."""
        self._root.write_bytes(path, json.dumps(data, indent=2, default=str).encode())

    # --- versions ------------------------------------------------------------------------------

    def register(self, model_dir: str | Path, *, evaluation: dict, extra: dict | None = None) -> dict:
        """Copy a packaged model folder in as a new version; returns its metadata.

        ``evaluation`` = {"dataset": {"name", "version"}, "split": "test", "metrics": {...overall},
        "by_mode": {...}} -- the numbers promotion compares.
        """
        model_dir = Path(model_dir)
        packaged = model_dir / METADATA
        if not packaged.is_file():
            raise RegistryError(f"{model_dir}: not a packaged model folder (no {METADATA})")
        files = {p.name: sha256_file(p) for p in sorted(model_dir.iterdir()) if p.is_file() and p.name != METADATA}
        unsafe = sorted(n for n in files if not n.endswith(SAFE_SUFFIXES))
        if unsafe:
            raise RegistryError(
                f"{model_dir}: refusing files that are not in a safe model format: {unsafe} "
                f"(allowed: {', '.join(SAFE_SUFFIXES)})"
            )
        content = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        created = _now()
        version = f"{created:%Y%m%dT%H%M%S}-{content[:8]}"
        meta = {**bundle.read_metadata(model_dir), **(extra or {})}
        meta.update(
            {
                "model": self.model,
                "version": version,
                "created_at": created.isoformat(),
                "code_version": paths.code_version(),
                "evaluation": evaluation,
                "files": files,
            }
        )
        folder = self._path(version)
        if self._exists(f"{folder}/{METADATA}"):
            raise RegistryError(f"{folder}: this version is already registered")
        self.fs.create_dir(folder, recursive=True)
        for name in files:
            with open(model_dir / name, "rb") as src, self.fs.open_output_stream(f"{folder}/{name}") as dst:
                dst.write(src.read())
        self._write_json_atomically(f"{folder}/{METADATA}", meta)  # last: marks the version complete
        return meta

    def _read_metadata(self, version: str) -> dict:
        """A version's ``metadata.json``, checked for the shape its readers index into (listing,
        fetching, promotion); a hand-damaged one is a ``CorruptModel`` naming the file and field."""
        path = self._path(version, METADATA)
        meta = self._read_json(path)
        problem = _metadata_problem(meta, version)
        if problem:
            raise CorruptModel(f"{path}: {problem}")
        return meta

    def versions(self, damaged: list[MbtaRayError] | None = None) -> list[dict]:
        """Metadata of complete versions, oldest first. A damaged version is left out (one broken
        version must not hide the others): its error goes to ``damaged`` if given, else to the log."""
        if not self._exists(self.base):
            return []
        out = []
        for info in self.fs.get_file_info(pafs.FileSelector(self.base)):
            if info.type == pafs.FileType.Directory and info.base_name != AUDIT_DIR:
                if self._exists(f"{info.path}/{METADATA}"):
                    try:
                        out.append(self._read_metadata(info.base_name))
                    except RegistryError as exc:
                        if damaged is None:
                            logger.warning("skipping %s: %s", info.path, exc)
                        else:
                            damaged.append(exc)
        return sorted(out, key=lambda m: m["created_at"])

    def metadata(self, version: str) -> dict:
        path = self._path(check_name(version, "version"), METADATA)
        if not self._exists(path):
            known = [m["version"] for m in self.versions()]
            raise RegistryError(f"{self}: no version {version!r} (known: {known[-5:] or 'none'})")
        return self._read_metadata(version)

    def fetch(self, version: str, cache: str | Path | None = None) -> Path:
        """A verified local folder of the version's files (the folder itself when the registry is
        local; else a copy under ``cache``). Raises ``CorruptModel`` naming a missing or altered file."""
        meta = self.metadata(version)
        files = meta.get("files") or {}
        if not files:
            raise CorruptModel(f"{self._path(version, METADATA)}: lists no model files")
        for name in files:  # a hand-edited metadata.json must not point outside the version
            check_name(name, f"file name in {self._path(version, METADATA)}")
        if self.local:
            folder = Path(self._path(version))
        else:
            folder = Path(cache or Path.home() / ".cache" / "mbta_ray" / "registry") / self.model / version
            folder.mkdir(parents=True, exist_ok=True)
            for name in files:
                try:
                    with self.fs.open_input_stream(self._path(version, name)) as src:
                        (folder / name).write_bytes(src.read())
                except FileNotFoundError as exc:
                    raise CorruptModel(f"{self._path(version, name)}: model file missing") from exc
            (folder / METADATA).write_text(json.dumps(meta, indent=2, default=str))
        for name, digest in files.items():
            path = folder / name
            if not path.is_file():
                raise CorruptModel(f"{self._path(version, name)}: model file missing")
            if sha256_file(path) != digest:
                raise CorruptModel(
                    f"{self._path(version, name)}: checksum mismatch (the file was altered or "
                    "truncated); refusing to load it"
                )
        return folder

    def load_predictor(self, version: str, cache: str | Path | None = None) -> bundle.Predictor:
        """The bundle's predictor, from a verified copy of the version."""
        folder = self.fetch(version, cache)
        try:
            return bundle.load_predictor(folder)
        except Exception as exc:  # a file that passes its checksum can still be the wrong kind
            raise CorruptModel(f"{self._path(version)}: cannot load the model: {exc}") from exc

    # --- production pointer and audit log ------------------------------------------------------

    def production(self) -> dict | None:
        """The deploy record of the production model, or None before the first promotion."""
        path = self._path(PRODUCTION)
        if not self._exists(path):
            return None
        record = self._read_json(path)
        if not isinstance(record.get("version"), str):
            raise CorruptModel(f"{path}: names no version")
        check_name(record["version"], f"version in {path}")  # a hand-edited path is no version
        return record

    def audit_log(self) -> list[dict]:
        folder = self._path(AUDIT_DIR)
        if not self._exists(folder):
            return []
        entries = []
        for info in self.fs.get_file_info(pafs.FileSelector(folder)):
            if info.base_name.endswith(".json"):
                try:
                    entry = self._read_json(info.path)
                    problem = _audit_problem(entry)
                    if problem:
                        raise RegistryError(f"{info.path}: {problem}")
                    entries.append(entry)
                except RegistryError as exc:  # one damaged entry must not hide the others
                    logger.warning("skipping audit entry %s: %s", info.path, exc)
        return sorted(entries, key=lambda e: e["at"])

    def _audit(self, decision: Decision) -> None:
        self.fs.create_dir(self._path(AUDIT_DIR), recursive=True)
        name = f"{decision.at.replace(':', '')}-{uuid.uuid4().hex[:8]}.json"
        with self.fs.open_output_stream(self._path(AUDIT_DIR, name)) as f:
            f.write(json.dumps(decision.as_dict(), indent=2, default=str).encode())

    def promote(
        self, version: str, *, metric: str = "mae", force: bool = False, reason: str | None = None, rescore=None
    ) -> Decision:
        """Make ``version`` production if it beats the current production model on ``metric`` over the
        same test split (or when forced, with a reason). Every decision goes to the audit log, before
        the pointer moves (a crash in between leaves a logged decision to re-run, never a silent switch).

        When production was scored on another dataset than the candidate, ``rescore(version, dataset)``
        must return production's metrics on the candidate's split; without it the promotion is refused.
        Promotions of one model are serialized (a lock locally; on object stores the pointer is re-read
        before the write and a concurrent change refuses this promotion).
        """
        try:
            check_name(version, "version")
            if metric not in METRIC_MODES:
                raise RegistryError(f"--metric must be one of {sorted(METRIC_MODES)}, got {metric!r}")
            if force and not (reason and reason.strip()):
                raise RegistryError('--force needs --reason "..." (it is written to the audit log)')
            with self._promotion_lock():
                return self._promote_locked(version, metric, force, reason, rescore)
        except RegistryError as exc:
            self._audit_refusal(version, metric, force, exc)
            raise

    def _audit_refusal(self, version: object, metric: str, force: bool, exc: RegistryError) -> None:
        """Every promotion request ends in the audit log: one refused with an error too."""
        try:
            before = (self.production() or {}).get("version")
        except RegistryError:
            before = None
        self._audit(
            Decision(
                accepted=False,
                candidate=repr(version)[1:-1][:200] if isinstance(version, str) else repr(version)[:200],
                production_before=before,
                metric=str(metric)[:40],
                candidate_value=None,
                production_value=None,
                forced=bool(force),
                reason=f"refused: {exc}"[:1000],
                dataset=None,
                at=_now().isoformat(),
            )
        )

    def _promote_locked(self, version: str, metric: str, force: bool, reason: str | None, rescore) -> Decision:
        cand = self.metadata(version)
        self.load_predictor(version)  # never promote a model that would not load: its checksums are not enough
        ev = cand.get("evaluation") or {}
        cand_value = _metric(ev.get("metrics", {}), metric)
        where = f"{(ev.get('dataset') or {}).get('version')} / {ev.get('split')}"
        try:
            prod = self.production()
            prod_ev = (self.metadata(prod["version"]).get("evaluation") or {}) if prod else {}
        except RegistryError as exc:  # a broken production record must not block a forced rollback
            if not force:
                raise RegistryError(
                    f"cannot read the production model ({exc}); use --force --reason to replace it"
                ) from exc
            prod, prod_ev, broken = None, {}, str(exc)
        else:
            broken = None
        prod_value, why = None, ""
        if prod is None:
            accepted, why = True, f"production record unreadable: {broken}" if broken else "no production model yet"
        elif prod["version"] == version and not force:
            accepted, why = False, f"{version} is already the production model"
        elif cand_value is None:
            accepted, why = False, f"the candidate has no {metric} on {where}"
        else:
            same_split = prod_ev.get("dataset") == ev.get("dataset") and prod_ev.get("split") == ev.get("split")
            if same_split:
                prod_value = _metric(prod_ev.get("metrics", {}), metric)
            elif rescore is not None and ev.get("dataset"):
                prod_value = _metric(rescore(prod["version"], ev["dataset"]) or {}, metric)
            if prod_value is None:
                accepted = False
                why = (
                    f"production {prod['version']} has no {metric} on {where}"
                    if same_split
                    else f"cannot compare: production {prod['version']} was scored on "
                    f"{(prod_ev.get('dataset') or {}).get('version')} and the candidate on {where}, and "
                    "production could not be re-scored there (is that dataset under --root?)"
                )
            else:
                better = cand_value < prod_value if METRIC_MODES[metric] == "min" else cand_value > prod_value
                accepted = bool(better)
                op = ("<" if better else ">=") if METRIC_MODES[metric] == "min" else (">" if better else "<=")
                why = f"candidate {metric} {cand_value:.3f} {op} production {metric} {prod_value:.3f} on {where}"
        if force:
            accepted, why = True, f"forced: {reason.strip()} (the gate said: {why})"
        decision = Decision(
            accepted=accepted,
            candidate=version,
            production_before=prod["version"] if prod else None,
            metric=metric,
            candidate_value=cand_value,
            production_value=prod_value,
            forced=bool(force),
            reason=why,
            dataset=ev.get("dataset"),
            at=_now().isoformat(),
        )
        switch = accepted and not (prod and prod["version"] == version)
        # Object stores have no lock: a pointer that moved since it was read is a refusal (audited as
        # such by promote), checked before the acceptance is audited, so the audit log never calls a
        # version promoted that never went live (serving's fallback trusts it).
        if switch and not self.local and (self.production() or {}).get("version") != (prod or {}).get("version"):
            raise RegistryError(f"production changed while promoting {version}; run the promotion again")
        self._audit(decision)
        if switch:
            self._write_json_atomically(
                self._path(PRODUCTION),
                {
                    "model": self.model,
                    "version": version,
                    "family": cand.get("family"),
                    "metrics": ev.get("metrics"),
                    "by_mode": ev.get("by_mode"),
                    "dataset": ev.get("dataset"),
                    "split": ev.get("split"),
                    "promoted_at": decision.at,
                    "forced": bool(force),
                    "registry": self._root.name,  # no URI query: it may hold keys
                    "path": self._path(version),
                },
            )
        return decision

    @contextlib.contextmanager
    def _promotion_lock(self):
        """An exclusive lock per model while deciding and switching (local registries). flock is
        released by the kernel when the holder dies, so a kill -9 never leaves a stale lock."""
        if not self.local:
            yield
            return
        os.makedirs(self.base, exist_ok=True)
        with open(self._path(".promote.lock"), "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def evaluation_of(model_dir: str | Path) -> dict:
    """The evaluation record of a packaged model folder, from the ``eval.json`` that ``tune`` (or
    ``distill``) wrote beside it: the model's test metrics overall and by mode, and the split."""
    model_dir = Path(model_dir)
    path, meta_path = model_dir / bundle.EVAL_FILE, model_dir / METADATA
    for p in (meta_path, path):
        if not p.is_file():
            raise RegistryError(
                f"{p}: missing; register a packaged, evaluated model folder "
                "(e.g. <experiment>/best or <distill>/student)"
            )
    try:
        ev, meta = bundle.read_evaluation(model_dir), bundle.read_metadata(model_dir)
    except bundle.BundleError as exc:
        raise RegistryError(str(exc)) from exc
    name = ev.get("model_name", meta.get("family"))
    entry = (ev.get("report") or {}).get(name)
    if not entry or "overall" not in entry:
        raise RegistryError(f"{path}: the report has no metrics for {name!r} (has {sorted(ev.get('report') or {})})")
    return {
        "dataset": meta.get("dataset"),
        "split": ev.get("split", "test"),
        "metrics": entry["overall"],
        "by_mode": entry.get("by_mode", {}),
        "baselines": {k: v["overall"] for k, v in ev["report"].items() if k != name and "overall" in v},
    }


def dataset_rescorer(reg: Registry, root: str | Path):
    """A ``rescore`` for ``promote``: a registry version's test metrics on a dataset under ``root``
    (None when that dataset is not there)."""

    def rescore(version: str, dataset: dict) -> dict | None:
        # Imported here: models.data imports Ray (~0.5 s), which the CLI's registry commands and
        # the serving replicas (that never rescore) should not pay at start-up.
        from mbta_ray.models.data import load_split_pandas

        try:
            test = load_split_pandas(root, dataset["version"], "test", dataset.get("name"))
        except (versioning.VersionNotFound, FileNotFoundError, KeyError):
            return None
        pred = reg.load_predictor(version)(test)
        return evaluate.metrics(pred, test[TARGET].to_numpy(dtype="float64"))

    return rescore


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _metadata_problem(meta: dict, version: str) -> str | None:
    """What is wrong with a version's metadata (as ``register`` writes it), or None."""
    if meta.get("version") != version:  # listed and promoted by this name: it must be its folder's
        return f"field 'version' is {str(meta.get('version'))[:40]!r}, expected {version!r} (its folder)"
    if not isinstance(meta.get("created_at"), str):
        return "field 'created_at' missing or not text"
    if not isinstance(meta.get("family", ""), str):
        return "field 'family' is not text"
    files = meta.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return "field 'files' missing or not an object of file name -> sha256"
    ev = meta.get("evaluation")
    if not isinstance(ev, dict):
        return "field 'evaluation' missing or not an object"
    for key in ("metrics", "by_mode", "dataset"):
        if not isinstance(ev.get(key) or {}, dict):
            return f"field 'evaluation.{key}' is not an object"
    bad = [k for k, v in (ev.get("metrics") or {}).items() if v is not None and not _is_number(v)]
    if bad:
        return f"field 'evaluation.metrics.{bad[0]}' is not a number"
    if not isinstance(ev.get("split", ""), str):
        return "field 'evaluation.split' is not text"
    return None


def _metric(metrics: dict, name: str) -> float | None:
    if name == "bias_abs":
        v = metrics.get("bias")
        v = abs(v) if v is not None else None
    else:
        v = metrics.get(name)
    return float(v) if v is not None and math.isfinite(float(v)) else None

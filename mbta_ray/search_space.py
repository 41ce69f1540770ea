"""Search spaces from ``mbta_ray/configs/tune.yaml`` (configuration apart from code), for BayesOptSearch.

BayesOptSearch only takes uniform float domains, so log-scaled parameters are searched as
``log10_<name>`` and integers as floats; ``decode`` turns a proposed point back into parameters.
"""

from __future__ import annotations

import math
import reprlib
from pathlib import Path

import yaml
from ray import tune

from mbta_ray.errors import ConfigError
from mbta_ray.paths import DEFAULT_TUNE_SPACE as DEFAULT_CONFIG
from mbta_ray.schema import NUMERIC_FEATURES

_LOG = "log10_"


class SearchSpaceError(ConfigError):
    """The search-space file is wrong: the message names the file, family and parameter."""


_KINDS = ("uniform", "log_uniform", "int")
_SECTIONS = ("search", "fixed")
#: Values quoted in messages, cut short: an error about a value must not print (or build) all of it.
_REPR = reprlib.Repr()  # attributes, not keywords: Python 3.11's Repr takes no arguments
_REPR.maxlevel, _REPR.maxstring, _REPR.maxlong, _REPR.maxother = 3, 60, 40, 60
_shown = _REPR.repr


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping: PyYAML keeps the last one
    silently, so a second ``xgboost:`` section would replace the first without a word."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden, as YAML says
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: the base class refuses it with its position
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (it would silently replace the first)", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.Node) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError as exc:  # past Python's 4,300-digit limit: say where, as YAML errors do
            raise yaml.constructor.ConstructorError(
                None, None, f"integer too long ({len(node.value):,} characters)", node.start_mark
            ) from exc


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _UniqueKeyLoader.construct_yaml_int)


def _read_yaml(path: Path) -> object:
    """The file's YAML, or a one-line ``SearchSpaceError`` saying why it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SearchSpaceError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from exc
    except OSError as exc:
        raise SearchSpaceError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:  # its str() spans lines: keep the problem and where
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SearchSpaceError(f"{path}: not valid YAML{where}: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise SearchSpaceError(f"{path}: not valid YAML ({' '.join(str(exc).split())[:200]})") from exc
    except RecursionError as exc:  # PyYAML composes recursively
        raise SearchSpaceError(f"{path}: not valid YAML (nested too deeply)") from exc


def _number(value: object) -> float | None:
    """``value`` as a finite float, or None when it is not a finite number (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


def _check_domain(where: str, dom: object) -> None:
    """One ``search`` entry: ``{uniform|log_uniform|int: [low, high]}`` with finite numbers, low < high."""
    if not isinstance(dom, dict) or len(dom) != 1 or next(iter(dom)) not in _KINDS:
        raise SearchSpaceError(f"{where}: expected one of uniform/log_uniform/int: [low, high], got {_shown(dom)}")
    kind, bounds = next(iter(dom.items()))
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise SearchSpaceError(f"{where}: expected {kind}: [low, high], got {_shown(bounds)}")
    for bound in bounds:
        if kind == "int" and (isinstance(bound, bool) or not isinstance(bound, int)):
            raise SearchSpaceError(f"{where}: int bounds must be integers, got {_shown(bound)}")
        if _number(bound) is None:
            # YAML 1.1 reads 1e-3 (no dot) as text: the commonest way to get a string here.
            hint = " (YAML reads exponents without a dot as text: write 1.0e-3)" if _is_float_text(bound) else ""
            raise SearchSpaceError(f"{where}: bounds must be finite numbers, got {_shown(bound)}{hint}")
    low, high = bounds
    if not low < high or (kind == "log_uniform" and low <= 0):
        raise SearchSpaceError(
            f"{where}: bad range [{low}, {high}] (needs low < high{', low > 0' * (kind == 'log_uniform')})"
        )


def _is_float_text(value: object) -> bool:
    try:
        return isinstance(value, str) and math.isfinite(float(value))
    except ValueError:
        return False


def load(path: str | Path | None = None) -> dict:
    """The search-space file, checked: every family a ``{search: ..., fixed: ...}`` mapping, every
    domain a finite range. Any mistake is a ``SearchSpaceError`` naming the file and the key path."""
    path = Path(path or DEFAULT_CONFIG)
    if not path.is_file():
        raise SearchSpaceError(f"{path}: search-space file not found")
    data = _read_yaml(path)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise SearchSpaceError(
            f"{path}: expected a mapping of model family -> {{fixed: ..., search: ...}}, got {type(data).__name__}"
        )
    for family, spec in data.items():
        if not isinstance(family, str):
            raise SearchSpaceError(f"{path}: model family names must be text, got {_shown(family)}")
        if not isinstance(spec, dict):
            raise SearchSpaceError(
                f"{path}: {family}: expected a mapping {{fixed: ..., search: ...}}, got {_shown(spec)}"
            )
        unknown = [k for k in spec if k not in _SECTIONS]
        if unknown:  # a misspelt `serch:` would otherwise be a family with nothing to search
            raise SearchSpaceError(f"{path}: {family}: unknown section {_shown(unknown[0])} (expected search, fixed)")
        for section in _SECTIONS:
            value = spec.get(section)
            if value is not None and not isinstance(value, dict):
                raise SearchSpaceError(
                    f"{path}: {family}.{section}: expected a mapping of name -> value, got {_shown(value)}"
                )
            bad = [k for k in value or {} if not isinstance(k, str)]
            if bad:
                raise SearchSpaceError(
                    f"{path}: {family}.{section}: parameter names must be text, got {_shown(bad[0])}"
                )
        for name, dom in (spec.get("search") or {}).items():
            _check_domain(f"{path}: {family}.search.{name}", dom)
        fixed = spec.get("fixed") or {}
        increasing = fixed.get("increasing")
        if increasing is not None and (
            not isinstance(increasing, list) or not set(map(str, increasing)) <= set(NUMERIC_FEATURES)
        ):
            raise SearchSpaceError(
                f"{path}: {family}.fixed.increasing: expected a list of numeric features "
                f"({', '.join(NUMERIC_FEATURES)}), got {_shown(increasing)}"
            )
        external = fixed.get("external_memory")
        if external is not None and (family != "xgboost" or not isinstance(external, bool)):
            raise SearchSpaceError(
                f"{path}: {family}.fixed.external_memory: expected true or false, and only for xgboost "
                f"(the DNN streams its batches), got {_shown(external)}"
            )
        folder = fixed.get("external_memory_dir")
        if folder is not None and (family != "xgboost" or not (isinstance(folder, str) and folder.strip())):
            raise SearchSpaceError(
                f"{path}: {family}.fixed.external_memory_dir: expected a folder path, and only for xgboost "
                f"(where external_memory pages its matrix), got {_shown(folder)}"
            )
    return data


def family_spec(path: str | Path | None, family: str) -> dict:
    """One family's section of a search-space file; a clear error when the file lacks it."""
    data = load(path)
    if family not in data:
        raise SearchSpaceError(f"{Path(path or DEFAULT_CONFIG)}: no search space for {family!r} (has {sorted(data)})")
    return data[family]


def param_space(spec: dict) -> dict:
    """Tune domains (all uniform floats) for one family's ``search`` section."""
    space = {}
    for name, dom in spec.get("search", {}).items():
        kind, (low, high) = next(iter(dom.items()))
        if kind == "log_uniform":
            space[_LOG + name] = tune.uniform(math.log10(low), math.log10(high))
        else:
            space[name] = tune.uniform(float(low), float(high))
    return space


def decode(point: dict, spec: dict) -> dict:
    """A searcher's point -> hyperparameters (10**log10_x, ints rounded) plus the fixed values."""
    params = dict(spec.get("fixed", {}))
    ints = {n for n, d in spec.get("search", {}).items() if "int" in d}
    for key, value in point.items():
        if key.startswith(_LOG):
            params[key[len(_LOG) :]] = 10**value
        elif key in ints:
            params[key] = int(round(value))
        else:
            params[key] = value
    return params

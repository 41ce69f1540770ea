"""How mbta_ray runs on Ray: one ``ensure_ray`` for the CLI, the stages, jobs and benchmarks, and
where Ray's own logs go.

By default a command's screen shows mbta_ray's progress and results only: ``ray_logs_to(file)``
sends Ray's Python loggers (ray, ray.data, ray.tune, ray.train, ray.serve), Python warnings and
Ray Data's progress bars to a log file instead, and the workers' output stays in Ray's session logs
(``/tmp/ray/session_latest/logs``) instead of being forwarded to the terminal. ``--verbose`` (no
``ray_logs_to``) shows all of it live, as plain Ray does.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mbta_ray.errors import MbtaRayError

#: Ray's loggers that print to the terminal by default.
_RAY_LOGGERS = ("ray", "ray.data", "ray.tune", "ray.train", "ray.serve", "ray.air", "py.warnings")


#: Ray's switch for a single-machine instance (named for macOS/Windows, where it is the default):
#: every port of a node it starts (GCS, raylet, dashboard agent, the metrics exporters) binds to
#: 127.0.0.1, and no other node can join. Read once, when ``ray`` is imported.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def peak_rss_mib() -> float:
    """This process's peak resident memory (MiB), as a training worker reports it."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def local_only_ray() -> None:
    """Make a Ray instance this process starts listen on 127.0.0.1 only (its metrics endpoints
    included; Ray binds them to 0.0.0.0 otherwise). Call before ``ray`` is imported. A no-op when
    RAY_ADDRESS names a cluster (a driver on a cluster node must register its real address) or when
    the user set the variable themselves."""
    if not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault(LOCAL_ONLY_ENV, "0")


#: pyarrow's own switch for its default memory pool ("system", "mimalloc" or "jemalloc"), read when
#: the process first allocates Arrow memory.
ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"


def use_system_arrow_pool() -> str:
    """Allocate this process's Arrow memory with the system allocator (glibc malloc), unless
    ARROW_DEFAULT_MEMORY_POOL chooses a pool; returns the pool's name. With pyarrow's default here,
    mimalloc, the ETL at 10 M events spent 54 of its 338 CPU s in the kernel, against 31 of 328 with
    this one, and took 3.5 % longer (bench/RESULTS.md, the same day): its frames, allocated and
    freed a bucket at a time, had their pages handed back and faulted in again."""
    import pyarrow as pa

    if ARROW_POOL_ENV not in os.environ:
        pa.set_memory_pool(pa.system_memory_pool())
    return pa.default_memory_pool().backend_name


class RayConnectionError(MbtaRayError, ConnectionError):
    """No Ray cluster answers at the address given (RAY_ADDRESS or --address)."""


@dataclass
class _Output:
    quiet: bool = False
    handler: logging.Handler | None = None


_output = _Output()


def quiet() -> bool:
    """True while Ray's output goes to a log file (stages pass it on, e.g. Tune's verbosity)."""
    return _output.quiet


def ensure_ray(
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    dashboard: bool | None = None,
    quiet: bool | None = None,
) -> None:
    """Connect to the cluster at ``address`` (default: RAY_ADDRESS), else start (or reuse) a local one.

    ``num_cpus``/``num_gpus``/``dashboard`` size a new local instance (benchmarks, tests); they are
    ignored when joining a cluster. ``quiet``: keep the workers' output and Ray's info logs off the
    terminal (default: while ``ray_logs_to`` is active).
    """
    # Imported here: `import ray` costs ~0.5 s, which commands that never start Ray (--help, the
    # registry) should not pay; every module that runs Ray work imports it itself anyway.
    import ray

    if ray.is_initialized():
        return
    quiet = _output.quiet if quiet is None else quiet
    address = address or os.environ.get("RAY_ADDRESS")
    options: dict = {}
    if not address:
        options = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        if dashboard is not None:
            options["include_dashboard"] = dashboard
    try:
        ray.init(
            address=address,
            ignore_reinit_error=True,
            log_to_driver=not quiet,
            logging_level=logging.ERROR if quiet else logging.WARNING,
            **options,
        )
    except ConnectionError as exc:
        raise RayConnectionError(
            f"no Ray cluster at {address!r} ({exc}); start one with `ray start --head` or unset RAY_ADDRESS"
        ) from exc
    if _output.handler is not None:  # ray.init may (re)install its console handlers
        _redirect(_output.handler)


def _redirect(handler: logging.Handler) -> dict[str, tuple]:
    """Point Ray's loggers at ``handler`` only; returns what they had, for ``_restore``."""
    saved = {}
    for name in _RAY_LOGGERS:
        lg = logging.getLogger(name)
        saved.setdefault(name, (list(lg.handlers), lg.propagate, lg.level))
        lg.handlers = [handler]
        lg.propagate = False
        if name == "py.warnings" or lg.level in (logging.NOTSET, logging.ERROR):
            lg.setLevel(logging.INFO)
    return saved


def _restore(saved: dict[str, tuple]) -> None:
    for name, (handlers, propagate, level) in saved.items():
        lg = logging.getLogger(name)
        lg.handlers, lg.propagate = handlers, propagate
        lg.setLevel(level)


@contextlib.contextmanager
def ray_logs_to(log_file: Path) -> Iterator[Path]:
    """Within the block, Ray's logs, Python warnings and Ray Data's progress bars go to
    ``log_file`` (appended), not the terminal. Restores everything afterwards."""
    import ray.data  # its logging is configured on import: import it before redirecting

    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setLevel(logging.INFO)  # Ray Data's logger runs at DEBUG for its own log file
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ctx = ray.data.DataContext.get_current()
    previous = (ctx.enable_progress_bars, ctx.print_on_execution_start, _output.quiet, _output.handler)
    saved = _redirect(handler)
    capturing = logging._warnings_showwarning is not None  # captureWarnings' own state
    logging.captureWarnings(True)
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
    _output.quiet, _output.handler = True, handler
    # Tune's new console output prints its experiment header whatever the verbosity; the classic
    # output obeys verbose=0 (tune.py passes it, with a silent reporter, while quiet() is true).
    air_output = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        with warnings.catch_warnings(), _raylet_messages_to_log():
            warnings.simplefilter("default")  # shown once each, in the log file (captureWarnings)
            yield log_file
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start, _output.quiet, _output.handler = previous
        if air_output is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = air_output
        logging.captureWarnings(capturing)
        _restore(saved)
        handler.close()


@contextlib.contextmanager
def _raylet_messages_to_log() -> Iterator[None]:
    """Route what the raylet pushes to the driver (e.g. its worker-startup warning) to the "ray"
    logger: a driver thread prints those straight to stdout (``print_to_stdstream``), past logging.
    Private Ray API: if it is gone, the messages simply stay on the terminal."""
    worker = importlib.import_module("ray._private.worker")
    original = getattr(worker, "print_to_stdstream", None)
    if original is None:
        yield
        return

    def to_log(data: dict, ignore_prefix: bool = False) -> None:
        logging.getLogger("ray").warning("(%s) %s", data.get("pid"), "\n".join(map(str, data.get("lines", []))))

    worker.print_to_stdstream = to_log
    try:
        yield
    finally:
        worker.print_to_stdstream = original

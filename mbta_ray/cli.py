"""``mbta-ray``: one Typer app, a subcommand group per stage.

Heavy stage modules (etl, tune, distill, pipeline, serve) are imported inside the commands that
use them: importing them all costs several seconds (Ray Tune, Ray Train, torch), which ``--help``
and the registry commands should not pay (measured in ARCHITECTURE.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import functools
import importlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from mbta_ray import runtime, versioning
from mbta_ray.config import DistillConfig, EtlConfig, PipelineSettings, TrialResources, TuneSettings
from mbta_ray.defaults import DATASET_NAME, MODEL_NAME, REGISTRY_ENV, SERVE_APP_NAME
from mbta_ray.errors import ConfigError, MbtaRayError
from mbta_ray.models import bundle
from mbta_ray.paths import DEFAULT_ROOT, DEFAULT_STOPS
from mbta_ray.registry import Registry, dataset_rescorer, evaluation_of
from mbta_ray.storage import shown

if TYPE_CHECKING:
    from mbta_ray.tune import TuneProgress

console = Console()
if not console.is_terminal:  # piped or in CI: rich would squeeze tables into 80 columns
    console = Console(width=140)


def _fail(message: str) -> None:
    # Messages quote users' names and files' text: '[/x]' there is text, not markup to render.
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code=2)


def _is_user_error_name(qualified: str) -> bool:
    """True when ``mbta_ray.<module>.<Class>`` names an ``MbtaRayError`` (as a remote traceback prints it)."""
    module, _, name = qualified.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return False
    return isinstance(cls, type) and issubclass(cls, MbtaRayError)


#: "mbta_ray.sources.InputError: <message>", the last line of a Ray task's remote traceback.
_REMOTE_ERROR = re.compile(r"^(mbta_ray(?:\.\w+)+): (.+)$", re.MULTILINE)


#: OS errors that say what is wrong with a path a user gave (--root pointing at a file, an
#: unwritable folder, a name too long for the file system), not a bug.
_PATH_ERRNOS = {errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.EROFS, errno.ENOSPC}


def _user_error(exc: BaseException) -> str | None:
    """The one-line message of the user's mistake behind ``exc``, if any: an ``MbtaRayError`` (or a
    missing file) raised here or inside a Ray task, else None. A task's error reaches the driver
    wrapped (``RayTaskError``, Ray Data's ``UserCodeException``) with the remote traceback as its
    text, whose last line names the original error and its message."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        remote = [m for m in _REMOTE_ERROR.finditer(str(exc)) if _is_user_error_name(m.group(1))]
        if remote:
            return remote[-1].group(2).strip()
        if isinstance(exc, (MbtaRayError, FileNotFoundError)):
            return str(exc)
        if isinstance(exc, OSError) and exc.errno in _PATH_ERRNOS:  # a path the user gave: a file, too long
            return f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
        exc = exc.__cause__ or getattr(exc, "cause", None)  # RayTaskError keeps the task's error as .cause
    return None


class _App(typer.Typer):
    """A Typer app whose commands turn the project's errors into one line and exit code 2: the one
    place a user's mistake is reported (never a traceback)."""

    def command(self, *args: Any, **kwargs: Any) -> Callable:
        register = super().command(*args, **kwargs)

        def decorator(fn: Callable) -> Callable:
            @functools.wraps(fn)
            def reported(*a: Any, **k: Any) -> Any:
                try:
                    return fn(*a, **k)
                except Exception as exc:
                    message = _user_error(exc)
                    if message is None:
                        raise  # a bug: the traceback is what a maintainer needs
                    _fail(message)

            register(reported)
            return fn

        return decorator


def default_of(cls: type, name: str) -> Any:
    """A dataclass field's default: the options below take their defaults from the dataclasses."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


app = _App(help="MBTA arrival and delay prediction on Ray.", no_args_is_help=True, pretty_exceptions_enable=False)
data_app = _App(help="Ingest MBTA data into versioned feature datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

RootOpt = Annotated[Path, typer.Option("--root", help="Artifact root (datasets go in <root>/datasets).")]
VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="Show Ray's own logs here as they come (default: a log file under <root>/logs)."
    ),
]


@contextlib.contextmanager
def _ray_output(root: Path, command: str, verbose: bool) -> Iterator[None]:
    """Ray's logs to ``<root>/logs/<command>-<time>.log`` (said on screen), or live with --verbose."""
    if verbose:
        yield
        return
    path = Path(root) / "logs" / f"{command}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.log"
    console.print(f"[dim]Ray's logs go to {path} (--verbose shows them here)[/]", soft_wrap=True)
    with runtime.ray_logs_to(path):
        yield


class _TrialsDisplay:
    """Trials done / total, best valid MAE so far and elapsed time of each search: a live bar on a
    terminal, one line per finished trial otherwise (CI logs, pipes)."""

    def __init__(self) -> None:
        self.bar = Progress(
            TextColumn("      {task.description}"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("trials  {task.fields[best]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.tasks: dict[str, TaskID] = {}
        self.shown: dict[str, int] = {}

    def __call__(self, p: TuneProgress) -> None:
        best = f"best valid MAE {p.best:.1f} s" if p.best is not None else "no result yet"
        if p.errors:
            best += f", {p.errors} failed"
        if console.is_terminal:
            if not self.tasks:
                self.bar.start()
            if p.family not in self.tasks:
                self.tasks[p.family] = self.bar.add_task(f"tune {p.family}", total=p.total, best="")
            self.bar.update(self.tasks[p.family], completed=p.done, best=best)
        elif p.done and self.shown.get(p.family) != p.done:
            self.shown[p.family] = p.done
            console.print(
                f"      tune {p.family}: {p.done}/{p.total} trials, {best}, {dt.timedelta(seconds=round(p.elapsed_s))}"
            )

    def close(self) -> None:
        if self.tasks:
            self.bar.stop()


def _counts_table(manifest: dict) -> Table:
    c = manifest["counts"]
    t = Table(title=f"dataset {manifest['name']} / {manifest['version']}", show_header=True)
    t.add_column("what")
    t.add_column("rows", justify="right")
    t.add_row("source rows in", f"{c['rows_in']:,}")
    t.add_row("events out (clean)", f"{c['rows_out']:,}")
    t.add_row("quarantined", f"{c['quarantined']:,}")
    t.add_row("trips", f"{c['trips']:,}")
    for split in ("train", "valid", "test"):
        t.add_row(f"examples {split} ({c['trips_by_split'][split]:,} trips)", f"{c['examples_by_split'][split]:,}")
    t.add_row("examples (checked vs trip sizes)", f"{c['examples']:,} / {c['examples_expected']:,}")
    return t


def _quarantine_table(manifest: dict) -> Table:
    t = Table(title="quarantined by reason")
    t.add_column("reason")
    t.add_column("rows", justify="right")
    for reason, n in manifest["counts"]["quarantined_by_reason"].items():
        t.add_row(reason, f"{n:,}")
    return t


@data_app.command("ingest")
def ingest_cmd(
    inputs: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Input files (parquet/CSV), format detected from the columns; 'path::format' names it "
            "(lamp, lamp_bus, tm, massdot, gtfsrt). Default: the embedded real MBTA samples."
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="Dataset name.")] = DATASET_NAME,
    k: Annotated[int, typer.Option("--k", "-k", help="Predict 1..K observed stops ahead.")] = EtlConfig.k,
    max_abs_delay: Annotated[
        float, typer.Option(help="Quarantine events with |delay| above this (s).")
    ] = EtlConfig.max_abs_delay_s,
    stops: Annotated[Optional[str], typer.Option(help="GTFS stops file or zip (default: embedded 2023-04).")] = None,
    no_stops: Annotated[bool, typer.Option("--no-stops", help="Skip GTFS stop checks and distances.")] = False,
    cache: Annotated[
        Optional[str],
        typer.Option(
            help="Read the days --from..--until from this `data fetch` cache (a folder or a gs:// / s3:// URI; "
            "an object store's files are copied to ROOT/fetched/ first) instead of INPUTS."
        ),
    ] = None,
    start: Annotated[Optional[str], typer.Option("--from", help="With --cache: first service date.")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="With --cache: last service date.")] = None,
    root: RootOpt = Path(DEFAULT_ROOT),
    verbose: VerboseOpt = False,
) -> None:
    """Read, check and turn MBTA data into a versioned train/valid/test feature dataset; several
    service days split by day (train on the earlier ones)."""
    from mbta_ray.etl import ingest

    if no_stops and stops:
        raise ConfigError("give --stops FILE or --no-stops, not both")
    config = EtlConfig(k=k, max_abs_delay_s=max_abs_delay)
    feeds = None
    if cache is not None or start or until:
        from mbta_ray import fetch

        if cache is None or not start:
            raise ConfigError("--cache and --from go together (--until defaults to --from)")
        if inputs:
            raise ConfigError("give INPUTS or --cache, not both")
        first = fetch.parse_date(start, "--from")
        last = fetch.parse_date(until, "--until") if until else first
        cached = fetch.cached_inputs(cache, first, last, stage=fetch.ingest_staging(root, cache))
        inputs, feeds = cached.inputs, None if no_stops or stops else cached.gtfs_feeds or None
        if cached.missing_days:
            console.print(f"[yellow]no LAMP file cached for[/] {', '.join(cached.missing_days)}")
        if feeds is not None and cached.days_without_gtfs:
            console.print(
                f"[yellow]no GTFS zip cached for[/] {', '.join(cached.days_without_gtfs)}: their stops are checked "
                "against the cached feeds' stops (`data fetch --source gtfs` for those days)"
            )
        elif feeds is None and not (no_stops or stops):
            console.print(
                "[yellow]no GTFS zip cached for the range[/]: stops are checked against the embedded 2023-04 "
                "stops (`data fetch --source gtfs`, or --stops FILE, or --no-stops)"
            )
    console.print(f"[bold]ingest[/] {len(inputs or [])} input file(s) (none: the embedded samples), K={k}")
    with _ray_output(root, "ingest", verbose), console.status("reading, checking and building examples..."):
        result = ingest(
            inputs,
            root=root,
            name=name,
            config=config,
            stops_path=None if no_stops else (stops or DEFAULT_STOPS),
            gtfs_feeds=feeds,
        )
    verb = "created" if result.created else "already exists (inputs, config and code unchanged: nothing to do)"
    console.print(f"[bold green]dataset {result.name}/{result.version} {verb}[/] at {result.path}")
    console.print(_counts_table(result.manifest))
    console.print(_quarantine_table(result.manifest))


@data_app.command("fetch")
def fetch_cmd(
    start: Annotated[str, typer.Option("--from", help="First service date, YYYY-MM-DD.")],
    until: Annotated[Optional[str], typer.Option("--until", help="Last service date (default: --from).")] = None,
    source: Annotated[
        Optional[list[str]],
        typer.Option("--source", "-s", help="lamp-subway, lamp-bus or gtfs; repeat for more (default: all three)."),
    ] = None,
    cache: Annotated[
        str,
        typer.Option(
            help="Where the files go (and fetch.json, their sizes and sha256): a folder, or a gs:// / s3:// URI "
            "(files are downloaded and checked locally, then uploaded)."
        ),
    ] = "data/cache",
    parallel: Annotated[int, typer.Option(help="Downloads at once (1 to 64).")] = 4,
    retries: Annotated[int, typer.Option(help="Retries per file, 0 to 10 (exponential backoff from 1 s).")] = 4,
    timeout: Annotated[
        float, typer.Option(help="Seconds without data before a retry (more than 0, at most 3600).")
    ] = 60.0,
    performance_url: Annotated[str, typer.Option(help="LAMP's server (or a mirror with its layout).")] = (
        "https://performancedata.mbta.com"
    ),
    cdn_url: Annotated[str, typer.Option(help="The GTFS archive's server (or a mirror).")] = "https://cdn.mbta.com",
) -> None:
    """Download MBTA's public archives (LAMP subway and bus, static GTFS) for a range of service dates."""
    from mbta_ray import fetch

    first = fetch.parse_date(start, "--from")
    last = fetch.parse_date(until, "--until") if until else first
    sources = source or list(fetch.SOURCES)
    done: dict[str, int] = {}
    with Progress(
        TextColumn("{task.description}"), BarColumn(bar_width=30), TextColumn("{task.fields[size]}"),
        TimeElapsedColumn(), console=console, transient=True,
    ) as bar:  # fmt: skip
        tasks: dict[str, TaskID] = {}

        def progress(path: str, n: int, total: int | None) -> None:
            if path not in tasks:
                tasks[path] = bar.add_task(path, total=total, size="")
            done[path] = done.get(path, 0) + n
            bar.update(tasks[path], advance=n, size=f"{done[path] / 1e6:,.1f} MB")

        report = fetch.fetch(
            sources,
            first,
            last,
            cache,
            performance_url,
            cdn_url,
            parallel,
            retries,
            timeout_s=timeout,
            progress=progress,
        )
    for f in sorted(report.fetched, key=lambda f: f["path"]):
        console.print(f"fetched {f['path']} ({f['size']:,} bytes, sha256 {f['sha256'][:12]})", soft_wrap=True)
    for m in report.missing:
        console.print(f"[yellow]missing[/] {m['source']} {m['date']}: {escape(m['reason'])}", soft_wrap=True)
    for f in report.failed:
        console.print(f"[red]failed[/] {f['source']} {', '.join(f['dates'])}: {escape(f['reason'])}", soft_wrap=True)
    for w in report.warnings:  # index rows skipped, damaged fetch.json entries
        console.print(f"[yellow]warning[/] {escape(w['where'])}: {escape(w['reason'])}", soft_wrap=True)
    where = escape(shown(cache))
    console.print(
        f"[bold]{report.summary()}[/] in {where} (records: {where.rstrip('/')}/{fetch.MANIFEST})", soft_wrap=True
    )
    if report.interrupted:
        console.print("[yellow]interrupted[/]: the files above are recorded; run the same command again to resume")
        raise typer.Exit(130)
    if report.failed:
        raise typer.Exit(1)


@data_app.command("list")
def list_cmd(
    name: Annotated[Optional[str], typer.Option(help="Only this dataset.")] = None, root: RootOpt = Path(DEFAULT_ROOT)
) -> None:
    """List dataset versions with their counts, newest first (a damaged version is reported, not listed)."""
    damaged: list[versioning.DamagedVersion] = []
    manifests = versioning.list_versions(root, name, damaged=damaged, complete=True)
    t = Table(title=f"datasets under {root}")
    for col in ("name", "version", "created", "inputs", "rows in", "quarantined", "train", "valid", "test"):
        left = col in ("name", "version", "created", "inputs")
        t.add_column(
            col,
            justify="left" if left else "right",
            no_wrap=col in ("name", "version"),
            min_width=16 if col == "version" else None,
        )
    for m in manifests:
        c = m["counts"]
        t.add_row(
            m["name"],
            m["version"],
            m["created_at"][:19],
            ", ".join(sorted({i["format"] for i in m["inputs"]})),
            f"{c['rows_in']:,}",
            f"{c['quarantined']:,}",
            *(f"{c['examples_by_split'][s]:,}" for s in ("train", "valid", "test")),
        )
    console.print(t)
    for exc in damaged:  # the message is the user's file name and field: no markup
        console.print(f"damaged: {exc}", style="yellow", soft_wrap=True, markup=False, highlight=False)
    if not manifests and not damaged:
        console.print("no datasets yet: run `mbta-ray data ingest`")


@data_app.command("show")
def show_cmd(
    version: Annotated[str, typer.Argument(help="Version (or a unique prefix).")],
    name: Annotated[Optional[str], typer.Option(help="Dataset name.")] = None,
    rows: Annotated[int, typer.Option(min=1, max=10_000, help="Sample rows to show (1 to 10,000).")] = 5,
    split: Annotated[str, typer.Option(help="Split to sample: train, valid or test.")] = "train",
    root: RootOpt = Path(DEFAULT_ROOT),
) -> None:
    """Show a version's manifest and a sample of its rows."""
    import pyarrow.dataset as pads

    from mbta_ray.schema import SPLITS

    if split not in SPLITS:  # checked before it becomes a folder name; shown as text, not markup
        _fail(f"--split must be one of {', '.join(SPLITS)}, got {split[:80]!r}")
    ds_name, ds_version = versioning.resolve(root, version, name)
    manifest = versioning.load_manifest(root, ds_name, ds_version, complete=True)
    console.print_json(json.dumps({k: v for k, v in manifest.items() if k != "schema"}, default=str))
    console.print(_counts_table(manifest))
    folder = versioning.version_dir(root, ds_name, ds_version) / split
    if not folder.is_dir():
        raise versioning.DamagedVersion(
            f"{folder}: missing; the dataset version is damaged: delete its folder and ingest again"
        )
    sample = pads.dataset(str(folder), format="parquet").head(rows).to_pandas()
    console.print(f"[bold]{split} sample ({len(sample)} rows)[/]")
    console.print(sample.T.to_string())


@data_app.command("synth")
def synth_cmd(
    events: Annotated[int, typer.Option("--events", "-n", min=1, help="Events (rows) to generate.")] = 1_000_000,
    out: Annotated[Path, typer.Option("--out", help="Output folder (or a .parquet file with --files 1).")] = Path(
        DEFAULT_ROOT
    )
    / "synthetic",
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same files.")] = 0,
    files: Annotated[int, typer.Option(min=1, help="Parquet files to split the events into.")] = 4,
    events_per_day: Annotated[
        Optional[int],
        typer.Option(help="Events per service day (default: the real day's size estimated from the sample)."),
    ] = None,
    lamp: Annotated[
        Optional[Path],
        typer.Option(help="Real LAMP file to fit the profile to (default: the embedded 2024-02-07 sample)."),
    ] = None,
) -> None:
    """Write SYNTHETIC LAMP-layout events fitted to real data, for scale benchmarks (never real data)."""
    from mbta_ray import synth

    with console.status(f"fitting the profile and writing {events:,} synthetic events..."):
        result = synth.write_synthetic(
            out,
            events,
            seed=seed,
            files=files,
            events_per_day=events_per_day,
            lamp_path=lamp or synth.DEFAULT_LAMP_SAMPLE,
        )
    t = Table(title=f"SYNTHETIC LAMP events (seed {seed}) -- not real MBTA data")
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("events", f"{result.n_events:,}")
    t.add_row("files", f"{len(result.paths):,}")
    t.add_row("service days", f"{result.service_days:,}")
    t.add_row("trips", f"{result.trips:,}")
    t.add_row("trips continuing into the next file", f"{result.trips_split_across_files:,}")
    t.add_row(
        "fitted to",
        f"{result.profile_summary['source']} ({result.profile_summary['patterns']} route patterns, "
        f"{result.profile_summary['stops']} stops)",
    )
    console.print(t)
    console.print(
        f"[bold yellow]synthetic[/] data in {Path(result.paths[0]).parent} (see {result.marker}); "
        f"ingest it with: mbta-ray data ingest {Path(result.paths[0]).parent}/*.parquet"
    )


@app.command("tune")
def tune_cmd(
    model: Annotated[str, typer.Option(help="xgboost, dnn or both.")] = "both",
    dataset: Annotated[Optional[str], typer.Option(help="Dataset version (prefix ok); default: the newest.")] = None,
    num_samples: Annotated[int, typer.Option(min=1, help="Trials per model family.")] = TuneSettings.num_samples,
    max_concurrent: Annotated[int, typer.Option(min=1, help="Trials running at once.")] = TuneSettings.max_concurrent,
    workers: Annotated[int, typer.Option(min=1, help="Ray Train workers per trial.")] = TrialResources.num_workers,
    cpus_per_worker: Annotated[
        Optional[float],
        typer.Option(help="CPUs per Train worker; default: fit the cluster, keeping 1 CPU free for Ray Data."),
    ] = TrialResources.cpus_per_worker,
    gpus_per_worker: Annotated[
        float, typer.Option(help="GPUs per Train worker (fractions share a GPU).")
    ] = TrialResources.gpus_per_worker,
    trial_cpu: Annotated[float, typer.Option(help="CPU share of the trial process itself.")] = TrialResources.trial_cpu,
    random_steps: Annotated[
        int, typer.Option(help="Random trials before BayesOpt's model kicks in.")
    ] = TuneSettings.random_steps,
    seed: Annotated[int, typer.Option(help="Searcher seed.")] = TuneSettings.seed,
    space: Annotated[
        Optional[str], typer.Option(help="Search-space YAML (default: the packaged mbta_ray/configs/tune.yaml).")
    ] = None,
    resume: Annotated[Optional[str], typer.Option(help="Experiment folder to continue (Tuner.restore).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Experiment name (default: family-dataset-time).")] = None,
    # On by default for the tune command (a person exploring wants the runs kept), off in
    # TuneSettings and the pipeline (make run, CI and jobs should not write W&B runs unasked).
    wandb: Annotated[
        bool, typer.Option("--wandb/--no-wandb", help="Log trials to W&B (offline without a key).")
    ] = True,
    root: RootOpt = Path(DEFAULT_ROOT),
    verbose: VerboseOpt = False,
) -> None:
    """Bayesian search (BayesOptSearch) over distributed XGBoost and/or DNN trials, then evaluation."""
    from mbta_ray import tune as tuning

    families = ["xgboost", "dnn"] if model == "both" else [model]
    if any(f not in tuning.FAMILIES for f in families):
        _fail(f"--model must be xgboost, dnn or both, got {model!r}")
    if resume and len(families) != 1:
        _fail("--resume continues one experiment: give --model xgboost or --model dnn")
    if dataset is None:
        versions = versioning.list_versions(root)
        if not versions:
            _fail(f"no dataset under {root}: run `mbta-ray data ingest` first")
        dataset = versions[0]["version"]
    results = []
    display = _TrialsDisplay()
    with _ray_output(root, "tune", verbose), contextlib.closing(display):
        for family in families:
            settings = TuneSettings(
                family=family,
                num_samples=num_samples,
                max_concurrent=max_concurrent,
                seed=seed,
                random_steps=random_steps,
                storage=str(root / "experiments"),
                space_file=space,
                wandb=wandb,
                resources=TrialResources(workers, cpus_per_worker, gpus_per_worker, trial_cpu),
                name=name if len(families) == 1 else (f"{name}-{family}" if name else None),
            )
            results.append(tuning.run_search(settings, root, dataset, resume=resume, progress=display))
    console.print(metrics_table(results))
    for r in results:
        best = r["best_valid_mae"]
        best_text = f"best valid MAE {best:.1f} s" if best is not None else "no valid MAE"
        console.print(
            f"{r['family']}: {r['trials']} trials, {best_text} -> {r['model_dir']} "
            f"(results.csv and plots in {r['experiment']})"
        )


def metrics_table(results: list[dict]) -> Table:
    """Test-split metrics of the best models and the baselines: each on the rows it covers, then
    MAE on the rows every prediction covers (like for like), by mode, as a multiple of persistence."""
    t = Table(title="test split: travel-time error (s) and MBTA 'accurate' share")
    for col in ("model", "rows", "MAE", "RMSE", "R2", "bias", "accurate", "common rows: MAE by mode (x persistence)"):
        t.add_column(col, justify="right" if col not in ("model",) and not col.startswith("common") else "left")
    seen = set()
    for r in results:
        pers = r["report"].get("persistence", {}).get("common", {}).get("by_mode", {})
        for name, entry in r["report"].items():
            if name in seen:
                continue
            seen.add(name)
            o = entry["overall"]
            common = entry.get("common", {}).get("by_mode", {})
            parts = []
            for mode, v in common.items():
                if not v["n"]:
                    continue
                ref = pers.get(mode, {}).get("mae")
                ratio = f" ({v['mae'] / ref:.2f}x)" if ref and name != "persistence" else ""
                parts.append(f"{mode} {v['mae']:.0f}{ratio}")
            t.add_row(
                name,
                f"{o['n']:,}",
                f"{o['mae']:.1f}",
                f"{o['rmse']:.1f}",
                f"{o['r2']:.3f}",
                f"{o['bias']:+.1f}",
                f"{o['accurate']:.1%}",
                ", ".join(parts),
            )
    return t


# --- distillation and the whole pipeline ------------------------------------------------------------


def compression_table(report: dict) -> Table:
    """Teacher vs student variants: size, speed and accuracy (from ``distill.run``)."""
    t = Table(title="compression report (CPU, 1 thread; model = on encoded inputs, e2e = from example rows)")
    for col in (
        "model",
        "family",
        "params (non-zero)",
        "file KiB",
        "model ms b1",
        "model ms b256",
        "e2e ms b256",
        "test MAE",
        "kept",
    ):
        t.add_column(col, justify="left" if col in ("model", "family") else "right")
    for r in report["rows"]:
        kept = "" if "kept" not in r else ("[green]chosen[/]" if r["kept"] else "")
        t.add_row(
            r["model"],
            r["family"],
            f"{r['params']:,} ({r['nonzero_params']:,})",
            f"{r['file_bytes'] / 1024:.0f}",
            f"{r['model_ms_b1']:.3f}",
            f"{r['model_ms_b256']:.3f}",
            f"{r['end_to_end_ms_b256']:.1f}",
            f"{r['test_mae']:.1f}",
            kept,
        )
    return t


def _print_compression(report: dict) -> None:
    console.print(compression_table(report))
    d = report["decisions"]
    console.print(
        f"pruning ({d['pruned']['amount']:.0%} of linear weights): valid MAE {d['pruned']['valid_mae']:.1f} vs "
        f"limit {d['limit']:.1f} -> {'kept' if d['pruned']['kept'] else 'dropped'}; int8 quantization: valid MAE "
        f"{d['quantized']['valid_mae']:.1f}, {d['quantized']['ms_b256']:.3f} vs {d['quantized']['float_ms_b256']:.3f} "
        f"ms float at batch 256 -> {'kept' if d['quantized']['kept'] else 'dropped'}"
    )
    g = report.get("goals")
    if g:
        console.print(
            f"student vs {g['reference']}: {g['fewer_params_x']:.1f}x fewer parameters, "
            f"{g['faster_b256_x']:.1f}x faster at batch 256; test MAE {g['mae_vs_teacher_x']:.2f}x the teacher's"
        )


@app.command("distill")
def distill_cmd(
    teacher: Annotated[list[Path], typer.Option(help="Packaged model folder(s); the lowest valid MAE teaches.")],
    dnn_reference: Annotated[Optional[Path], typer.Option(help="Tuned DNN to compare size/speed with.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Dataset version (default: the teacher's).")] = None,
    out: Annotated[
        Optional[Path], typer.Option(help="Output folder (default: beside the teacher's experiment).")
    ] = None,
    blend: Annotated[
        float, typer.Option(help="Weight of the true target vs the teacher (0..1).")
    ] = DistillConfig.blend,
    softening: Annotated[
        float, typer.Option(help="Teacher term's Huber zone multiplier (temperature-like).")
    ] = DistillConfig.softening,
    unlabeled_copies: Annotated[
        int, typer.Option(help="Unlabeled re-observed pairs per training pair.")
    ] = DistillConfig.unlabeled_copies,
    epochs: Annotated[int, typer.Option(min=1)] = DistillConfig.epochs,
    prune_amount: Annotated[float, typer.Option(help="Share of linear weights to prune.")] = DistillConfig.prune_amount,
    tolerance: Annotated[
        float, typer.Option(help="Max valid-MAE loss (share) to keep pruning/int8.")
    ] = DistillConfig.tolerance,
    root: RootOpt = Path(DEFAULT_ROOT),
    verbose: VerboseOpt = False,
) -> None:
    """Distill the best tuned model into a small MLP, prune and quantize it, report the compression."""
    from mbta_ray import distill

    cfg = DistillConfig(
        blend=blend,
        softening=softening,
        unlabeled_copies=unlabeled_copies,
        epochs=epochs,
        prune_amount=prune_amount,
        tolerance=tolerance,
    )
    teacher_dir = distill.pick_teacher(teacher)
    version = dataset or (bundle.read_metadata(teacher_dir).get("dataset") or {}).get("version")
    if not version:
        _fail(f"{teacher_dir / bundle.METADATA_FILE}: names no dataset; pass --dataset")
    out_dir = out or distill.default_out_dir(teacher_dir, version)
    with _ray_output(root, "distill", verbose), console.status("labeling, training and compressing the student..."):
        report = distill.run(teacher_dir, root, version, out_dir, cfg, dnn_reference=dnn_reference)
    _print_compression(report)
    console.print(f"student -> {report['student_dir']} (register it with `mbta-ray registry register`)")


@app.command("pipeline")
def pipeline_cmd(
    xgboost_samples: Annotated[int, typer.Option(min=0, help="XGBoost trials.")] = default_of(
        PipelineSettings, "samples"
    )["xgboost"],
    dnn_samples: Annotated[int, typer.Option(min=0, help="DNN trials.")] = default_of(PipelineSettings, "samples")[
        "dnn"
    ],
    distill_epochs: Annotated[int, typer.Option(min=1, help="Student epochs.")] = DistillConfig.epochs,
    metric: Annotated[str, typer.Option(help="Promotion metric.")] = PipelineSettings.metric,
    seed: Annotated[int, typer.Option(help="Searcher seed.")] = PipelineSettings.seed,
    registry: RegistryOpt = None,
    model_name: ModelNameOpt = MODEL_NAME,
    root: RootOpt = Path(DEFAULT_ROOT),
    inputs: Annotated[
        Optional[list[str]],
        typer.Option("--input", help="Input file (repeat); default: the embedded real MBTA samples."),
    ] = None,
    space_file: Annotated[Optional[str], typer.Option(help="Search spaces (default: configs/tune.yaml).")] = None,
    distill_hidden: Annotated[
        Optional[list[int]], typer.Option("--distill-hidden", help="Student hidden layer width (repeat per layer).")
    ] = None,
    distill_unlabeled_copies: Annotated[
        int, typer.Option(min=0, help="Unlabeled re-observed pairs per training pair for the student.")
    ] = DistillConfig.unlabeled_copies,
    max_concurrent: Annotated[
        int, typer.Option(min=1, help="Trials at once (lowered to what the cluster fits).")
    ] = PipelineSettings.max_concurrent,
    workers: Annotated[int, typer.Option(min=1, help="Ray Train workers per trial.")] = TrialResources.num_workers,
    gpus_per_worker: Annotated[
        float, typer.Option(min=0, help="GPUs per Train worker (0: CPU).")
    ] = TrialResources.gpus_per_worker,
    race: Annotated[
        bool,
        typer.Option(
            "--race/--no-race",
            help="Race production against MBTA's predictions on the embedded GTFS-realtime hour (12:20-12:30 UTC, "
            "held out of the dataset); only with the embedded data.",
        ),
    ] = True,
    verbose: VerboseOpt = False,
) -> None:
    """The main job: ingest -> tune -> distill -> evaluate -> register -> promote -> race, then a summary."""
    from mbta_ray import pipeline
    from mbta_ray.config import embedded_race

    _registry(registry, root, model_name)  # a bad --model-name or --registry fails now, not after training
    settings = PipelineSettings(
        root=str(root),
        registry=registry,
        model_name=model_name,
        samples={"xgboost": xgboost_samples, "dnn": dnn_samples},
        seed=seed,
        metric=metric,
        inputs=inputs,
        space_file=space_file,
        max_concurrent=max_concurrent,
        resources=TrialResources(num_workers=workers, gpus_per_worker=gpus_per_worker),
        distill=DistillConfig(
            epochs=distill_epochs,
            unlabeled_copies=distill_unlabeled_copies,
            **({"hidden": distill_hidden} if distill_hidden else {}),
        ),
        race=embedded_race() if race and not inputs else None,
    )
    t0 = time.monotonic()

    def progress(message: str) -> None:
        console.print(
            f"[dim]{dt.timedelta(seconds=round(time.monotonic() - t0))}[/] [bold cyan]{message}[/]", soft_wrap=True
        )

    display = _TrialsDisplay()
    with _ray_output(root, "pipeline", verbose), contextlib.closing(display):
        out = pipeline.run(settings, progress=progress, tune_progress=display)
    ds = out["dataset"]
    console.rule("summary")
    console.print(
        f"dataset {ds['name']}/{ds['version']}: {ds['counts']['examples']:,} examples "
        f"({ds['counts']['quarantined']:,} rows quarantined, by reason in `mbta-ray data show`)"
    )
    console.print(metrics_table(out["tune"] + [{"report": out["compression"]["eval"]}]))
    _print_compression(out["compression"])
    d = out["decision"]
    verdict = "[bold green]PROMOTED[/]" if d["accepted"] else "[bold yellow]NOT promoted[/]"
    console.print(f"{verdict} {model_name}/{d['candidate']} ({out['candidate']['role']}): {d['reason']}")
    prod = out["production"] or {}
    console.print(
        f"production is now {prod.get('version', 'none')} ({prod.get('family', '-')}); "
        f"registry {out['registry']}; deploy record {out['registry']}/production.json"
    )
    if out.get("race"):
        print_race(out["race"])
        console.print(f"race files: {out['race']['out']} (race.json, race.png, rows.parquet)", soft_wrap=True)


# --- serving --------------------------------------------------------------------------------------

serve_app = _App(help="The Ray Serve application.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")


@serve_app.command("reload")
def serve_reload_cmd(
    version: Annotated[str, typer.Option(help="Registry version, or 'production' (the pointer now).")] = "production",
    registry: RegistryOpt = None,
    model_name: ModelNameOpt = MODEL_NAME,
    root: RootOpt = Path(DEFAULT_ROOT),
    name: Annotated[str, typer.Option(help="Serve application name (serve_config.yaml).")] = SERVE_APP_NAME,
) -> None:
    """Switch the running app to a model version in place (after `mbta-ray promote`)."""
    from mbta_ray.serve.app import deploy

    target = registry or str(root)
    if "://" not in target:  # the replicas resolve paths in their own working directory
        target = str(Path(target).resolve())
    runtime.ensure_ray(address=os.environ.get("RAY_ADDRESS", "auto"), quiet=True)
    v = deploy(target, version, model_name, name)
    console.print(f"[bold green]serving[/] {model_name}/{v} in app {name!r} (replicas reconfigured in place)")


@app.command("smoke")
def smoke_cmd(
    url: Annotated[str, typer.Option(help="Base URL of the deployed app.")] = "http://127.0.0.1:8000",
    root: RootOpt = Path(DEFAULT_ROOT),
    dataset: Annotated[
        Optional[str],
        typer.Option(help="Dataset version whose test split the requests come from; default: the served model's."),
    ] = None,
    requests: Annotated[int, typer.Option("--requests", "-n", min=1, help="Vehicle requests to send.")] = 200,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Requests in flight.")] = 8,
    seed: Annotated[int, typer.Option(help="Which (trip, stop) pairs are sampled.")] = 0,
) -> None:
    """Post-deployment test: real-looking requests from the test split, every answer checked, MAE reported.

    Exits 1 when any answer is wrong (status, schema, non-finite values, model version).
    """
    import pandas as pd
    import requests as http

    from mbta_ray.serve import smoke

    try:
        model = http.get(f"{url.rstrip('/')}/model", timeout=30)
    except http.RequestException as exc:
        _fail(f"{url}: {exc}")
    if model.status_code != 200:
        _fail(f"GET {url}/model -> {model.status_code}: {model.text[:300]}")
    try:
        info = model.json()
    except ValueError:
        info = None
    if not isinstance(info, dict):
        _fail(f"GET {url}/model answered 200 but not a JSON object: {model.text[:120]!r}; is it this app?")
    ds = info.get("dataset") or {}
    if not isinstance(ds, dict):
        _fail(f"GET {url}/model: its 'dataset' is not an object ({str(ds)[:80]}); pass --dataset")
    if not (dataset or ds.get("version")):
        _fail(f"the served model {info.get('version')} names no dataset: pass --dataset")
    try:
        name, version = versioning.resolve(root, dataset or ds.get("version", ""), None if dataset else ds.get("name"))
    except versioning.VersionNotFound as exc:
        _fail(f"{exc} (the served model {info.get('version')} was trained on {ds}; pass --root or --dataset)")
    test_dir = versioning.version_dir(root, name, version) / "test"
    examples = smoke.examples_from_split(pd.read_parquet(test_dir), requests, seed)
    report = smoke.run(url, examples, concurrency=concurrency)
    t = Table(
        title=f"smoke test of {url}: model {report.model_version}, {len(examples)} requests from "
        f"{name}/{version} test split"
    )
    for col in ("mode", "stops", "served MAE s", "persistence MAE s (scheduled stops)"):
        t.add_column(col, justify="left" if col == "mode" else "right")
    for mode, m in report.mae().items():
        pers = f"{m['persistence_mae']:.1f} (n={m['persistence_n']:,})" if m["persistence_mae"] is not None else "-"
        t.add_row(mode, f"{m['n']:,}", f"{m['mae']:.1f}", pers)
    console.print(t)
    for failure in report.failures[:20]:
        console.print(f"[red]FAIL[/] {failure}")
    if len(report.failures) > 20:
        console.print(f"... and {len(report.failures) - 20} more failures")
    verdict = "[bold green]PASS[/]" if report.passed else "[bold red]FAIL[/]"
    console.print(f"{verdict}: {report.ok}/{report.sent} calls answered correctly, {report.predictions:,} predictions")
    if not report.passed:
        raise typer.Exit(code=1)


live_app = _App(help="The live feed: record it.", no_args_is_help=True)
app.add_typer(live_app, name="live")


@live_app.command("record")
def live_record_cmd(
    url: Annotated[str, typer.Option("--url", help="A GTFS-realtime feed URL (protobuf or enhanced JSON).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the parquet archives.")],
    every: Annotated[float, typer.Option("--every", help="Seconds between polls.")] = 5.0,
    duration: Annotated[
        Optional[str], typer.Option("--duration", help="How long: seconds, or 30m, 2h (default: until Ctrl-C).")
    ] = None,
    snapshots: Annotated[Optional[int], typer.Option("--snapshots", help="Stop after this many snapshots.")] = None,
    kind: Annotated[str, typer.Option("--kind", help="vehicle-positions or trip-updates.")] = "vehicle-positions",
    flush_every: Annotated[int, typer.Option("--flush-every", help="Snapshots per parquet file.")] = 60,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds a poll may wait for the feed.")] = 4.0,
) -> None:
    """Archive a feed's snapshots as parquet in the flattened layout the readers take (race, live
    replay, `mbta-ray data ingest`)."""
    from mbta_ray.realtime.record import parse_duration, record

    report = record(
        url,
        out,
        kind=kind,
        every_s=every,
        duration_s=parse_duration(duration),
        snapshots=snapshots,
        flush_every=flush_every,
        timeout_s=timeout,
        log=lambda m: console.print(m, soft_wrap=True, markup=False, highlight=False),
    )
    console.print(f"recorded {report.summary()} into {out}", soft_wrap=True)
    if not report.snapshots and report.skipped:  # every poll failed: nothing was recorded
        raise typer.Exit(1)


@app.command("race")
def race_cmd(
    vehicle_positions: Annotated[
        list[Path],
        typer.Option(
            "--vehicle-positions",
            help="VehiclePositions: .pb, enhanced JSON (gz or not), a flattened parquet archive, or a "
            "folder of them; repeat the option for more. Everything before a moment is its history.",
        ),
    ],
    trip_updates: Annotated[
        list[Path], typer.Option("--trip-updates", help="MBTA's TripUpdates (its predictions), same forms.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for race.json, race.png and rows.parquet.")],
    start: Annotated[
        Optional[str], typer.Option("--from", help="First moment (ISO time; default: the first snapshot).")
    ] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="Moments before this time (ISO).")] = None,
    model: Annotated[
        Optional[str], typer.Option("--model", help="Registry version to race (default: production).")
    ] = None,
    registry: RegistryOpt = None,
    model_name: ModelNameOpt = MODEL_NAME,
    root: RootOpt = Path(DEFAULT_ROOT),
) -> None:
    """Race a model against MBTA's own published predictions on the same moments, trips and stops."""
    from mbta_ray.realtime import race
    from mbta_ray.serve.inference import ModelRunner

    first = race.parse_time(start, "--from") if start else None
    last = race.parse_time(until, "--until") if until else None
    if first is not None and last is not None and last <= first:
        _fail(f"--until {until} is not after --from {start}")
    reg = _registry(registry, root, model_name)
    version = model or (reg.production() or {}).get("version")
    if not version:
        _fail(f"no production model in {reg.base}: run `make run` or pass --model")
    try:
        runner = ModelRunner(reg.fetch(version), version=version)
    except MbtaRayError:
        raise
    except Exception as exc:  # files that pass their checksums can still be no model
        _fail(f"{version}: cannot load the model: {type(exc).__name__}: {str(exc)[:200]}")
    with console.status("replaying the feeds and racing..."):
        result = race.run(vehicle_positions, trip_updates, runner, out, first, last)
    print_race(result.summary)
    console.print(f"wrote {out / 'race.json'}, {out / 'race.png'}")


def print_race(summary: dict) -> None:
    """The race table (MAE / accurate share per bin and method) and the row accounting."""
    from mbta_ray.realtime import race

    w = summary["window"]
    t = Table(
        title=f"race: model {summary['model_version']} vs MBTA, {w['from']} .. {w['until']} ({w['moments']} moments)"
    )
    t.add_column("MBTA horizon")
    t.add_column("n", justify="right")
    for method in race.METHODS:
        t.add_column(f"{method}: MAE / accurate", justify="right")
    for row in race.table(summary):
        t.add_row(*row)
    console.print(t)
    console.print(race.verdict(summary))
    rows, left = summary["rows"], summary["rows_left_out"]
    console.print(
        f"rows: {rows['mbta_matched']} MBTA predictions 0-30 min ahead, {rows['in_scope']} in scope, "
        f"{rows['scored']} with an actual arrival, {rows['not_started']} trips not started (not scored), "
        f"{left['already_arrived']} already arrived, {left['no_actual']} never seen arriving; "
        f"model coverage {100 * summary['coverage']:.1f}%, recent-segment rule "
        f"{100 * summary['recent_segment_coverage']:.1f}%; {summary['seconds']} s",
        soft_wrap=True,
    )
    if summary.get("window_cut"):
        console.print(f"[dim]window cut: {summary['window_cut']}[/]", soft_wrap=True)
    if summary.get("short_history"):
        console.print(f"[yellow]short history: {summary['short_history']}[/]", soft_wrap=True)
    for kind, report in summary.get("feeds", {}).items():  # what was left out of the inputs, and why
        parts = []
        if report["skipped_snapshots"]:
            first = report["skipped_snapshots"][0]
            parts.append(
                f"{len(report['skipped_snapshots'])} snapshot(s) skipped (first: {first['where']}: {first['why']})"
            )
        if report["skipped_rows"]:
            parts.append("rows skipped: " + ", ".join(f"{n:,} {why}" for why, n in report["skipped_rows"].items()))
        if report.get("ignored_fields"):
            parts.append("fields ignored: " + ", ".join(f"{n:,} {why}" for why, n in report["ignored_fields"].items()))
        if parts:  # file names and reasons are the user's text: no markup
            console.print(f"{kind}: " + "; ".join(parts), style="yellow", soft_wrap=True, markup=False, highlight=False)


# --- registry and promotion ------------------------------------------------------------------------

registry_app = _App(help="Model registry: versions, production pointer, audit log.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")
RegistryOpt = Annotated[
    Optional[str],
    typer.Option(
        "--registry",
        envvar=REGISTRY_ENV,
        help="Registry root: a folder or a URI (gs://, s3://, file://); default: --root.",
    ),
]
ModelNameOpt = Annotated[str, typer.Option("--model-name", help="Registered model name.")]


def _registry(registry: str | None, root: Path, model_name: str) -> Registry:
    return Registry(registry or root, model_name)


@registry_app.command("register")
def register_cmd(
    model_dir: Annotated[Path, typer.Argument(help="A packaged model folder (e.g. <experiment>/best).")],
    registry: RegistryOpt = None,
    model_name: ModelNameOpt = MODEL_NAME,
    root: RootOpt = Path(DEFAULT_ROOT),
) -> None:
    """Add a packaged, evaluated model as a new registry version."""
    reg = _registry(registry, root, model_name)
    meta = reg.register(model_dir, evaluation=evaluation_of(model_dir))
    m = meta["evaluation"]["metrics"]
    console.print(
        f"registered {model_name}/{meta['version']} ({meta['family']}, test MAE {m['mae']:.1f} s) in {reg.base}"
    )


@registry_app.command("list")
def registry_list_cmd(
    registry: RegistryOpt = None, model_name: ModelNameOpt = MODEL_NAME, root: RootOpt = Path(DEFAULT_ROOT)
) -> None:
    """Versions, their test metrics, and which one is production (damaged ones are reported)."""
    reg = _registry(registry, root, model_name)
    damaged: list[MbtaRayError] = []
    try:
        prod = (reg.production() or {}).get("version")
    except MbtaRayError as exc:  # still list the versions: one of them may be the rollback target
        prod = None
        damaged.append(exc)
    t = Table(title=f"registry {reg.base}")
    for col in ("version", "family", "dataset", "test MAE", "accurate", "created", "production"):
        t.add_column(col)
    for m in reg.versions(damaged=damaged):  # their shape is checked by the registry
        ev = m["evaluation"]
        met = {k: float("nan") if v is None else v for k, v in (ev.get("metrics") or {}).items()}
        t.add_row(
            m["version"],
            m.get("family", "?"),
            str((ev.get("dataset") or {}).get("version", "?"))[:8],
            f"{met.get('mae', float('nan')):.1f}",
            f"{met.get('accurate', float('nan')):.1%}",
            m["created_at"][:19],
            "yes" if m["version"] == prod else "",
        )
    console.print(t)
    for exc in damaged:  # the message is the user's file name and field: no markup
        console.print(f"damaged: {exc}", style="yellow", soft_wrap=True, markup=False, highlight=False)


@registry_app.command("audit")
def registry_audit_cmd(
    registry: RegistryOpt = None, model_name: ModelNameOpt = MODEL_NAME, root: RootOpt = Path(DEFAULT_ROOT)
) -> None:
    """Every promotion decision, oldest first."""
    reg = _registry(registry, root, model_name)
    t = Table(title=f"promotion decisions: {reg.base}")
    for col in ("at", "candidate", "was production", "decision", "why"):
        t.add_column(col)
    for e in reg.audit_log():
        verdict = ("FORCED" if e["forced"] else "accepted") if e["accepted"] else "refused"
        t.add_row(e["at"][:19], e["candidate"], e["production_before"] or "-", verdict, e["reason"])
    console.print(t)


@app.command("promote")
def promote_cmd(
    version: Annotated[str, typer.Argument(help="Registry version to promote.")],
    metric: Annotated[
        str, typer.Option(help="Decide on this test metric: mae, rmse, bias_abs, r2, accurate.")
    ] = PipelineSettings.metric,
    force: Annotated[bool, typer.Option("--force", help="Promote even if it does not beat production.")] = False,
    reason: Annotated[Optional[str], typer.Option(help="Why (required with --force; logged).")] = None,
    registry: RegistryOpt = None,
    model_name: ModelNameOpt = MODEL_NAME,
    root: RootOpt = Path(DEFAULT_ROOT),
) -> None:
    """Promote a version to production only if it beats production on the same test split."""
    reg = _registry(registry, root, model_name)
    decision = reg.promote(version, metric=metric, force=force, reason=reason, rescore=dataset_rescorer(reg, root))
    if decision.accepted:
        console.print(f"[bold green]promoted[/] {model_name}/{version}: {decision.reason}")
    else:
        console.print(f"[bold yellow]refused[/] {model_name}/{version}: {decision.reason}")
        raise typer.Exit(code=1)


def main() -> None:  # pragma: no cover
    # A command that starts Ray starts it on 127.0.0.1 only (before anything imports ray); `serve`
    # joins the instance already running, whichever way it was started, so it changes nothing.
    if sys.argv[1:2] != ["serve"]:
        runtime.local_only_ray()
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

"""The main job in one call: ETL -> tune -> distill -> evaluate -> register -> promote (-> race).

``mbta-ray pipeline`` (and ``make run``) runs it on the embedded real data with a small default
budget; every stage is the same code the stage's own command runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mbta_ray import distill, etl
from mbta_ray.config import EtlConfig, PipelineSettings, TuneSettings
from mbta_ray.errors import ConfigError
from mbta_ray.models import bundle
from mbta_ray.registry import Registry, dataset_rescorer, evaluation_of
from mbta_ray.tune import TuneProgress, run_search

__all__ = ["PipelineSettings", "choose_candidate", "run"]


def choose_candidate(teacher: dict, student: dict, tolerance: float) -> str:
    """'student' or 'teacher', decided on validation MAE (the test split stays for the gate)."""
    return "student" if student["valid_mae"] <= teacher["valid_mae"] * (1 + tolerance) else "teacher"


def run(
    settings: PipelineSettings,
    progress: Callable[[str], None] = print,
    tune_progress: Callable[[TuneProgress], None] | None = None,
) -> dict:
    """Every stage in order; ``progress`` gets a line per stage and result, ``tune_progress`` the
    searches' trial counts and best scores as they run."""
    root = Path(settings.root)
    stages = 6 if settings.race else 5
    progress(f"[1/{stages}] ingest: the embedded real MBTA data -> a versioned feature dataset")
    holdout = settings.race.holdout() if settings.race else None
    ds = etl.ingest(settings.inputs, root=root, config=EtlConfig(holdout=holdout))
    if holdout:
        held = ds.manifest["counts"]["quarantined_by_reason"].get("held_out", 0)
        progress(f"      held out for the race: {held} arrival reports from {holdout[0]} on (never trained on)")
    progress(f"      dataset {ds.name}/{ds.version} ({'created' if ds.created else 'already there'})")

    results = []
    for family, n in settings.samples.items():
        if n <= 0:
            continue
        progress(f"[2/{stages}] tune {family}: {n} BayesOpt trials, each a Ray Train run")
        ts = TuneSettings(
            family=family,
            num_samples=n,
            max_concurrent=settings.max_concurrent,
            seed=settings.seed,
            resources=settings.resources,
            storage=str(root / "experiments"),
            space_file=settings.space_file,
            wandb=settings.wandb,
            early_stopping=settings.early_stopping,
        )
        results.append(run_search(ts, root, ds.version, progress=tune_progress))
        progress(f"      best {family}: valid MAE {results[-1]['best_valid_mae']:.1f} s")
    if not results:
        raise ConfigError("pipeline: no model family has trials (samples are all 0)")

    progress(f"[3/{stages}] distill: the best model teaches a small MLP (Ray Data labels, Ray Train fits)")
    teacher_dir = distill.pick_teacher([r["model_dir"] for r in results])
    dnn_ref = next((r["model_dir"] for r in results if r["family"] == "dnn"), None)
    comp = distill.run(
        teacher_dir,
        root,
        ds.version,
        distill.default_out_dir(teacher_dir, ds.version),
        settings.distill,
        dnn_reference=dnn_ref,
    )
    progress(
        f"      student: {comp['chosen']}, test MAE {comp['eval']['student']['overall']['mae']:.1f} s "
        f"(teacher {comp['eval']['teacher']['overall']['mae']:.1f} s)"
    )

    progress(f"[4/{stages}] register: teacher and student go into the registry with their test metrics")
    reg = Registry(settings.registry or root, settings.model_name)
    versions = {}
    for label, folder in (("teacher", Path(teacher_dir)), ("student", Path(comp["student_dir"]))):
        versions[label] = reg.register(folder, evaluation=evaluation_of(folder), extra={"pipeline_role": label})
    pick = choose_candidate(
        bundle.read_metadata(teacher_dir), bundle.read_metadata(comp["student_dir"]), settings.student_tolerance
    )
    candidate = versions[pick]["version"]

    progress(f"[5/{stages}] promote: candidate {pick} {candidate} against production on {settings.metric}")
    decision = reg.promote(candidate, metric=settings.metric, rescore=dataset_rescorer(reg, root))
    race_summary = None
    if settings.race:
        production = (reg.production() or {}).get("version")
        progress(f"[6/6] race: production {production} against MBTA's own predictions, {settings.race.start} on")
        race_summary = _race(settings.race, reg, production, root / "race" / production)
    return {
        "dataset": {"name": ds.name, "version": ds.version, "created": ds.created, "counts": ds.manifest["counts"]},
        "tune": results,
        "compression": comp,
        "registered": {k: v["version"] for k, v in versions.items()},
        "candidate": {"role": pick, "version": candidate},
        "decision": decision.as_dict(),
        "production": reg.production(),
        "registry": reg.base,
        "race": race_summary,
    }


def _race(race_settings, reg: Registry, version: str, out: Path) -> dict:
    from mbta_ray.realtime import race
    from mbta_ray.serve.inference import ModelRunner

    runner = ModelRunner(reg.fetch(version), version=version)
    start, until = (race.parse_time(t, "race window") for t in (race_settings.start, race_settings.until))
    result = race.run(race_settings.vehicle_positions, race_settings.trip_updates, runner, out, start, until)
    return {**result.summary, "out": str(out)}

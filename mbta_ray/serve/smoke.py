"""Post-deployment smoke test: real-looking requests from a dataset's test split, every answer checked.

Each request is a vehicle just observed at stop u on a test-split trip, exactly as the ETL saw it
(route, direction, trip, service day, arrival and schedule at u, headways, the previous observed
stop), asking for the observed stops ahead of it. Answers are checked against the response schema,
for finite values, for ``arrival = u's arrival + travel``, the stop order and the expected model
version; the served predictions are scored against what really happened (MAE, and persistence on
the same stops for scale). Part of the requests go through ``/predict/batch`` too.
"""

from __future__ import annotations

import datetime as dt
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import requests as http

from mbta_ray.schema import TARGET
from mbta_ray.serve.schemas import MAX_BATCH, MAX_STOPS_AHEAD, BatchResponse, PredictResponse


@dataclass
class Example:
    """One request body and the truth for its stops ahead."""

    body: dict
    mode: str
    actual_travel: list[float]
    persistence: list[float]  # scheduled travel u -> s (NaN where unscheduled)
    trip_key: str = ""
    stop_sequence: int = 0  # u's on the trip


@dataclass
class SmokeReport:
    url: str
    model_version: str | None
    sent: int = 0
    ok: int = 0
    predictions: int = 0
    failures: list[str] = field(default_factory=list)
    abs_errors: dict[str, list[float]] = field(default_factory=dict)
    persistence_errors: dict[str, list[float]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.sent > 0 and not self.failures and self.ok == self.sent

    def mae(self) -> dict[str, dict]:
        """MAE of the served predictions per mode and overall (persistence MAE where scheduled)."""
        out = {}
        groups = {**{m: m for m in sorted(self.abs_errors)}, "all": None}
        for name, mode in groups.items():
            err = [e for m, v in self.abs_errors.items() if mode in (None, m) for e in v]
            pers = [e for m, v in self.persistence_errors.items() if mode in (None, m) for e in v]
            if err:
                out[name] = {
                    "n": len(err),
                    "mae": float(np.mean(err)),
                    "persistence_n": len(pers),
                    "persistence_mae": float(np.mean(pers)) if pers else None,
                }
        return out


def _time(value) -> str | None:
    return None if pd.isna(value) else pd.Timestamp(value).isoformat()


def _number(value) -> float | None:
    return None if pd.isna(value) else float(value)


def _recent(row) -> dict | None:
    """A row's recent-travel input as the API takes it (None: no other vehicle known)."""
    if not np.isfinite(getattr(row, "recent_travel_s", np.nan)):
        return None
    return {
        "median_seconds": float(row.recent_travel_s),
        "vehicles": int(row.recent_travel_n),
        "age_seconds": float(row.recent_travel_age_s),
    }


def _moment(row: pd.Series) -> pd.Timestamp:
    """The example's prediction moment: the arrival at u + the elapsed time the ETL drew."""
    elapsed = float(row.get("elapsed_s", 0.0))
    return pd.Timestamp(row["actual_arrival_u"]) + pd.Timedelta(seconds=elapsed if np.isfinite(elapsed) else 0.0)


def examples_from_split(test: pd.DataFrame, n: int, seed: int = 0) -> list[Example]:
    """Up to ``n`` requests, one per sampled (trip, visit of stop u) of the split's example rows. A
    visit is a stop sequence: a loop route passes the same stop twice, and each pass is its own u."""
    test = test[test["stops_ahead"] <= MAX_STOPS_AHEAD]
    groups = test.groupby(["trip_key", "from_stop_sequence"], sort=False).indices
    keys = list(groups)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(keys), size=min(n, len(keys)), replace=False) if keys else []
    # The stop observed before u on the same trip: the pair (prev -> u) one stop ahead.
    prev = test[test["stops_ahead"] == 1].set_index(["trip_key", "to_stop_sequence"])
    prev = prev[~prev.index.duplicated()]
    out = []
    for i in chosen:
        rows = test.iloc[groups[keys[i]]].sort_values("stops_ahead")
        first = rows.iloc[0]
        body = {
            "route_id": first["route_id"],
            "direction_id": int(first["direction_id"]),
            "trip_id": None if pd.isna(first["trip_id"]) else str(first["trip_id"]),
            "stop_id": first["from_stop_id"],
            "stop_sequence": int(first["from_stop_sequence"]),
            "mode": first["mode"],
            "service_date": pd.Timestamp(first["service_date"]).date().isoformat(),
            "actual_arrival": _time(first["actual_arrival_u"]),
            "scheduled_arrival": _time(first["scheduled_arrival_u"]),
            "headway_seconds": _number(first["headway_u"]),
            "scheduled_headway_seconds": _number(first["scheduled_headway_u"]),
            "stops_ahead": [
                {
                    "stop_id": s,
                    "stop_sequence": int(q),
                    "scheduled_arrival": _time(t),
                    "recent_travel": _recent(r),
                    "recent_hop_seconds": _number(getattr(r, "recent_hop_s", np.nan)),
                }
                for s, q, t, r in zip(
                    rows["to_stop_id"], rows["to_stop_sequence"], rows["scheduled_arrival_s"], rows.itertuples()
                )
            ],
            # The real-time inputs the ETL computed at its moment for this u (the arrival + elapsed_s).
            "moment": _time(_moment(first)),
            "departure": _time(_moment(first) - pd.Timedelta(seconds=first["departed_s"]))
            if np.isfinite(first.get("departed_s", np.nan))
            else None,
            "headway_ahead_seconds": _number(first["headway_ahead_s"]),
        }
        for stop in body["stops_ahead"]:
            for name in ("recent_travel", "recent_hop_seconds"):
                if stop[name] is None:
                    del stop[name]
        key = (first["trip_key"], first["from_stop_sequence"])
        if key in prev.index:
            p = prev.loc[key]
            body["previous_stop"] = {
                "stop_id": p["from_stop_id"],
                "actual_arrival": _time(p["actual_arrival_u"]),
                "scheduled_arrival": _time(p["scheduled_arrival_u"]),
            }
        sched = pd.to_numeric(rows["scheduled_seconds_ahead"], errors="coerce").to_numpy(dtype="float64")
        out.append(
            Example(
                {k: v for k, v in body.items() if v is not None},
                str(first["mode"]),
                rows[TARGET].astype("float64").tolist(),
                sched.tolist(),
                str(first["trip_key"]),
                int(first["from_stop_sequence"]),
            )
        )
    return out


def check(example: Example, answer: PredictResponse, version: str | None) -> list[str]:
    """What is wrong with one answer (empty when it is right)."""
    body, problems = example.body, []
    where = f"{body['route_id']} trip {body.get('trip_id')} at {body['stop_id']}"
    if version is not None and answer.model_version != version:
        problems.append(f"{where}: model_version {answer.model_version!r}, expected {version!r}")
    wanted = [s["stop_id"] for s in body["stops_ahead"]]
    if [p.stop_id for p in answer.predictions] != wanted:
        problems.append(f"{where}: stops {[p.stop_id for p in answer.predictions]} != asked {wanted}")
        return problems
    u = dt.datetime.fromisoformat(body["actual_arrival"])
    for j, p in enumerate(answer.predictions):
        if p.stops_ahead != j + 1 or not math.isfinite(p.predicted_travel_seconds):
            problems.append(
                f"{where} -> {p.stop_id}: bad stops_ahead/travel {p.stops_ahead}/{p.predicted_travel_seconds}"
            )
        elif abs((p.predicted_arrival - u).total_seconds() - p.predicted_travel_seconds) > 0.1:
            problems.append(f"{where} -> {p.stop_id}: predicted_arrival is not u + predicted_travel_seconds")
        scheduled = body["stops_ahead"][j].get("scheduled_arrival") is not None
        if scheduled != (p.predicted_delay_seconds is not None) or (
            p.predicted_delay_seconds is not None and not math.isfinite(p.predicted_delay_seconds)
        ):
            problems.append(
                f"{where} -> {p.stop_id}: predicted_delay_seconds {p.predicted_delay_seconds} "
                f"with scheduled_arrival {'given' if scheduled else 'absent'}"
            )
    return problems


def _same(a: PredictResponse, b: PredictResponse) -> bool:
    """Equal answers; travel times to 0.1 s either way (a float32 DNN may round differently by batch)."""
    return (
        a.model_version == b.model_version
        and [p.stop_id for p in a.predictions] == [p.stop_id for p in b.predictions]
        and all(
            abs(p.predicted_travel_seconds - q.predicted_travel_seconds) <= 0.11
            for p, q in zip(a.predictions, b.predictions)
        )
    )


def run(
    url: str, examples: list[Example], concurrency: int = 8, batch_size: int = 32, timeout_s: float = 30.0
) -> SmokeReport:
    """Send every example to ``/predict`` (and the first ``batch_size`` again as one ``/predict/batch``)."""
    url = url.rstrip("/")
    session = http.Session()
    health = session.get(f"{url}/healthz", timeout=timeout_s)
    try:
        said = health.json() if health.ok else None
    except ValueError:  # 200 and not JSON: not this app
        said = None
    report = SmokeReport(url, said.get("model_version") if isinstance(said, dict) else None)
    if health.ok and not isinstance(said, dict):
        report.failures.append(f"GET /healthz -> 200 but not a JSON object: {health.text[:120]!r}")
        return report
    if not health.ok:
        report.failures.append(f"GET /healthz -> {health.status_code}: {health.text[:300]}")
        return report

    def one(example: Example) -> tuple[Example, PredictResponse | None, str | None]:
        try:
            r = session.post(f"{url}/predict", json=example.body, timeout=timeout_s)
        except http.RequestException as exc:
            return example, None, f"POST /predict: {exc}"
        if r.status_code != 200:
            return (
                example,
                None,
                f"POST /predict {example.body['route_id']}/{example.body['stop_id']} -> "
                f"{r.status_code}: {r.text[:300]}",
            )
        try:
            return example, PredictResponse.model_validate_json(r.content), None
        except ValueError as exc:
            return example, None, f"POST /predict: response does not match the schema: {exc}"

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, examples))
    for example, answer, failure in results:
        report.sent += 1
        problems = [failure] if failure else check(example, answer, report.model_version)
        report.failures.extend(problems)
        if problems:
            continue
        report.ok += 1
        report.predictions += len(answer.predictions)
        pred = np.array([p.predicted_travel_seconds for p in answer.predictions])
        report.abs_errors.setdefault(example.mode, []).extend(np.abs(pred - example.actual_travel).tolist())
        pers = np.array(example.persistence)
        have = np.isfinite(pers)
        report.persistence_errors.setdefault(example.mode, []).extend(
            np.abs(pers[have] - np.array(example.actual_travel)[have]).tolist()
        )

    # The batch endpoint must give the same answers as one request at a time.
    chunk = [r for r in results if r[1] is not None and not check(r[0], r[1], report.model_version)]
    chunk = chunk[: min(batch_size, MAX_BATCH)]
    if chunk:
        report.sent += 1
        r = session.post(f"{url}/predict/batch", json={"requests": [e.body for e, _, _ in chunk]}, timeout=timeout_s)
        if r.status_code != 200:
            report.failures.append(f"POST /predict/batch -> {r.status_code}: {r.text[:300]}")
        else:
            try:
                batch = BatchResponse.model_validate_json(r.content)
                same = len(batch.responses) == len(chunk) and all(
                    _same(x, a) for x, (_, a, _) in zip(batch.responses, chunk)
                )
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                report.failures.append(f"POST /predict/batch: response does not match the schema: {exc}")
            else:
                if same:
                    report.ok += 1
                else:
                    report.failures.append("POST /predict/batch answers differ from the same requests sent one by one")
    return report

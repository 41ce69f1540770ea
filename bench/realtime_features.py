"""Benchmark: the ETL's real-time features, ``realtime.history.EventHistory`` (sorted searches over
stop events) against a ``NetworkState`` replay answering the same queries one by one (what the ETL
did before), on the embedded real LAMP subway day at the ETL's own prediction moments.

    .venv/bin/python bench/realtime_features.py [--routes N] [--sample ROWS] [--no-record]

Both answer the same queries (every (trip, u, s) pair of the busiest ``--routes`` lines, K=10, at
the moments ``etl.prediction_moments`` draws); the state answers a random ``--sample`` of them (it
takes ~0.3 ms a row). The bench checks the answers are equal, and reports rows/s of each and their
ratio, in the same run, and appends it to bench/RESULTS.md. Goal (issue 16): the features no longer
dominate the ETL (>= 20x the state's rows/s).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

GOAL_RATIO = 20.0


def _events(routes: int):
    """The real LAMP day's clean events of its ``routes`` busiest lines, sorted by trip."""
    from mbta_ray.etl import _sorted_trips
    from mbta_ray.gtfs import Stops
    from mbta_ray.paths import DEFAULT_STOPS, LAMP_DAY
    from mbta_ray.schema import TRIP_KEY
    from mbta_ray.sources import read_file
    from mbta_ray.validate import ValidationConfig, check_rows, check_trips, trip_keys

    events = check_rows(read_file(str(LAMP_DAY)).to_pandas(), ValidationConfig(), Stops.load(DEFAULT_STOPS))
    events = events[events["reason"].isna()]
    events = events[events["route_id"].isin(events["route_id"].value_counts().index[:routes])]
    events = events.assign(**{TRIP_KEY: trip_keys(events)})
    return _sorted_trips(check_trips(events).query("reason.isna()"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--routes", type=int, default=4, help="the busiest N lines of the LAMP day")
    ap.add_argument("--sample", type=int, default=20_000, help="queries the state answers (it is slow)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    import numpy as np

    from mbta_ray.etl import realtime_queries
    from mbta_ray.features import pair_events
    from mbta_ray.realtime.features import observations_from_events, realtime_features
    from mbta_ray.realtime.history import EventHistory
    from mbta_ray.realtime.state import NetworkState

    events = _events(args.routes)
    queries = realtime_queries(pair_events(events, 10))
    reports = observations_from_events(events)

    t = time.perf_counter()
    history = EventHistory(reports)
    got = history.features(queries)
    history_s = time.perf_counter() - t

    sample = queries.sample(min(args.sample, len(queries)), random_state=0)
    t = time.perf_counter()
    state = NetworkState()
    state.observe(reports)
    want = realtime_features(state, sample)
    state_s = time.perf_counter() - t

    mine = got.loc[sample.index].to_numpy()
    theirs = want.to_numpy()
    equal = bool(((mine == theirs) | (np.isnan(mine) & np.isnan(theirs))).all())
    if not equal:
        raise SystemExit("EventHistory and NetworkState disagree: see tests/test_realtime.py")
    history_rate, state_rate = len(queries) / history_s, len(sample) / state_s
    ratio = history_rate / state_rate
    description = (
        f"One process. {len(events):,} real LAMP events of {args.routes} lines, {len(queries):,} queries (K=10)."
    )
    body = [
        "| | rows | seconds (build + answer) | rows/s |",
        "|---|---:|---:|---:|",
        f"| NetworkState, one row at a time | {len(sample):,} | {state_s:.2f} | {state_rate:,.0f} |",
        f"| EventHistory, sorted searches | {len(queries):,} | {history_s:.2f} | {history_rate:,.0f} |",
        "",
        f"Same answers on the {len(sample):,} rows both computed. Ratio {ratio:.1f}x; "
        f"goal >= {GOAL_RATIO:.0f}x: {'met' if ratio >= GOAL_RATIO else 'NOT met'}.",
    ]
    print(description, *body, sep="\n")
    if not args.no_record:
        from results_md import append

        append(description, body)


if __name__ == "__main__":
    main()

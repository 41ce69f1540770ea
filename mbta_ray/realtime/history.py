"""The real-time features of ``features.realtime_features``, vectorized, for lines whose history is
stop events (LAMP, TransitMaster, synthetic): what the ETL computes for months of them.

A ``NetworkState`` answers one query at a time in Python (~100 us a row); the ETL asks tens of
millions (issue 16: the features were most of the ETL's time). Stop events are simpler than a live
feed: each arrival and each departure (arrival + dwell) is known at its own time, once, in order.
So "the last N other vehicles that did u -> s before t" is a sorted search over the line's
traversals of u -> s, and "when did the vehicle leave u" a search over its own reports. Rows of a
line that is not like that (a GTFS-realtime line: reports published after the fact, out of order,
positions; a trip with two events at one stop sequence) are answered by a ``NetworkState`` of those
lines, so every row gets exactly what the state would say: ``tests/test_realtime.py`` and the ETL's
parity test hold the two to equality.

A line here is a route, direction and service day: the history of one service day never sees
another day's vehicles (late trips of the day before are within the 3 h / 6 h windows of the first
ones), so an example's features do not depend on which line-days the ETL put in one bucket.

The reports come from ``features.observations_from_events`` (one definition of what stop events
say); the semantics are the state's, restated for reports known at their own time:
- a trip's arrival at a visit (stop sequence) is its event's time; at a stop without a sequence,
  its first visit there;
- ``recent_travel`` u -> s at t: per other trip, its latest visit of s at or before t (within the
  age limit) with its first arrival at u no later; the ``n`` latest such arrivals at s (ties by
  trip key), their median travel, count and the age of the latest;
- ``departed_s``: the trip's first report after its arrival at u that does not have it standing at
  u, if at or before t;
- ``headway_ahead_s``: the latest arrival at u by another trip before the vehicle's own (within
  6 h of t, ties by trip key).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mbta_ray.columns import codes_in
from mbta_ray.features import POSITION_COLUMNS
from mbta_ray.realtime.features import REALTIME_FEATURES, RECENT_MAX_AGE_S, RECENT_N, realtime_features
from mbta_ray.realtime.feeds import STOPPED_AT
from mbta_ray.realtime.state import HEADWAY_MAX_AGE_S, NetworkState, trip_keys

_NO_DIRECTION = -1


def _line_keys(route: pd.Series, direction: pd.Series, day: pd.Series) -> pd.Series:
    """One string per (route, direction, service day): a line-day, whose history is its own."""
    d = pd.to_numeric(direction, errors="coerce").fillna(_NO_DIRECTION).astype("int64").astype("string")
    parts = [route.astype("string").reset_index(drop=True), d.reset_index(drop=True)]
    return parts[0] + "|" + parts[1] + "|" + pd.Series(day).astype("string").reset_index(drop=True)


def _query_days(queries: pd.DataFrame) -> pd.Series:
    """The service day of each query's trip (``state.trip_key`` starts with it)."""
    keys = pa.array(queries["trip_key"].astype("string").array, type=pa.string())
    days = pc.list_element(pc.split_pattern(keys, "|", max_splits=1), 0)  # vectorized: no Python str per row
    return pd.Series(days, dtype="string")


def _codes(index: pd.Index, values) -> np.ndarray:
    """Integer codes of ``values`` in ``index`` (-1: not in it)."""
    return codes_in(index, values)


class EventHistory:
    """What stop-event reports (``observations_from_events``) and feed reports say, for many
    queries at once.

    ``features(queries)`` returns what ``features.realtime_features`` returns for a
    ``NetworkState`` fed the same reports of the query's line-day, for every query row. The
    line-days (route, direction, start date) of ``feed`` (VehiclePositions rows) are answered by
    such a state, one per line-day."""

    def __init__(self, reports: pd.DataFrame, feed: pd.DataFrame | None = None) -> None:
        feed = feed if feed is not None else reports.iloc[:0]
        reports = pd.concat([reports, feed], ignore_index=True) if len(feed) else reports.reset_index(drop=True)
        keys = trip_keys(reports["start_date"], reports["route_id"], reports["trip_id"])
        lines = _line_keys(reports["route_id"], reports["direction_id"], reports["start_date"])
        stopped = (reports["status"] == STOPPED_AT).to_numpy()
        seq = reports["stop_sequence"].to_numpy(dtype="float64")
        # Lines the sorted searches restate exactly; the rest go to a NetworkState.
        odd = (reports["feed_timestamp"] != reports["timestamp"]).to_numpy() | (stopped & np.isnan(seq))
        visits = pd.DataFrame({"key": keys, "seq": seq})[stopped]
        odd[np.flatnonzero(stopped)[visits.duplicated(["key", "seq"], keep=False).to_numpy()]] = True
        odd_lines = set(lines[odd].unique())
        odd_lines |= set(_line_keys(feed["route_id"], feed["direction_id"], feed["start_date"]).unique())
        # A trip seen on two lines: its reports would be split between the two answers.
        lines_per_trip = pd.DataFrame({"key": keys, "line": lines}).drop_duplicates()
        odd_lines |= set(lines_per_trip.loc[lines_per_trip["key"].duplicated(keep=False), "line"])
        self._states: dict[str, NetworkState] = {}
        for line in odd_lines:  # one state per line-day: no day sees another's vehicles
            self._states[line] = NetworkState()
            self._states[line].observe(reports[(lines == line).to_numpy()])
        keep = ~lines.isin(odd_lines).to_numpy()
        self._odd_lines = odd_lines
        self._index(keys[keep], lines[keep], reports[keep], stopped[keep])

    def _index(self, keys: pd.Series, lines: pd.Series, reports: pd.DataFrame, stopped: np.ndarray) -> None:
        # Trip codes ordered like their keys, so ties broken "by trip key" are broken by code.
        self._trips = pd.Index(np.sort(keys.unique().to_numpy(dtype=object)), dtype="string")
        self._lines = pd.Index(lines.unique(), dtype="string")
        self._stops = pd.Index(reports["stop_id"].astype("string").unique(), dtype="string")
        self._ns = len(self._stops) + 1  # stop codes fit below this (a key's radix)
        trip, line = _codes(self._trips, keys), _codes(self._lines, lines)
        stop = _codes(self._stops, reports["stop_id"])
        time = reports["timestamp"].to_numpy(dtype="int64")
        self._t0 = int(time.min()) if len(time) else 0
        self._span = int(time.max()) - self._t0 + 2 if len(time) else 2
        v_trip, v_line, v_stop, v_time = trip[stopped], line[stopped], stop[stopped], time[stopped]
        # A trip's first arrival at each stop (``arrival_at`` without a sequence), by trip * ns + stop.
        first_key = v_trip * self._ns + v_stop
        order = np.lexsort((v_time, first_key))
        firsts = order[np.r_[True, first_key[order][1:] != first_key[order][:-1]]] if len(order) else order
        self._first_key, self._first_time = first_key[firsts], v_time[firsts]
        # Each visit by (trip, stop sequence): ``arrival_at`` with a sequence.
        self._by_visit = pd.MultiIndex.from_arrays(
            [v_trip, reports["stop_sequence"].to_numpy(dtype="float64")[stopped]]
        )
        self._visit_stop, self._visit_time = v_stop, v_time
        # Arrivals at each (line, stop) in time order, ties by trip: the vehicle ahead, and the
        # other vehicles that reached s.
        at = v_line * self._ns + v_stop
        order = np.lexsort((v_trip, v_time, at))
        self._at, self._at_time, self._at_trip = at[order], v_time[order], v_trip[order]
        self._at_key = self._at * self._span + (self._at_time - self._t0)
        # Every report of a trip in time order (its departure from u is the first not standing at u).
        order = np.lexsort((time, trip))
        self._rep_trip, self._rep_time = trip[order], time[order]
        self._rep_stop, self._rep_stopped = stop[order], stopped[order]
        self._rep_key = self._rep_trip * self._span + (self._rep_time - self._t0)

    # --- the features ---------------------------------------------------------------------------

    def features(self, queries: pd.DataFrame, n: int = RECENT_N, max_age_s: float = RECENT_MAX_AGE_S) -> pd.DataFrame:
        """``realtime_features`` of each query row (``features.QUERY_COLUMNS``), same index."""
        out = pd.DataFrame(
            {name: np.full(len(queries), np.nan) for name in (*REALTIME_FEATURES, *POSITION_COLUMNS)},
            index=queries.index,
        )
        if queries.empty:
            return out
        lines = _line_keys(queries["route_id"], queries["direction_id"], _query_days(queries))
        odd = lines.isin(self._odd_lines).to_numpy()
        for line in lines[odd].unique():
            rows = (lines == line).to_numpy()
            out.loc[rows] = realtime_features(self._states[line], queries[rows], n=n).to_numpy()
        if (~odd).any():
            q = queries[~odd]
            found = self._features(q, _codes(self._lines, lines[~odd]), n, max_age_s)
            out.loc[~odd, list(REALTIME_FEATURES)] = found[list(REALTIME_FEATURES)].to_numpy()
        return out

    def _features(self, q: pd.DataFrame, line: np.ndarray, n: int, max_age_s: float) -> pd.DataFrame:
        trip = _codes(self._trips, q["trip_key"])  # -1: a trip not in the history
        moment = q["moment"].to_numpy(dtype="int64")
        arrival_u = q["arrival_u"].to_numpy(dtype="int64")
        u, s = _codes(self._stops, q["from_stop_id"]), _codes(self._stops, q["to_stop_id"])
        hop_from = _codes(self._stops, q["hop_from_stop_id"])
        travel_n, travel_s, travel_age = self._recent(line, u, s, trip, moment, n, max_age_s)
        hop_s = travel_s.copy()
        other = q["hop_from_stop_id"].to_numpy(dtype=object) != q["from_stop_id"].to_numpy(dtype=object)
        if other.any():
            hop_s[other] = self._recent(
                line[other], hop_from[other], s[other], trip[other], moment[other], n, max_age_s
            )[1]
        out = {
            "recent_travel_s": travel_s,
            "recent_travel_n": travel_n,
            "recent_travel_age_s": travel_age,
            "recent_hop_s": hop_s,
            "elapsed_s": (moment - arrival_u).astype("float64"),
            "departed_s": self._departed(trip, u, q["from_stop_sequence"].to_numpy(dtype="float64"), moment),
            "headway_ahead_s": self._headway(line, u, trip, arrival_u, moment),
        }
        return pd.DataFrame(out)

    def _first_arrival(self, trip: np.ndarray, stop: np.ndarray) -> np.ndarray:
        """The trip's first arrival at the stop (NaN: none), for arrays of codes."""
        key = trip * self._ns + stop
        i = np.searchsorted(self._first_key, key)
        i = np.where((trip >= 0) & (stop >= 0) & (i < len(self._first_key)), i, -1)
        hit = _gather(self._first_key.astype("float64"), i) == key  # NaN (nothing there) is no hit
        return np.where(hit, _gather(self._first_time.astype("float64"), i), np.nan)

    def _recent(
        self, line: np.ndarray, u: np.ndarray, s: np.ndarray, trip: np.ndarray, moment: np.ndarray, n: int, max_age_s
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(count, median travel, age of the latest) of the last ``n`` other trips u -> s before each moment."""
        ns = self._ns
        valid = (line >= 0) & (u >= 0) & (s >= 0)
        wanted, pair = np.unique(np.where(valid, (line * ns + u) * ns + s, -1), return_inverse=True)
        w_at, w_u = (wanted // (ns * ns)) * ns + wanted % ns, (wanted // ns) % ns  # (line, s) and u
        # Every trip's visits of s, with its first arrival at u where that is no later.
        lo = np.searchsorted(self._at, w_at, "left")
        count = np.where(wanted >= 0, np.searchsorted(self._at, w_at, "right") - lo, 0)
        d_pair = np.repeat(np.arange(len(wanted)), count)
        d_pos = lo[d_pair] + np.arange(len(d_pair)) - np.repeat(np.cumsum(count) - count, count)
        d_trip, d_time = self._at_trip[d_pos], self._at_time[d_pos]
        first_u = self._first_arrival(d_trip, w_u[d_pair])
        # u before s; at the same time only if another stop (a loop's u -> u needs a later visit).
        ok = (first_u < d_time) | ((first_u == d_time) & (w_u[d_pair] != wanted[d_pair] % ns))
        d_pair, d_trip, d_time, travel = d_pair[ok], d_trip[ok], d_time[ok], (d_time - first_u)[ok]
        order = np.lexsort((-d_trip, d_time, d_pair))  # latest last; among ties the first trip key last
        d_pair, d_trip, d_time, travel = d_pair[order], d_trip[order], d_time[order], travel[order]
        key = d_pair * self._span + (d_time - self._t0)
        lo = np.searchsorted(key, pair * self._span, side="left")
        hi = np.searchsorted(key, pair * self._span + np.clip(moment - self._t0, -1, self._span - 1), side="right")
        hi = np.where(valid, hi, lo)
        chosen = _last_n(lo, hi, d_trip, d_time, trip, moment - max_age_s, n)  # (rows, n), -1 where fewer
        travels = _gather(travel, chosen)
        got = (chosen >= 0).sum(axis=1).astype("float64")
        median = np.full(len(pair), np.nan)
        some = got > 0
        median[some] = _row_nanmedians(travels[some])
        age = moment - _gather(d_time.astype("float64"), chosen[:, 0])
        return got, median, age

    def _departed(self, trip: np.ndarray, u: np.ndarray, u_seq: np.ndarray, moment: np.ndarray) -> np.ndarray:
        """Seconds since the vehicle left u, if known by the moment (NaN: not)."""
        at_u = self._arrival_at(trip, u, u_seq, moment)
        out = np.full(len(trip), np.nan)
        idx = np.flatnonzero(~np.isnan(at_u))
        if not len(idx):
            return out
        pos = np.searchsorted(self._rep_key, trip[idx] * self._span + (at_u[idx].astype("int64") - self._t0), "right")
        left = np.full(len(idx), -1)
        pending = np.arange(len(idx))
        while len(pending):  # the first later report of the trip that does not have it standing at u
            j = pos[pending]
            inside = j < len(self._rep_key)
            pending, j = pending[inside], j[inside]
            same = self._rep_trip[j] == trip[idx[pending]]
            pending, j = pending[same], j[same]
            still_at_u = self._rep_stopped[j] & (self._rep_stop[j] == u[idx[pending]])
            left[pending[~still_at_u]] = j[~still_at_u]
            pending = pending[still_at_u]
            pos[pending] += 1
        when = _gather(self._rep_time.astype("float64"), left)
        ok = when <= moment[idx]  # NaN (none found) is not
        out[idx[ok]] = (moment[idx] - when)[ok]
        return out

    def _arrival_at(self, trip: np.ndarray, u: np.ndarray, u_seq: np.ndarray, moment: np.ndarray) -> np.ndarray:
        """``NetworkState.arrival_at``'s time (NaN: none known at the moment)."""
        visit = self._by_visit.get_indexer(pd.MultiIndex.from_arrays([trip, u_seq]))
        has_visit = (visit >= 0) & ~np.isnan(u_seq)
        stop_there = _gather(self._visit_stop.astype("float64"), np.where(has_visit, visit, -1))
        at_visit = np.where(stop_there == u, _gather(self._visit_time.astype("float64"), visit), np.nan)
        at = np.where(has_visit, at_visit, self._first_arrival(trip, u))
        return np.where(at <= moment, at, np.nan)

    def _headway(
        self, line: np.ndarray, u: np.ndarray, trip: np.ndarray, arrival_u: np.ndarray, moment: np.ndarray
    ) -> np.ndarray:
        """The vehicle's own arrival at u - the latest other trip's before it (NaN: none in 6 h)."""
        out = np.full(len(trip), np.nan)
        idx = np.flatnonzero((line >= 0) & (u >= 0))
        at = line[idx] * self._ns + u[idx]
        lo = np.searchsorted(self._at_key, at * self._span, "left")
        # Before the vehicle's own arrival, and known at the moment (an arrival is known at its time).
        bound = np.clip(np.minimum(arrival_u[idx], moment[idx] + 1) - self._t0, -1, self._span - 1)
        hi = np.searchsorted(self._at_key, at * self._span + bound, "left")
        chosen = _last_n(lo, hi, self._at_trip, self._at_time, trip[idx], moment[idx] - HEADWAY_MAX_AGE_S, 1)[:, 0]
        out[idx] = arrival_u[idx] - _gather(self._at_time.astype("float64"), chosen)
        return out


def _last_n(
    lo: np.ndarray, hi: np.ndarray, trips: np.ndarray, times: np.ndarray, exclude: np.ndarray, oldest, n: int
) -> np.ndarray:
    """Per row, the indices of the last ``n`` entries of ``[lo, hi)`` (sorted by time, latest last)
    of distinct trips other than ``exclude`` with a time at or after ``oldest``, latest first; -1
    where there are fewer. Reads back a window at a time."""
    rows = len(lo)
    chosen = np.full((rows, n), -1)
    got = np.zeros(rows, dtype="int64")
    seen: list[np.ndarray] = []  # trips taken so far per window step, (rows,) each with -1 for none
    pos = hi - 1
    active = np.flatnonzero(pos >= lo)
    oldest = np.broadcast_to(np.asarray(oldest), (rows,))
    while len(active):
        j = pos[active]
        t = trips[j]
        ok = (t != exclude[active]) & (times[j] >= oldest[active])
        for taken in seen:
            ok &= taken[active] != t
        take = np.full(rows, -1)
        take[active[ok]] = t[ok]
        seen.append(take)
        r = active[ok]
        chosen[r, got[r]] = j[ok]
        got[r] += 1
        pos[active] -= 1
        # Older entries are older still: past the age limit, or enough found, a row is done.
        done = (got[active] >= n) | (pos[active] < lo[active]) | (times[j] < oldest[active])
        active = active[~done]
    return chosen


def _row_nanmedians(values: np.ndarray) -> np.ndarray:
    """``np.nanmedian(values, axis=1)`` for rows with a value each: sorted, NaN last, the middle
    value or the mean of the middle two. (numpy's goes through masked arrays: a ninth of a bucket's
    examples at 5 columns.)"""
    ordered = np.sort(values, axis=1)
    count = (~np.isnan(values)).sum(axis=1)
    rows = np.arange(len(values))
    return (ordered[rows, (count - 1) // 2] + ordered[rows, count // 2]) / 2


def _gather(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``values[index]`` as float, NaN where ``index`` is -1 (nothing found)."""
    out = np.full(index.shape, np.nan)
    found = index >= 0
    out[found] = values[index[found]]
    return out

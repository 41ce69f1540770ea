"""The API request for a vehicle at a moment, from the network state: what the race sends for each
trip it scores and what the live service sends for each active vehicle (one builder, so the race
measures exactly what the live feed publishes).

The request is the one a client sends (``serve.schemas.PredictRequest``): the trip's last arrival u
known at the moment, the stops after u in order, and the real-time inputs the state knows then (the
moment, the headway to the vehicle ahead, when the vehicle left u and where it is since, each
segment's and hop's recent travel time by other vehicles). ``published_arrivals`` turns the
model's answer into the times both publish: anchored on where the vehicle is for its next stop,
then stop to stop by the hops' recent times where the line has them (``expected_arrivals``), each
told a little early where it is far ahead (``rider_time``).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from mbta_ray.evaluate import HORIZON_BINS
from mbta_ray.realtime.features import RECENT_MAX_AGE_S, RECENT_N, realtime_features
from mbta_ray.realtime.feeds import STOPPED_AT
from mbta_ray.realtime.state import Arrival, NetworkState

#: The share of the accuracy window's centre an arrival is published early by (``rider_time``).
RIDER_SHIFT = 0.5
_BIN_MIDDLES = [(lo + hi) / 2 for _, lo, hi, _, _ in HORIZON_BINS]
_WINDOW_CENTRES = [(early + late) / 2 for _, _, _, early, late in HORIZON_BINS]
#: A scheduled start further ahead than this is not one a standing vehicle waits out, and one further
#: behind is not one it is still late for (``_dispatched``).
DISPATCH_MAX_WAIT_S = 3600
#: How far back the runs from a terminal are looked for where no vehicle's stay there is known.
DISPATCH_RUN_MAX_AGE_S = 3 * 3600


def trip_start(state: NetworkState, key: str, moment: float) -> Arrival | None:
    """Where trip ``key`` is predicted from at ``moment``: its last arrival known then; else, for a
    trip whose vehicle is on its way to a stop but has not yet stood at any stop of this trip (it
    took the trip over between stops, or its first stop's report was missed), the arrival it is
    expected to make there (``position_anchor``, at least a second after the moment; ``expected``
    set). None: neither is known.
    Issue 14: such trips were the 0.8 % of the race's rows the model did not answer (coverage
    99.2 %; under the goal's 99 % in four of five 5-minute windows of the hour); with them, 100 %,
    and those rows beat MBTA in some windows and lose in others (a train coming into a terminal,
    whose layover its schedule knows: bench/RESULTS.md)."""
    last = state.last_arrival(key, moment)
    if last is not None:
        return last
    pos = state.position(key, moment)
    if pos is None or pos.status == STOPPED_AT or not isinstance(pos.stop_id, str):
        return None
    at = position_anchor(state, key, moment, pos.stop_id)
    if at is None:
        return None
    # Strictly after the moment: a vehicle held short of the stop is expected "now" (``_leaves``).
    return Arrival(pos.stop_id, pos.stop_sequence, max(int(math.ceil(at)), int(moment) + 1), int(moment), expected=True)


def vehicle_request(
    state: NetworkState,
    key: str,
    last: Arrival,
    route_id: str,
    direction_id: int,
    trip_id: str,
    service_date: dt.date,
    stop_ids: Sequence[str],
    moment: float,
):
    """The ``PredictRequest`` for trip ``key`` (last arrival ``last``) to ``stop_ids`` (the stops
    after u, in order), with everything the state knew at ``moment``. An expected arrival
    (``trip_start``'s, still ahead of the moment) makes the request as of that arrival, as a client would
    send it there: no moment, no departure or position since u, and the other vehicles' traversals
    as old as they will be then; all of it known at ``moment``."""
    from mbta_ray.serve.schemas import PredictRequest, StopAhead

    stop_ids = list(stop_ids)
    ahead_by = float(last.time) - float(moment) if last.expected else 0.0  # > 0: u is expected, not seen
    known = realtime_features(
        state,
        pd.DataFrame(
            {
                "trip_key": key,
                "route_id": route_id,
                "direction_id": direction_id,
                "from_stop_id": last.stop_id,
                "from_stop_sequence": last.stop_sequence,
                "to_stop_id": stop_ids,
                "hop_from_stop_id": [last.stop_id, *stop_ids[:-1]],
                "arrival_u": last.time,
                "moment": moment,
            }
        ),
    )
    ahead = [
        StopAhead.model_construct(
            stop_id=stop_id,
            stop_sequence=None,
            scheduled_arrival=None,
            recent_travel=_recent_travel(f, ahead_by) if f.recent_travel_n > 0 else None,
            recent_hop_seconds=float(f.recent_hop_s) if np.isfinite(f.recent_hop_s) else None,
        )
        for stop_id, f in zip(stop_ids, known.itertuples())
    ]
    headway = known["headway_ahead_s"].iloc[0]
    # An expected u has no departure and no position since it (``realtime_features`` finds no arrival
    # there to leave from): only the moment needs dropping.
    departed = known["departed_s"].iloc[0]
    return PredictRequest.model_construct(
        route_id=route_id,
        direction_id=int(direction_id),
        stop_id=last.stop_id,
        stop_sequence=None,
        actual_arrival=dt.datetime.fromtimestamp(last.time, dt.UTC),
        scheduled_arrival=None,
        trip_id=trip_id,
        mode=None,
        service_date=service_date,
        previous_stop=None,
        headway_seconds=None,
        scheduled_headway_seconds=None,
        stops_ahead=ahead,
        moment=None if ahead_by else dt.datetime.fromtimestamp(moment, dt.UTC),
        headway_ahead_seconds=None if math.isnan(headway) else float(headway),
        departure=None if math.isnan(departed) else dt.datetime.fromtimestamp(moment - departed, dt.UTC),
        position=_position(known.iloc[0]),
    )


def published_arrivals(state: NetworkState, key: str, moment: float, response) -> list[float]:
    """The arrival times published for trip ``key`` at ``moment``, stop by stop, from the model's
    ``PredictResponse`` to the request ``vehicle_request`` built: the expected arrivals
    (``expected_arrivals``), each told to riders a little early where it is far ahead
    (``rider_time``)."""
    return [rider_time(arrival, moment) for arrival in expected_arrivals(state, key, moment, response)]


def rider_time(arrival: float, moment: float) -> float:
    """The time published for an arrival expected at ``arrival`` (epoch s), predicted at ``moment``:
    earlier by half the centre of MBTA's accuracy window for how far ahead it is
    (``evaluate.HORIZON_BINS``: the vehicle may come up to 60 s early or late 0-3 min ahead, 240 s
    early or 360 s late 12-30 min ahead; centres 0 / 15 / 30 / 60 s), taken at each bin's middle
    and straight between them (so a later stop is never published before an earlier one).

    Why: the expected time is a median, best for the mean absolute error. MBTA's standard, and a
    rider who would rather wait a minute than miss the train, prefer an error on the early side
    far ahead; the window's centre is best for the share of accurate predictions. Half way costs
    little of either (issue 14, bench/RESULTS.md: on the race's rows the full shift costs 3-14 s MAE at
    3-30 min, half of it 1-4 s). MBTA's own published times run early by 20-100 s at 3-30 min."""
    ahead = arrival - moment
    return max(float(moment), arrival - RIDER_SHIFT * float(np.interp(ahead, _BIN_MIDDLES, _WINDOW_CENTRES)))


def expected_arrivals(state: NetworkState, key: str, moment: float, response) -> list[float]:
    """The expected arrival times of trip ``key`` at ``moment``, stop by stop, from the model's
    ``PredictResponse`` to the request ``vehicle_request`` built.

    The first stop: where the vehicle is says most (on its way there: ``position_anchor``; standing
    at a stop: ``standing_anchor``), else the model's time. Each later stop: the stop before it plus
    the hop as the line does it now (``_hop``: the time the last trains of every route that makes
    it took over it; else ``StopPrediction.path_travel_seconds``: the route's own recent hop, else
    its training median, else its distance at the route's pace), else the model's own step. Never
    before the moment (the vehicle has not arrived), never before the stop before (a vehicle arrives
    in order; u too, where its arrival is still expected). Issue 14: on the race's rows the hops
    beat the model's steps at every horizon (3-30 min most): a step is the difference of two predictions, each with
    its own error, and the learned corrections come from another season's line (they pull slow
    zones back to that season's medians), while the hops say what the line does this hour.
    TheTransitClock predicts the same way."""
    modelled, arrival = [], float(moment)
    for p in response.predictions:  # the model's times, made monotone
        arrival = max(arrival, p.predicted_arrival.timestamp())
        modelled.append(arrival)
    if not modelled:
        return []
    first = response.predictions[0].stop_id
    anchor = position_anchor(state, key, moment, first)
    if anchor is None:
        anchor = standing_anchor(state, key, moment, first)
    start = trip_start(state, key, moment)
    # Not before the moment, nor before the arrival at u where that is still expected (``trip_start``).
    floor = max(float(moment), float(start.time) if start is not None and start.expected else -math.inf)
    out = [max(floor, anchor if anchor is not None else modelled[0])]
    pos = state.position(key, moment)
    for j in range(1, len(modelled)):
        step = _hop(state, key, pos, response.predictions[j - 1].stop_id, response.predictions[j].stop_id, moment)
        if step is None:
            before, here = response.predictions[j - 1].path_travel_seconds, response.predictions[j].path_travel_seconds
            step = modelled[j] - modelled[j - 1] if before is None or here is None else max(0.0, here - before)
        out.append(out[-1] + step)
    return out


def _hop(state: NetworkState, key: str, pos, from_stop: str, to_stop: str, moment: float) -> float | None:
    """The hop ``from_stop`` -> ``to_stop`` as the line does it now: the median time of the last
    ``RECENT_N`` other trips that made it, of every route that stops at ``to_stop``
    (``NetworkState.recent_travel(shared=True)``); None when none did within ``RECENT_MAX_AGE_S``.
    For a hop one route makes this is, to rounding, the recent hop the answer's
    ``path_travel_seconds`` hold (where the model has that feature); where subway routes share a
    stop (the Green branches on the trunk) it is many more trains, and fresher: the model's features
    keep the route's own, as the ETL computes them. The route and direction are those of the trip's
    latest position, as for the anchors (none there: None, and the answer's path is taken). Issue
    14, bench/RESULTS.md: 0-3 / 3-6 / 6-12 / 12-30 min 18.88 / 40.24 / 64.93 / 101.13 -> 18.65 /
    40.01 / 64.61 / 100.95 s."""
    if pos is None:
        return None
    done = state.recent_travel(
        pos.route_id, pos.direction_id, from_stop, to_stop, moment, RECENT_N, key, RECENT_MAX_AGE_S, shared=True
    )
    return float(np.median([tr.travel_s for tr in done])) if done else None


def position_anchor(state: NetworkState, key: str, moment: float, stop_id: str) -> float | None:
    """When trip ``key``'s vehicle will reach ``stop_id``, the stop it is heading to at ``moment``,
    from where it last reported: its report time + the median time the last vehicles took from
    the nearest point of their way there (``NetworkState.remaining_from``); not heard from for
    longer than that, it is held short of the stop and arrives as the slower of them would have
    from this point on (``_leaves``, as a vehicle standing past the usual stay). None when it is
    not on its way there, has no position, or no other vehicle passed near it recently. As
    TheTransitClock and MBTA's own predictions do, the vehicle's position beats any travel time
    from its last stop for the next one (issue 14: 12.3 s MAE against 26.6 s for the model on the
    race's in-transit next-stop rows; held vehicles: 0-3 min 19.28 -> 19.03 s, bench/RESULTS.md)."""
    pos = state.position(key, moment)
    if pos is None or pos.status == STOPPED_AT or pos.stop_id != stop_id:
        return None
    if math.isnan(pos.latitude) or math.isnan(pos.longitude):
        return None
    taken = state.remaining_from(
        pos.route_id, pos.direction_id, stop_id, pos.latitude, pos.longitude, moment, exclude=key
    )
    return _leaves(moment - pos.timestamp, taken, moment) if taken else None


def standing_anchor(state: NetworkState, key: str, moment: float, stop_id: str) -> float | None:
    """When trip ``key``'s vehicle, standing at a stop at ``moment``, will reach ``stop_id`` next:
    it leaves when the last vehicles' stays there say (``_leaves``), then takes their median time
    from leaving to arriving at ``stop_id`` (``NetworkState.dwell_and_run``). Where no vehicle went
    from that very stop recently, the last ones from the other tracks of the same place
    (``NetworkState.stops_near``: a terminal's platforms, where a train waits out its layover). None
    when it is not standing at its last arrival's visit (that stop id, or another track with the
    visit's stop sequence), or no other vehicle went that way recently. Issue 14: on the race's rows
    of standing vehicles this beats MBTA at 3-30 min ahead, where the model does not; the other
    tracks took the 12-30 min bin from 122.0 to 111.6 s (trips waiting at Oak Grove, Alewife,
    Braintree)."""
    pos = state.position(key, moment)
    last = state.last_arrival(key, moment)
    if pos is None or last is None or pos.status != STOPPED_AT or stop_id == last.stop_id:
        return None
    if pos.stop_id != last.stop_id and not pos.stop_sequence == last.stop_sequence:  # NaN: not the same
        return None  # standing at another stop than the last arrival's visit (a track of it is the same visit)
    seen = state.dwell_and_run(pos.route_id, pos.direction_id, last.stop_id, stop_id, moment, exclude=key)
    if not seen and not (math.isnan(pos.latitude) or math.isnan(pos.longitude)):
        tracks = state.stops_near(pos.route_id, pos.direction_id, pos.latitude, pos.longitude, moment)
        seen = state.dwell_and_run(
            pos.route_id, pos.direction_id, tracks | {last.stop_id, pos.stop_id}, stop_id, moment, exclude=key
        )
    if not seen:
        return _dispatched(state, key, pos, moment, stop_id)
    return _leaves(moment - last.time, [d for d, _ in seen], moment) + float(np.median([r for _, r in seen]))


def _dispatched(state: NetworkState, key: str, pos, moment: float, stop_id: str) -> float | None:
    """When a vehicle standing at its trip's first stop, where no other vehicle's stay is known, will
    reach ``stop_id``: it leaves at its scheduled start (now, if that has passed), then takes the time
    the last vehicles took from near where it stands, else from the other tracks of the place
    (``NetworkState.remaining_from``, over ``DISPATCH_RUN_MAX_AGE_S``). None when the trip
    is under way, has no scheduled start or position, or no vehicle went that way. Issue 14: a trip
    waiting at Braintree, where trains are seldom seen standing, fell back on the model, whose
    layovers come from another season's terminal times (22 min late); MBTA dispatches by schedule."""
    start = state.scheduled_start(key, moment)
    if start is None or abs(start - moment) > DISPATCH_MAX_WAIT_S:
        return None  # no schedule, or not this hour's (another day's, a wrong date, a trip long under way)
    if len(state.arrivals(key, moment)) != 1 or math.isnan(pos.latitude) or math.isnan(pos.longitude):
        return None
    route, direction = pos.route_id, pos.direction_id
    # From where it stands, else from the other tracks of the place (where other trains stood).
    places = [(pos.latitude, pos.longitude)] + [
        state.stood_at(route, direction, track, moment)
        for track in sorted(state.stops_near(route, direction, pos.latitude, pos.longitude, moment) - {pos.stop_id})
    ]
    for lat, lon in places:
        taken = state.remaining_from(
            route, direction, stop_id, lat, lon, moment, exclude=key, max_age_s=DISPATCH_RUN_MAX_AGE_S
        )
        if taken:
            return max(float(moment), start) + float(np.median(taken))
    return None


def _leaves(stood: float, stays: list[float], moment: float) -> float:
    """When a vehicle that has stood ``stood`` seconds at a stop (or, as ``position_anchor`` uses
    it, at a point short of one) leaves, from the last vehicles' stays there: after the median stay;
    once it has stood that long, after the median of what the longer stays had left at this point
    (now, if none stood longer). Issue 14: "now" alone was early for a vehicle held past the usual
    stay (standing rows: 26.8 / 44.7 / 68.8 / 99.0 s -> 25.1 / 43.5 / 66.2 / 97.3 s at 0-3 / 3-6 /
    6-12 / 12-30 min)."""
    typical = float(np.median(stays))
    if stood < typical:
        return moment + typical - stood
    longer = [d - stood for d in stays if d > stood]
    return moment + (float(np.median(longer)) if longer else 0.0)


def _position(f: pd.Series):
    from mbta_ray.serve.schemas import VehiclePosition

    if not (np.isfinite(f["vehicle_lat"]) and np.isfinite(f["vehicle_lon"])):
        return None
    return VehiclePosition.model_construct(latitude=float(f["vehicle_lat"]), longitude=float(f["vehicle_lon"]))


def _recent_travel(f, later_by: float = 0.0):
    """Other vehicles' recent u -> s travel as the API takes it, aged ``later_by`` seconds more (the
    request's moment is that much after the state's)."""
    from mbta_ray.serve.schemas import RecentTravel

    return RecentTravel.model_construct(
        median_seconds=float(f.recent_travel_s),
        vehicles=int(f.recent_travel_n),
        age_seconds=float(f.recent_travel_age_s) + later_by,
    )

"""Wake from zero: a Local Zone placement asleep at minReplicas 0, its devices served by the Region meanwhile.

Devices near the zone call the inventory API before every request; it records DeviceDemand for the
zone (and for the Region). KEDA's demand trigger takes the zone's placement 0 -> 1, the cold-start
chain runs, the inventory publisher lists the ready pod at its next heartbeat and the devices'
next inventory read sends them there. Until then the inventory lists only the Region, so the
client sends them there (longer network path, and the Region's queue and refusals). Idle for
``scaleToZeroAfterSeconds`` (KEDA's cooldownPeriod) the placement goes back to 0 and Karpenter
removes the empty node after consolidateAfter.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from scaling.engine import Placement, Series, _on_tick, run
from scaling.loop import Simulation
from scaling.traffic import Trace


@dataclass(frozen=True)
class Totals:
    requests: float
    served: float
    refused: float


class _Totals:
    def __init__(self) -> None:
        self.requests = self.served = self.refused = 0.0

    def __iadd__(self, flow: tuple[float, float, float]) -> _Totals:
        self.requests += flow[0]
        self.served += flow[1]
        self.refused += flow[2]
        return self


@dataclass(frozen=True)
class WakeResult:
    """One wake, measured from the first demand of the zone's devices (``demand_at_s``)."""

    demand_at_s: float
    woken_s: float | None  # KEDA took the zone 0 -> 1 (after the demand started)
    ready_s: float | None  # its pod answers /readyz
    listed_s: float | None  # the publisher lists it (the inventory answers it to devices)
    first_image_s: float | None  # the first image from the zone's pod
    requests: float  # the zone's devices' requests from the demand until they use the zone
    served_by_region: float
    refused: float  # by the Region (429), among those requests
    p90_ms: float  # the worst p90 those devices saw at the Region, the longer network path included
    asleep_again_s: float | None  # KEDA took it back to 0
    node_removed_s: float | None  # Karpenter removed its empty node
    node_hours: float  # the zone's node-hours over the whole run
    always_on_node_hours: float  # the same zone demand with minReplicas 1 (one pod kept all along)
    devices: list[float]  # the zone's devices' demand per tick (images/s), wherever it was served
    wakes: int  # KEDA's 0 -> 1 over the whole run
    totals: Totals  # every request of the zone's devices the Region served while the zone was not listed
    zone: Series
    region: Series


def simulate_wake(
    zone_sim: Simulation, region_sim: Simulation, zone: Trace, region: Trace, duration_s: float
) -> WakeResult:
    """Both placements tick together; the zone's demand goes to the Region while the zone is not listed."""
    dt, wake = zone_sim.dt_s, zone_sim.wake
    z = Placement(zone_sim, zone.rate(0.0), asleep=zone.rate(0.0) <= 0)
    r = Placement(region_sim, region.rate(0.0) + zone.rate(0.0))
    listed = z.ready(0.0) != []
    listed_s: float | None = 0.0 if listed else None
    demand_at = min(zone.changes(), default=0.0)
    first_image: float | None = None
    requests = served = refused = 0.0
    worst = 0.0
    total = _Totals()
    devices: list[float] = []
    for i in range(round(duration_s / dt)):
        t = i * dt
        dz, dr = zone.rate(t), region.rate(t)
        devices.append(dz)
        z.record_demand(t, dz)
        r.record_demand(t, dz + dr)
        if _on_tick(t, wake.heartbeat_s, wake.phase_s, dt):  # the publisher lists ready pods only
            now_listed = bool(z.ready(t))
            if now_listed and not listed and t >= demand_at and listed_s is None:
                listed_s = t
            listed = now_listed
        uses_zone = listed and listed_s is not None and t >= listed_s + wake.client_read_s
        zf = z.tick(t, dz if uses_zone else 0.0)
        rf = r.tick(t, dr + (0.0 if uses_zone else dz))
        if first_image is None and zf.served > 0 and t >= demand_at:
            first_image = t
        if not uses_zone and dz > 0:
            share = dz / (dz + dr)
            total += (dz * dt, rf.served * share, rf.refused * share)
            if first_image is None:
                requests += dz * dt
                served += rf.served * share
                refused += rf.refused * share
                worst = max(worst, r.series.p90_ms[-1] + wake.region_extra_latency_ms)
    woken = next((w for w in z.woken_s if w >= demand_at), None)
    ready = next((s for s, n in zip(z.series.t, z.series.ready, strict=True) if n and s >= demand_at), None)
    slept = next((s for s in z.slept_s if woken is not None and s > woken), None)
    removed = next((n.removed_s for n in z.nodes if n.removed_s is not None), None)
    return WakeResult(
        demand_at_s=demand_at,
        woken_s=woken,
        ready_s=ready,
        listed_s=listed_s,
        first_image_s=first_image,
        requests=requests,
        served_by_region=served,
        refused=refused,
        p90_ms=worst,
        asleep_again_s=slept,
        node_removed_s=removed,
        node_hours=z.node_seconds / 3600,
        always_on_node_hours=run(_kept(zone_sim), zone, duration_s).node_seconds / 3600,
        devices=devices,
        wakes=len(z.woken_s),
        totals=Totals(total.requests, total.served, total.refused),
        zone=z.series,
        region=r.series,
    )


def _kept(sim: Simulation) -> Simulation:
    return replace(sim, autoscaling=replace(sim.autoscaling, min_replicas=max(1, sim.autoscaling.min_replicas)))

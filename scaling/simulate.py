"""``python -m scaling.simulate``: traffic traces through the autoscaling loop, a table and a PNG.

Without options it compares the previous ``serving`` defaults with today's (and today's on
Bottlerocket nodes whose data volume snapshot holds the image) on a 10x step, a ramp, a flash
crowd and a cosine day, sweeps where the HPA's syncs and KEDA's polls fall for the 10x step, and
with ``--out-dir docs`` writes ``docs/scaling-simulation.md`` and
``docs/images/scaling-simulation.png``. ``--trace`` and the config options run one trace against
one config instead.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, NoReturn

from plan import prices
from scaling.engine import Result, run
from scaling.loop import (
    KUBERNETES_SCALE_DOWN,
    KUBERNETES_SCALE_UP,
    SIGNAL_LATENCY,
    SIGNAL_PENDING,
    SIGNAL_UTILIZATION,
    SIGNALS,
    Autoscaling,
    HpaRules,
    Simulation,
    SimulationError,
    pod_from_breaking_point,
)
from scaling.traffic import TRACE_KINDS, Cosine, FlashCrowd, Pulse, Pulses, Ramp, Step, Trace
from scaling.wake import WakeResult, simulate_wake

PROG: Final = "python -m scaling.simulate"
PRICED_INSTANCE: Final = "g5.xlarge"  # the node one NVIDIA serving pod fills (plan/accelerators.py)
SWEEP_POINTS: Final = 5  # phases per period in phase_sweep: 5 HPA syncs x 5 KEDA polls


@dataclass(frozen=True)
class Recommendation:
    key: str  # the serving config key
    attr: str  # its plan.config.ServingConfig field, whose default it is
    value: int | tuple[str, ...]
    reason: str

    @property
    def shown(self) -> str:
        return ", ".join(self.value) if isinstance(self.value, tuple) else str(self.value)


# The serving defaults this simulation argues for; plan.config.ServingConfig holds them
# (tests/scaling/test_simulate.py checks) and docs/scaling.md has the runs behind each reason.
RECOMMENDED: Final = (
    Recommendation(
        "kedaPollingIntervalSeconds",
        "keda_polling_interval_s",
        15,
        "the trigger caches metrics, so KEDA reads CloudWatch once per interval and every 15 s HPA sync gets its "
        "last value; 15 matches the sync (4 GetMetricData calls a minute per ScaledObject), 30 or 60 add half "
        "an interval to every reaction",
    ),
    Recommendation(
        "scaleDownWindowSeconds",
        "scale_down_window_s",
        300,
        "the HPA's scale-down stabilization window (the Kubernetes default): pods go after 300 s of lower demand; "
        "600 refuses less only when demand swings at some periods (a 60 min cosine, not 45 or 90) and costs up "
        "to 8 % more node-hours; a shorter window saves little (emptied nodes stay 10 min for consolidateAfter)",
    ),
    Recommendation(
        "targetPendingPerReplica",
        "target_pending_per_replica",
        3,
        "floor(4 / 1.1): the HPA ignores ratios within 10 %, so a target of the breaking-point concurrency (4) "
        "lets pods sit at 4.4 pending, past the SLO; 3 keeps the tolerance band below it",
    ),
    Recommendation(
        "minReplicas",
        "min_replicas",
        1,
        "a second idle pod does not shorten scale-out (the cold start does) and doubles the idle cost of every "
        "placement; production deployments should set 2 for availability. 0 (asleep when idle) suits "
        "placements whose devices the Region can serve for the ~9 min a wake takes: see the wake trace",
    ),
    Recommendation(
        "signals",
        "signals",
        (SIGNAL_PENDING,),
        "pending requests see the whole queue, so one HPA sync asks for every pod the backlog needs, and fall "
        "with the load; accelerator utilization only sees that pods are busy (at most 100/target times the pods "
        "per sync: a few syncs later on the 10x step, nothing added beside pending); a batching server's p90 is "
        "flat and does not fall as pods are added, so as a Value target it keeps the pods it reached (twice "
        "pending's node-hours on the flash crowd) or, under that flat p90, holds maxReplicas whatever the load",
    ),
    Recommendation(
        "scaleToZeroAfterSeconds",
        "scale_to_zero_after_s",
        900,
        "KEDA's cooldownPeriod for placements at 0: idle gaps shorter than ~18 min (15 + the ~3 min the last "
        "DeviceDemand point stays the newest) keep the zone awake, longer ones save its node; on the intermittent "
        "trace 300 uses 17 % fewer node-hours but sends 32 % more requests to the Region, 1800 wakes twice "
        "instead of five times and saves only 6 % against minReplicas 1",
    ),
)

# The signals compared on the standard traces (serving.signals; the HPA takes the most replicas any
# trigger asks for). Latency at two targets: the default and one above the pod's flat p90.
SIGNAL_CONFIGS: Final[tuple[tuple[str, tuple[str, ...], int | None], ...]] = (  # label, signals, latency target
    ("pending", (SIGNAL_PENDING,), None),
    ("utilization", (SIGNAL_UTILIZATION,), None),
    ("latency", (SIGNAL_LATENCY,), None),
    ("latency, target 4000 ms", (SIGNAL_LATENCY,), 4000),
    ("pending + utilization", (SIGNAL_PENDING, SIGNAL_UTILIZATION), None),
    ("pending + latency", (SIGNAL_PENDING, SIGNAL_LATENCY), None),
    ("pending + latency, target 4000 ms", (SIGNAL_PENDING, SIGNAL_LATENCY), 4000),
)
WAKE_DURATION_S: Final = 7200.0
ZONE_LEVELS: Final = ((0.3, "quiet zone (0.3 x one pod)"), (1.0, "busy zone (1 x one pod)"))
REGION_LEVEL: Final = 0.3  # the Region's own devices, x one pod
# Minutes of use with gaps of 20, 25, 40 and 20 min: the idle time decides what a cooldown saves.
INTERMITTENT_WINDOWS: Final = ((600, 1200), (2400, 2700), (3900, 4200), (6600, 7800), (9000, 9300))
INTERMITTENT_DURATION_S: Final = 10800.0
COOLDOWNS: Final = (300, 900, 1800)

# The serving defaults before the chart rendered a behaviour: target 4 (the breaking-point
# concurrency itself), no metric caching (every HPA sync read CloudWatch and pollingInterval 30
# played no part) and the Kubernetes default behaviour (cooldownPeriod 300 was inert).
PREVIOUS_DEFAULTS: Final = Autoscaling(
    target_pending_per_replica=4,
    keda_polling_interval_s=30,
    use_cached_metrics=False,
    scale_up=KUBERNETES_SCALE_UP,
    scale_down=KUBERNETES_SCALE_DOWN,
)


def standard_traces(mu: float) -> list[Trace]:
    """Demand relative to one pod's sustainable images/s: a quiet 30 %, then each kind of rise."""
    base = 0.3 * mu
    return [
        Step(base, 10.0, 600.0, name="10x step"),
        Ramp(base, 3.0 * mu, 600.0, 900.0, name="ramp to 10x in 15 min"),
        FlashCrowd(base, 3.0 * mu, 600.0, 60.0, 600.0, 300.0, name="flash crowd (10x, 10 min)"),
        Cosine(1.5 * mu, 1.2 * mu, 3600.0, name="cosine (period 1 h)"),
    ]


def signal_runs(current: Simulation, traces: Sequence[Trace], duration_s: float) -> list[tuple[str, Result]]:
    """Every trace through every signal configuration (the rest of ``current`` kept)."""
    rows = []
    for label, signals, latency_target_ms in SIGNAL_CONFIGS:
        a = replace(current.autoscaling, signals=signals)
        if latency_target_ms is not None:
            a = replace(a, latency_target_ms=latency_target_ms)
        sim = replace(current, autoscaling=a)
        rows += [(label, run(sim, trace, duration_s)) for trace in traces]
    return rows


def signals_table(rows: Sequence[tuple[str, Result]], price: prices.Price) -> str:
    lines = [
        f"| signals | trace | time to absorb | refused (429) | worst p90 | node-hours | {price.instance_type} cost |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, r in rows:
        ab = r.absorptions[0] if r.absorptions else None
        absorb = _seconds(ab.absorbed_s) if ab else "n/a"
        share = 100 * r.refused / r.demand if r.demand else 0.0
        hours = r.node_seconds / 3600
        lines.append(
            f"| {label} | {r.trace} | {absorb} | {r.refused:.0f} ({share:.1f} %) | {max(r.series.p90_ms) / 1000:.1f} s "
            f"| {hours:.2f} | {hours * price.usd_per_hour:.2f} USD |"
        )
    return "\n".join(lines)


def _asleep(sim: Simulation, scale_to_zero_after_s: int | None = None) -> Simulation:
    a = replace(sim.autoscaling, min_replicas=0)
    if scale_to_zero_after_s is not None:
        a = replace(a, scale_to_zero_after_s=scale_to_zero_after_s)
    return replace(sim, autoscaling=a)


def _snapshot(sim: Simulation) -> Simulation:
    return replace(sim, cold_start=replace(sim.cold_start, snapshot=True))


def wake_runs(current: Simulation) -> list[tuple[str, str, WakeResult]]:
    """A Local Zone placement at minReplicas 0 woken by its devices at 10 min, idle again at 50 min."""
    mu = current.pod.images_per_s
    region = Step(REGION_LEVEL * mu, 1.0, 0.0, name="Region's own devices")
    rows = []
    for level, name in ZONE_LEVELS:
        zone = Pulse(level * mu, 600.0, 3000.0, name=name)
        for label, sim in (("defaults", current), ("defaults + snapshot", _snapshot(current))):
            rows.append((name, label, simulate_wake(_asleep(sim), sim, zone, region, WAKE_DURATION_S)))
    return rows


def cooldown_runs(current: Simulation) -> list[tuple[int, str, WakeResult]]:
    """The intermittent zone at each scaleToZeroAfterSeconds, with and without the snapshot."""
    mu = current.pod.images_per_s
    zone = Pulses(ZONE_LEVELS[0][0] * mu, INTERMITTENT_WINDOWS, name="intermittent zone")
    region = Step(REGION_LEVEL * mu, 1.0, 0.0, name="Region's own devices")
    rows = []
    for cooldown in COOLDOWNS:
        for label, sim in (("defaults", current), ("defaults + snapshot", _snapshot(current))):
            woken = simulate_wake(
                _asleep(sim, scale_to_zero_after_s=cooldown), sim, zone, region, INTERMITTENT_DURATION_S
            )
            rows.append((cooldown, label, woken))
    return rows


def _after(w: WakeResult, at: float | None) -> str:
    return "never" if at is None else f"+{at - w.demand_at_s:.0f} s"


def wake_table(rows: Sequence[tuple[str, str, WakeResult]], price: prices.Price) -> str:
    lines = [
        "| zone demand | config | KEDA wakes it | pod ready | first image from the zone | devices' requests meanwhile "
        "| refused by the Region | worst p90 meanwhile | back to 0 | node-hours (min 0 / min 1) "
        "| cost (min 0 / min 1) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for zone, label, w in rows:
        share = 100 * w.refused / w.requests if w.requests else 0.0
        lines.append(
            f"| {zone} | {label} | {_after(w, w.woken_s)} | {_after(w, w.ready_s)} | {_after(w, w.first_image_s)} "
            f"| {w.requests:.0f} | {w.refused:.0f} ({share:.1f} %) | {w.p90_ms / 1000:.1f} s "
            f"| {_after(w, w.asleep_again_s)} | {w.node_hours:.2f} / {w.always_on_node_hours:.2f} "
            f"| {w.node_hours * price.usd_per_hour:.2f} / {w.always_on_node_hours * price.usd_per_hour:.2f} USD |"
        )
    return "\n".join(lines)


def cooldown_table(rows: Sequence[tuple[int, str, WakeResult]]) -> str:
    lines = [
        "| scaleToZeroAfterSeconds | config | wakes | requests the Region served meanwhile | refused "
        "| node-hours (min 0 / min 1) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for cooldown, label, w in rows:
        t = w.totals
        lines.append(
            f"| {cooldown} | {label} | {w.wakes} | {t.requests:.0f} | {t.refused:.0f} "
            f"| {w.node_hours:.2f} / {w.always_on_node_hours:.2f} |"
        )
    return "\n".join(lines)


def phase_sweep(sim: Simulation, trace: Trace, duration_s: float, points: int = SWEEP_POINTS) -> list[float | None]:
    """Time to absorb the trace's first rise with the HPA's syncs (and KEDA's polls, when cached) at
    ``points`` evenly spaced phases of their periods each: nothing in a cluster aligns them."""
    a = sim.autoscaling
    hpa_phases = [a.hpa_sync_s * i / points for i in range(points)]
    poll_phases: list[float | None] = (
        [a.keda_polling_interval_s * i / points for i in range(points)] if a.use_cached_metrics else [None]
    )
    out: list[float | None] = []
    for hpa_phase in hpa_phases:
        for poll_phase in poll_phases:
            phased = replace(a, hpa_sync_phase_s=hpa_phase, keda_poll_phase_s=poll_phase)
            result = run(replace(sim, autoscaling=phased), trace, duration_s)
            out.append(result.absorptions[0].absorbed_s if result.absorptions else None)
    return out


def sweep_table(rows: Sequence[tuple[str, list[float | None]]]) -> str:
    lines = ["| config | runs | fastest | mean | slowest | not absorbed |", "|---|---:|---:|---:|---:|---:|"]
    for label, times in rows:
        absorbed = [t for t in times if t is not None]
        if absorbed:
            fastest, mean, slowest = min(absorbed), statistics.fmean(absorbed), max(absorbed)
            figures = f"{fastest:.0f} s | {mean:.0f} s | {slowest:.0f} s"
        else:
            figures = "n/a | n/a | n/a"
        lines.append(f"| {label} | {len(times)} | {figures} | {len(times) - len(absorbed)} |")
    return "\n".join(lines)


# --- Table ---------------------------------------------------------------------------------
def _seconds(value: float | None) -> str:
    return "not absorbed" if value is None else f"{value:.0f} s"


def table(rows: Sequence[tuple[str, Result]], price: prices.Price) -> str:
    head = (
        "| trace | config | time to absorb | capacity covers demand | refused (429) | worst p90 | peak ready pods "
        f"| node-hours | {price.instance_type} cost |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for label, r in rows:
        ab = r.absorptions[0] if r.absorptions else None
        absorb = _seconds(ab.absorbed_s) if ab else "n/a (no single rise)"
        covered = _seconds(ab.capacity_s) if ab else "n/a"
        share = 100 * r.refused / r.demand if r.demand else 0.0
        hours = r.node_seconds / 3600
        worst = max(r.series.p90_ms) / 1000
        lines.append(
            f"| {r.trace} | {label} | {absorb} | {covered} | {r.refused:.0f} ({share:.1f} %) | "
            f"{worst:.1f} s | {max(r.series.ready)} | {hours:.2f} | {hours * price.usd_per_hour:.2f} USD |"
        )
    return "\n".join(lines)


def parameters(sim: Simulation) -> str:
    a, m, c, p = sim.autoscaling, sim.metrics, sim.cold_start, sim.pod
    return "\n".join(
        [
            f"- pod: {p.images_per_s:g} images/s at {p.concurrency:g} pending, p90 {p.p90_ms:g} ms (the SLO), "
            f"refuses past {p.capacity} (queue {p.queue_size} + batch {p.max_batch})",
            f"- cold start: Karpenter {c.karpenter_decision_s:g} s + node {c.node_launch_s:g} s + image pull "
            f"{c.image_pull_s:g} s (snapshot {c.image_pull_from_snapshot_s:g} s) + model load {c.model_load_s:g} s "
            f"+ warm-up {c.warmup_s:g} s = {c.new_node_s:g} s on a new node",
            f"- metric: each pod's mean pending every {m.publish_interval_s} s; KEDA reads Sum over "
            f"{m.stat_period_s} s, end offset {m.end_time_offset_s} s, collection {m.collection_time_s} s",
            f"- KEDA: {'cached metrics, CloudWatch read every ' if a.use_cached_metrics else 'no caching, '}"
            f"{a.keda_polling_interval_s} s{'' if a.use_cached_metrics else ' polling (off the 1..N path)'}",
            f"- HPA: sync {a.hpa_sync_s} s, tolerance {a.tolerance:.0%}, scale-up "
            f"{_rules(a.scale_up)}, scale-down {_rules(a.scale_down)}; maxReplicas {a.max_replicas}",
            f"- nodes: one serving pod each, empty nodes consolidated after {sim.nodes.consolidate_after_s:g} s",
        ]
    )


def _rules(rules: HpaRules) -> str:
    policies = " or ".join(
        f"{p.value}{' %' if p.kind == 'Percent' else ' pods'}/{p.period_s} s" for p in rules.policies
    )
    return f"{policies} (window {rules.stabilization_window_s} s)"


# --- PNG -----------------------------------------------------------------------------------
def _figure(rows: int, cols: int, figsize: tuple[float, float]) -> tuple[Any, Any]:
    """A headless (Agg) figure of rows x cols panels sharing each column's x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, cols, figsize=figsize, sharex="col", squeeze=False)


def _save(fig: Any, axes: Any, ylabels: Sequence[str], path: Path) -> None:
    """Label each row on its first panel, lay the figure out and write it as a PNG."""
    import matplotlib.pyplot as plt

    for row, name in enumerate(ylabels):
        axes[row][0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot(runs: dict[str, list[tuple[str, Result]]], sim: Simulation, path: Path) -> None:
    traces = list(runs)
    fig, axes = _figure(5, len(traces), (4.2 * len(traces), 12))
    rows = (
        "demand and capacity (images/s)",
        "pods (ready solid, set dashed)",
        "queue (pending requests)",
        "p90 latency (s, estimate)",
        "refused (requests/s)",
    )
    for col, trace in enumerate(traces):
        for n, (label, r) in enumerate(runs[trace]):
            s = r.series
            minutes = [t / 60 for t in s.t]
            color = f"C{n}"
            if n == 0:
                axes[0][col].plot(minutes, s.demand, color="black", lw=1.2, label="demand")
            axes[0][col].plot(minutes, [x * sim.pod.images_per_s for x in s.ready], color=color, lw=1, label=label)
            axes[1][col].plot(minutes, s.ready, color=color, lw=1.2, label=label)
            axes[1][col].plot(minutes, s.replicas, color=color, lw=0.8, ls="--")
            axes[2][col].plot(minutes, s.backlog, color=color, lw=1)
            axes[3][col].plot(minutes, [min(x, 1e6) / 1000 for x in s.p90_ms], color=color, lw=1)
            axes[4][col].plot(minutes, s.refused, color=color, lw=1)
        axes[3][col].axhline(sim.slo_ms / 1000, color="grey", lw=0.8, ls=":")
        axes[0][col].set_title(trace, fontsize=10)
        axes[4][col].set_xlabel("minutes")
    axes[0][0].legend(fontsize=7, loc="upper left")
    _save(fig, axes, rows, path)


def plot_wake(rows: Sequence[tuple[str, str, WakeResult]], sim: Simulation, path: Path) -> None:
    """Per zone demand: where the zone's devices were served, pods of both placements, their p90, refusals."""
    zones = list(dict.fromkeys(zone for zone, _, _ in rows))
    fig, axes = _figure(4, len(zones), (5.5 * len(zones), 10))
    names = (
        "zone demand; served by the zone (images/s)",
        "ready pods (zone solid, Region dashed)",
        "p90 the zone's devices see (s)",
        "refused by the Region (requests/s)",
    )
    extra = sim.wake.region_extra_latency_ms
    for col, zone in enumerate(zones):
        for n, (_, label, w) in enumerate(r for r in rows if r[0] == zone):
            z, reg = w.zone, w.region
            minutes = [t / 60 for t in z.t]
            color = f"C{n}"
            if n == 0:
                axes[0][col].plot(minutes, w.devices, color="black", lw=1.2, label="the zone's devices")
            axes[0][col].plot(minutes, z.served, color=color, lw=1, label=f"{label}: served by the zone")
            axes[1][col].plot(minutes, z.ready, color=color, lw=1.2, label=label)
            axes[1][col].plot(minutes, reg.ready, color=color, lw=0.8, ls="--")
            seen = [
                (zp if zd > 0 else rp + extra) / 1000 if dev > 0 else float("nan")
                for zp, zd, rp, dev in zip(z.p90_ms, z.demand, reg.p90_ms, w.devices, strict=True)
            ]
            axes[2][col].plot(minutes, [min(x, 1e3) for x in seen], color=color, lw=1)
            axes[3][col].plot(minutes, reg.refused, color=color, lw=1)
        axes[2][col].axhline(sim.slo_ms / 1000, color="grey", lw=0.8, ls=":")
        axes[0][col].set_title(zone, fontsize=10)
        axes[3][col].set_xlabel("minutes")
    axes[0][0].legend(fontsize=7, loc="upper right")
    axes[1][0].legend(fontsize=7, loc="upper right")
    _save(fig, axes, names, path)


# --- CLI -----------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise SimulationError(" ".join(message.split()))


def _number(kind: Callable[[str], float], *, zero: bool = False) -> Callable[[str], float]:
    allowed = "a number >= 0" if zero else "a number > 0"

    def convert(raw: str) -> float:
        try:
            value = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not allowed; allowed: {allowed}") from None
        if not ((value >= 0 if zero else value > 0) and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{raw!r} is not allowed; allowed: {allowed}")
        return value

    return convert


def parser() -> _Parser:
    p = _Parser(prog=PROG, description=__doc__.splitlines()[0] if __doc__ else None)
    num, whole = _number(float), _number(int)
    p.add_argument("--out-dir", type=Path, help="write scaling-simulation.md and images/scaling-simulation.png here")
    p.add_argument("--breaking-point", type=Path, help="--json output of python -m runtime.bench.breaking_point")
    p.add_argument("--duration-s", type=num, default=7200.0)
    p.add_argument("--trace", choices=TRACE_KINDS, help="run one trace (default: the four standard ones)")
    p.add_argument("--base", type=num, help="demand before the rise, images/s (default 0.3 x one pod)")
    p.add_argument("--factor", type=num, default=10.0, help="step: demand after / before")
    p.add_argument("--peak", type=num, help="ramp, flash: peak images/s (default 10 x base)")
    p.add_argument("--at-s", type=num, default=600.0, help="when the rise starts")
    p.add_argument("--ramp-s", type=num, default=900.0)
    p.add_argument("--amplitude", type=num, help="cosine: swing around the mean, images/s")
    p.add_argument("--period-s", type=num, default=3600.0, help="cosine period")
    p.add_argument("--rise-s", type=num, default=60.0)
    p.add_argument("--hold-s", type=num, default=600.0)
    p.add_argument("--decay-s", type=num, default=300.0)
    p.add_argument("--min-replicas", type=_number(int, zero=True), help="0: asleep until its demand wakes it")
    p.add_argument("--max-replicas", type=whole)
    p.add_argument("--target", type=whole, help="targetPendingPerReplica")
    p.add_argument("--polling-s", type=whole, help="kedaPollingIntervalSeconds")
    p.add_argument(
        "--cached-metrics",
        action=argparse.BooleanOptionalAction,
        help="useCachedMetrics (the chart sets it): the HPA reads KEDA's last poll; --no-cached-metrics: CloudWatch",
    )
    p.add_argument(
        "--scale-down-window-s",
        "--cooldown-s",  # its name before serving.kedaCooldownPeriodSeconds was renamed
        type=_number(int, zero=True),
        help="scaleDownWindowSeconds: the HPA's scaleDown.stabilizationWindowSeconds",
    )
    p.add_argument("--snapshot", action="store_true", help="Bottlerocket data volume snapshot holds the image")
    p.add_argument("--signals", type=_signals, help=f"serving.signals, comma-separated: {', '.join(SIGNALS)}")
    p.add_argument("--utilization-target", type=whole, help="utilizationTargetPercent")
    p.add_argument("--latency-target-ms", type=whole, help="latencyTargetMs")
    p.add_argument("--scale-to-zero-after-s", type=whole, help="scaleToZeroAfterSeconds (KEDA's cooldownPeriod)")
    return p


def _signals(raw: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in raw.split(","))
    if not names or any(n not in SIGNALS for n in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{raw!r} is not allowed; allowed: distinct names of {', '.join(SIGNALS)}")
    return names


def _single_trace(args: argparse.Namespace, mu: float) -> Trace:
    base = args.base if args.base is not None else 0.3 * mu
    peak = args.peak if args.peak is not None else 10 * base
    match args.trace:
        case "step":
            return Step(base, args.factor, args.at_s, name=f"{args.factor:g}x step")
        case "ramp":
            return Ramp(base, peak, args.at_s, args.ramp_s)
        case "flash":
            return FlashCrowd(base, peak, args.at_s, args.rise_s, args.hold_s, args.decay_s)
        case _:
            amplitude = args.amplitude if args.amplitude is not None else 0.8 * base
            return Cosine(base, min(amplitude, base), args.period_s)


def _configured(sim: Simulation, args: argparse.Namespace) -> Simulation:
    """``sim`` with the config options given on the command line (those not given keep its values)."""
    a = sim.autoscaling
    changes = {
        "min_replicas": args.min_replicas,
        "max_replicas": args.max_replicas,
        "target_pending_per_replica": args.target,
        "keda_polling_interval_s": args.polling_s,
        "use_cached_metrics": args.cached_metrics,
        "signals": args.signals,
        "utilization_target_percent": args.utilization_target,
        "latency_target_ms": args.latency_target_ms,
        "scale_to_zero_after_s": args.scale_to_zero_after_s,
    }
    a = replace(a, **{k: v for k, v in changes.items() if v is not None})
    if args.scale_down_window_s is not None:
        a = replace(a, scale_down=replace(a.scale_down, stabilization_window_s=int(args.scale_down_window_s)))
    cold = replace(sim.cold_start, snapshot=True) if args.snapshot else sim.cold_start
    return replace(sim, autoscaling=a, cold_start=cold)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        base = Simulation()
        if args.breaking_point is not None:
            base = replace(base, pod=pod_from_breaking_point(args.breaking_point, base.pod))
        mu = base.pod.images_per_s
        sweeps: list[tuple[str, list[float | None]]] = []
        if args.trace is not None:
            configs = [("configured", _configured(base, args))]
            traces = [_single_trace(args, mu)]
        else:
            current = _configured(base, args)  # flags given win over the defaults
            configs = [
                ("previous defaults", _configured(replace(base, autoscaling=PREVIOUS_DEFAULTS), args)),
                ("defaults", current),
                ("defaults + snapshot", replace(current, cold_start=replace(current.cold_start, snapshot=True))),
            ]
            traces = standard_traces(mu)
            step = traces[0]
            sweeps = [(label, phase_sweep(sim, step, args.duration_s)) for label, sim in configs]
            signal_rows = signal_runs(current, traces, args.duration_s)
            wakes = wake_runs(current)
            cooldowns = cooldown_runs(current)
        runs: dict[str, list[tuple[str, Result]]] = {}
        for trace in traces:
            runs[trace.name] = [(label, run(sim, trace, args.duration_s)) for label, sim in configs]
    except SimulationError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    price = prices.on_demand_price(PRICED_INSTANCE, prices.REFERENCE_REGION)
    rows = [row for trace in runs.values() for row in trace]
    text = table(rows, price)
    print(text)
    lines = [
        "<!-- written by `make simulate` (python -m scaling.simulate --out-dir docs): do not edit -->",
        "",
        f"Simulated {args.duration_s / 3600:g} h per trace, one-second ticks. Parameters:",
        "",
        parameters(configs[0][1] if args.trace is not None else configs[1][1]),  # "configured" or "defaults"
        "",
        text,
        "",
        f"Cost: node-hours x {price.instance_type} at {price.usd_per_hour:g} USD/h ({price.region}, {price.as_of}).",
    ]
    if sweeps:
        sweep = sweep_table(sweeps)
        print(sweep)
        lines += [
            "",
            f"Time to absorb the {traces[0].name} with the HPA's syncs and, with cached metrics, KEDA's polls at "
            f"{SWEEP_POINTS} evenly spaced phases of their periods each (the rows above use half a period):",
            "",
            sweep,
        ]
    if args.trace is None:
        lines += _later_sections(current, signal_rows, wakes, cooldowns, price)
        lines += ["", "## Recommended serving defaults", "", "plan/config/sections.py ServingConfig holds them:", ""]
        lines += [f"- `{r.key}` = {r.shown}: {r.reason}" for r in RECOMMENDED]
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "scaling-simulation.md").write_text("\n".join(lines) + "\n")
        images = args.out_dir / "images"
        plot(runs, base, images / "scaling-simulation.png")
        written = [args.out_dir / "scaling-simulation.md", images / "scaling-simulation.png"]
        if args.trace is None:
            by_trace: dict[str, list[tuple[str, Result]]] = {}
            for label, r in signal_rows:
                by_trace.setdefault(r.trace, []).append((label, r))
            plot(by_trace, base, images / "scaling-simulation-signals.png")
            plot_wake(wakes, current, images / "scaling-simulation-wake.png")
            written += [images / "scaling-simulation-signals.png", images / "scaling-simulation-wake.png"]
        print(f"wrote {', '.join(str(w) for w in written)}")
    return 0


def _later_sections(
    current: Simulation,
    signal_rows: Sequence[tuple[str, Result]],
    wakes: Sequence[tuple[str, str, WakeResult]],
    cooldowns: Sequence[tuple[int, str, WakeResult]],
    price: prices.Price,
) -> list[str]:
    """The scaling signals compared, the wake-from-zero trace and the cooldown sweep (printed too)."""
    a, wake, cold = current.autoscaling, current.wake, current.cold_start
    signals = signals_table(signal_rows, price)
    woken = wake_table(wakes, price)
    swept = cooldown_table(cooldowns)
    for text in (signals, woken, swept):
        print(text)
    return [
        "",
        "## Scaling signals",
        "",
        f"The same traces with each trigger set (serving.signals): pending target {a.target_pending_per_replica}, "
        f"utilization target {a.utilization_target_percent} % (a pod's busy share: its images/s over its "
        f"sustainable {current.pod.images_per_s:g}, at most 100 %, the pods' Average per "
        f"{current.metrics.stat_period_s} s), latency target {a.latency_target_ms} ms unless the row says (p90 of "
        f"the requests' latencies over {current.metrics.stat_period_s} s, as the pods publish InferenceLatencyMs). "
        "Pending is an AverageValue target (ceil(sum / target)), utilization and latency Value targets "
        "(ceil(current pods x metric / target)), as the chart renders them; with several the HPA takes the "
        "largest count.",
        "",
        signals,
        "",
        "## Wake from zero",
        "",
        f"A Local Zone placement at minReplicas 0; its devices start at 10 min and stop at 50 min, beside "
        f"{REGION_LEVEL:g} x one pod of the Region's own devices (Region at minReplicas {a.min_replicas}). "
        f"DeviceDemand reaches CloudWatch {wake.demand_metric.ingest_delay_s} s after the call (estimate), KEDA "
        f"polls every {a.keda_polling_interval_s} s and wakes the placement at the first value > 0; the cold "
        f"start is {cold.new_node_s:g} s on a new node; the publisher lists ready pods every {wake.heartbeat_s:g} s "
        "and the client reads the inventory before every request. Meanwhile the inventory lists only the Region: "
        f"its p90 plus {wake.region_extra_latency_ms:g} ms of longer network path (estimate), and its refusals "
        f"when its queues fill. Times are from the devices' first request; back to 0 after "
        f"scaleToZeroAfterSeconds ({a.scale_to_zero_after_s} s) without demand or pending requests. min 1: the "
        "same zone demand on a placement that keeps one pod.",
        "",
        woken,
        "",
        f"An intermittent zone ({ZONE_LEVELS[0][0]:g} x one pod in windows of 5 to 20 min, idle gaps of 20 to 40 "
        f"min, {INTERMITTENT_DURATION_S / 3600:g} h) at each scaleToZeroAfterSeconds:",
        "",
        swept,
        "",
        f"Cost: node-hours x {price.instance_type} at {price.usd_per_hour:g} USD/h ({price.region}, {price.as_of}); "
        "a Local Zone's own price is higher (set it in onDemandPrices).",
    ]


if __name__ == "__main__":
    sys.exit(main())

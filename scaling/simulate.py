"""``python -m scaling.simulate``: traffic traces through the autoscaling loop, a table and a PNG.

Without options it compares today's ``serving`` defaults with the recommended ones (and the
recommended ones on Bottlerocket nodes whose data volume snapshot holds the image) on a 10x step,
a ramp, a flash crowd and a cosine day, and with ``--out-dir docs`` writes
``docs/scaling-simulation.md`` and ``docs/images/scaling-simulation.png``. ``--trace`` and the
config options run one trace against one config instead.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, NoReturn

from scaling.engine import Result, run
from scaling.model import HpaRules, ModelError, Simulation, pod_from_breaking_point
from scaling.traffic import TRACE_KINDS, Cosine, FlashCrowd, Ramp, Step, Trace
from spec import prices

PROG: Final = "python -m scaling.simulate"
PRICED_INSTANCE: Final = "g5.xlarge"  # the node one NVIDIA serving pod fills (spec/accelerators.py)


@dataclass(frozen=True)
class Recommendation:
    key: str  # the serving config key
    value: int
    reason: str


# The values this simulation argues for (docs/scaling.md has the runs behind each reason).
RECOMMENDED: Final = (
    Recommendation(
        "kedaPollingIntervalSeconds",
        30,
        "unchanged: the trigger does not cache metrics, so the HPA reads CloudWatch every 15 s sync and "
        "pollingInterval is off the 1..N scale-out path (it only paces 0<->1, which minReplicas >= 1 excludes); "
        "with useCachedMetrics a 60 s poll would add half a minute on average",
    ),
    Recommendation(
        "kedaCooldownPeriodSeconds",
        300,
        "unchanged and inert: KEDA applies it only to scaling to 0; scale-in follows the HPA's 300 s "
        "stabilization window, which the chart leaves at the Kubernetes default",
    ),
    Recommendation(
        "targetPendingPerReplica",
        3,
        "floor(4 / 1.1): the HPA ignores ratios within 10 %, so a target of the breaking-point concurrency (4) "
        "lets pods sit at 4.4 pending, past the SLO; 3 keeps the tolerance band below it",
    ),
    Recommendation(
        "minReplicas",
        1,
        "unchanged: a second idle pod does not shorten scale-out (the cold start does) and doubles the idle "
        "cost of every placement; production deployments should set 2 for availability",
    ),
)


def recommended(sim: Simulation) -> Simulation:
    values = {r.key: r.value for r in RECOMMENDED}
    return replace(
        sim,
        autoscaling=replace(
            sim.autoscaling,
            keda_polling_interval_s=values["kedaPollingIntervalSeconds"],
            keda_cooldown_period_s=values["kedaCooldownPeriodSeconds"],
            target_pending_per_replica=values["targetPendingPerReplica"],
            min_replicas=values["minReplicas"],
        ),
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
def plot(runs: dict[str, list[tuple[str, Result]]], sim: Simulation, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(runs)
    fig, axes = plt.subplots(5, len(traces), figsize=(4.2 * len(traces), 12), sharex="col", squeeze=False)
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
    for row, name in enumerate(rows):
        axes[row][0].set_ylabel(name, fontsize=8)
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --- CLI -----------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ModelError(" ".join(message.split()))


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def convert(raw: str) -> float:
        try:
            value = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not allowed; allowed: a number > 0") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{raw!r} is not allowed; allowed: a number > 0")
        return value

    return convert


def parser() -> _Parser:
    p = _Parser(prog=PROG, description=__doc__.splitlines()[0] if __doc__ else None)
    num, whole = _positive(float), _positive(int)
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
    p.add_argument("--min-replicas", type=whole)
    p.add_argument("--max-replicas", type=whole)
    p.add_argument("--target", type=whole, help="targetPendingPerReplica")
    p.add_argument("--polling-s", type=whole, help="kedaPollingIntervalSeconds")
    p.add_argument("--cached-metrics", action="store_true", help="useCachedMetrics: the HPA reads KEDA's last poll")
    p.add_argument("--scale-down-window-s", type=whole, help="HPA scaleDown.stabilizationWindowSeconds")
    p.add_argument("--snapshot", action="store_true", help="Bottlerocket data volume snapshot holds the image")
    return p


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
    a = sim.autoscaling
    changes = {
        "min_replicas": args.min_replicas,
        "max_replicas": args.max_replicas,
        "target_pending_per_replica": args.target,
        "keda_polling_interval_s": args.polling_s,
    }
    a = replace(a, **{k: v for k, v in changes.items() if v is not None})
    if args.cached_metrics:
        a = replace(a, use_cached_metrics=True)
    if args.scale_down_window_s is not None:
        a = replace(a, scale_down=replace(a.scale_down, stabilization_window_s=args.scale_down_window_s))
    cold = replace(sim.cold_start, snapshot=True) if args.snapshot else sim.cold_start
    return replace(sim, autoscaling=a, cold_start=cold)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        base = Simulation()
        if args.breaking_point is not None:
            base = replace(base, pod=pod_from_breaking_point(args.breaking_point, base.pod))
        mu = base.pod.images_per_s
        if args.trace is not None:
            configs = [("configured", _configured(base, args))]
            traces = [_single_trace(args, mu)]
        else:
            chosen = _configured(recommended(base), args)  # flags given win over the recommendation
            configs = [("today's defaults", _configured(base, args)), ("recommended", chosen)]
            configs.append(
                ("recommended + snapshot", replace(chosen, cold_start=replace(chosen.cold_start, snapshot=True)))
            )
            traces = standard_traces(mu)
        runs: dict[str, list[tuple[str, Result]]] = {}
        for trace in traces:
            runs[trace.name] = [(label, run(sim, trace, args.duration_s)) for label, sim in configs]
    except ModelError as exc:
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
        parameters(base),
        "",
        text,
        "",
        f"Cost: node-hours x {price.instance_type} at {price.usd_per_hour:g} USD/h ({price.region}, {price.as_of}).",
    ]
    if args.trace is None:
        lines += ["", "Recommended serving defaults:", ""]
        lines += [f"- `{r.key}` = {r.value}: {r.reason}" for r in RECOMMENDED]
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "scaling-simulation.md").write_text("\n".join(lines) + "\n")
        plot(runs, base, args.out_dir / "images" / "scaling-simulation.png")
        print(
            f"wrote {args.out_dir / 'scaling-simulation.md'} and {args.out_dir / 'images' / 'scaling-simulation.png'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

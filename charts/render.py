"""Write every chart as plain YAML, one file per chart: ``python -m charts.render --out dist/manifests``.

For ``kubectl apply`` and GitOps users: the charts of one deployment (``-c deployment=<name>``,
default dev), its config read exactly as ``cdk synth`` reads it (cdk.json, deployments/<name>.json,
``-c key=value`` overrides).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import cdk8s

from charts.build import add_charts
from plan.config import ConfigError, cli_context
from plan.deployments import load_plan

ROOT = Path(__file__).resolve().parents[1]


def render(config_context: dict[str, object], out: Path) -> list[Path]:
    """Synthesize into ``out`` (replaced) and return the files written, in apply order."""
    config = load_plan(config_context).selected.config
    if out.exists():
        shutil.rmtree(out)
    app = cdk8s.App(
        outdir=str(out), output_file_extension=".yaml", yaml_output_type=cdk8s.YamlOutputType.FILE_PER_CHART
    )
    add_charts(app, config)
    app.synth()  # cdk8s orders the files by chart dependency: 0000-... applies first
    return sorted(out.glob("*.yaml"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m charts.render", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "manifests")
    parser.add_argument("-c", "--context", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        context = cli_context([arg for pair in args.context for arg in ("-c", pair)])
        files = render(context, args.out)
    except ConfigError as err:
        for line in err.lines():
            print(line, file=sys.stderr)
        return 2
    for path in files:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

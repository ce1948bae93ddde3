"""Configuration errors through the CLI path (``python app.py -c key=value``): exit code 2, one
line on stderr per bad value naming the key and the value, every bad value in one run, no traceback.

These stop at config time, before any construct is built, so each run is short.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

from tests.conftest import ROOT

CASES = [
    # (override, key the message must name, value it must name)
    ("localZones=us-east-1-bos-1a", "localZones", "us-east-1-bos-1a"),  # a Local Zone of another Region
    ("clientCidrs=10.0.0.300/24", "clientCidrs", "10.0.0.300/24"),  # malformed CIDR
    ("clientCidrs=10.0.0.1/24", "clientCidrs", "10.0.0.1/24"),  # host bits set
    ("clientCidrs=0.0.0.0/0", "clientCidrs", "0.0.0.0/0"),  # the Internet, without allowPublicNodePorts=true
    ("clientCidrs=::/0", "clientCidrs", "::/0"),
    ("accelerators=nvidia,tpu", "accelerators", "tpu"),  # unknown accelerator
    ("availabilityZones=", "availabilityZones", "''"),  # empty AZ list
    ("localZones=us-west-2-lax-1a:h100", "localZones[us-west-2-lax-1a].instanceFamilies", "h100"),  # no such family
    ("vpcCidr=10.0.0.0/33", "vpcCidr", "10.0.0.0/33"),
    ("tls.certificateArn=arn:aws:acm:us-east-1:111111111111:certificate/x", "tls.certificateArn", "us-east-1"),
]
THREE_BAD = ("-c", "vpcCidr=10.0.0.0/33", "-c", "localZones=us-west-2-lax-1a:h100", "-c", "auth.mode=open")
# Bad values at every level: a value, a list item, an object's key, a rule of an object, a rule of the app.
EIGHT_BAD = tuple(
    arg
    for pair in (
        "availabilityZones=us-west-2a",
        "serving.maxBatch=0",
        "serving.height=100",
        "clientCidrs=not-a-cidr",
        "accelerators=nvidia,tpu",
        "serving.minReplicas=9",
        "alarms.emails=bad",
        "endpointAccess=open",
    )
    for arg in ("-c", pair)
)


OPT_IN = ("-c", "clientCidrs=0.0.0.0/0", "-c", "allowPublicNodePorts=true", "-c", "accelerators=tpu")


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def runs() -> dict[tuple[str, ...], Run]:
    """Every CLI run of this module, started at once: each is mostly interpreter start-up."""
    env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    argvs = [("-c", override) for override, _, _ in CASES] + [OPT_IN, THREE_BAD, EIGHT_BAD]
    procs = {
        argv: subprocess.Popen(
            [sys.executable, "app.py", *argv],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for argv in argvs
    }
    results: dict[tuple[str, ...], Run] = {}
    for argv, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[argv] = Run(proc.returncode, stdout, stderr)
    return results


@pytest.mark.parametrize(("override", "key", "value"), CASES, ids=[case[0] for case in CASES])
def test_bad_config_stops_synth_with_one_line(
    runs: dict[tuple[str, ...], Run], override: str, key: str, value: str
) -> None:
    result = runs[("-c", override)]
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert key in lines[0] and value in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert "allowed" in lines[0]  # says what is allowed


def test_public_node_ports_need_the_explicit_opt_in(runs: dict[tuple[str, ...], Run]) -> None:
    """0.0.0.0/0 passes config once allowPublicNodePorts=true (checked without synthesizing:
    an unrelated bad key afterwards proves config got past clientCidrs)."""
    result = runs[OPT_IN]
    assert result.returncode == 2
    assert "accelerators" in result.stderr and "clientCidrs" not in result.stderr


def test_three_bad_values_are_three_lines_of_one_run(runs: dict[tuple[str, ...], Run]) -> None:
    result = runs[THREE_BAD]
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: invalid config ") for line in lines), lines
    assert {"vpcCidr=", "instanceFamilies=", "auth.mode="} == {
        key for key in ("vpcCidr=", "instanceFamilies=", "auth.mode=") for line in lines if key in line
    }
    assert "an IPv4 CIDR from /16 to /20" in result.stderr and "IPv6" not in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_eight_bad_values_are_eight_lines_of_one_run(runs: dict[tuple[str, ...], Run]) -> None:
    result = runs[EIGHT_BAD]
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 8 and all(line.startswith("error: invalid config ") for line in lines), lines
    for pair in EIGHT_BAD[1::2]:
        key, _, value = pair.partition("=")
        (line,) = [line for line in lines if line.startswith(f"error: invalid config {key}=")]
        assert value.split(",")[-1] in line and ": allowed " in line, line
    assert "Traceback" not in result.stderr + result.stdout

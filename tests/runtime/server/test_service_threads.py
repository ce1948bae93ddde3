"""The served process's torch threads sleep when idle: the event loop needs the cores between batches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from runtime.server.__main__ import OMP_WAIT_POLICY, idle_kernel_threads_sleep

ROOT = Path(__file__).resolve().parents[3]


def test_idle_threads_sleep_unless_the_operator_chose() -> None:
    unset: dict[str, str] = {}
    assert idle_kernel_threads_sleep(unset) is True
    assert unset[OMP_WAIT_POLICY] == "PASSIVE"
    empty = {OMP_WAIT_POLICY: ""}
    assert idle_kernel_threads_sleep(empty) is True
    assert empty[OMP_WAIT_POLICY] == "PASSIVE"
    chosen = {OMP_WAIT_POLICY: "ACTIVE"}
    assert idle_kernel_threads_sleep(chosen) is False
    assert chosen == {OMP_WAIT_POLICY: "ACTIVE"}


def test_the_server_sets_the_policy_before_torch_loads() -> None:
    probe = (
        "import os, sys\n"
        "from runtime.server.__main__ import main\n"
        "main(['--max-batch', '0'])\n"
        "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != OMP_WAIT_POLICY}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.stdout.split()[-2:] == ["PASSIVE", "False"], out.stdout + out.stderr

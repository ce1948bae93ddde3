"""Device workers in processes of their own: the pipeline never waits for the event loop's GIL.

A CPU server runs its pipeline in worker processes (``--workers``; ADR 0018). In the server's own
process the pipeline's Python (one call per module, per step) and the event loop (HTTP, JSON,
encoding) take turns on one GIL: a tiny model's call took 10 % longer served than called directly,
and a second pipeline thread added little. In processes each worker computes alone, and on a CPU
machine two workers of half the threads each serve more images/s than one pipeline with all of them
(docs/benchmarks.md, "Server efficiency").

`ProcessBackend` is a Backend the batcher drives like any other: ``load()`` starts the worker and
waits for its model, ``generate()`` sends the batch and relays the worker's step reports and its
images (or its error). Step reports cross the pipe as they happen only when someone watches the
progress (the UI); otherwise the worker keeps them, each with the time its step ended, and sends
them with the images: a message per step wakes the server's process during the call (a tiny model's
4-step call took 21.1-21.3 ms with them and 20.8-21.1 ms without, 180 alternating calls each).
Stopping a call works as in process: the worker's step callback and stop hooks read a shared flag
that the server sets once nobody waits (checked every STOP_POLL_S when no report comes). The size
and guidance rules are the worker's backend's, answered here from what it reported after loading.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import pickle
import signal
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

import numpy as np

from runtime.server.admission import StepClock
from runtime.server.backends import (
    Backend,
    BackendError,
    BatchParams,
    DeviceLostError,
    Encoder,
    ImageSpec,
    StepReport,
    StopCheck,
    available_cpus,
    create_backend,
    detect_device,
    intra_op_threads,
)
from runtime.server.settings import Settings

log = logging.getLogger(__name__)

# spawn, not fork: the server process has threads (event loop, executors) and may hold locks; a worker
# starts clean and imports what it needs.
_CONTEXT: Final = multiprocessing.get_context("spawn")
STOP_POLL_S: Final = 0.05  # how often a call with no step report in between checks whether anyone still waits
CLOSE_TIMEOUT_S: Final = 10.0
CGROUP_MEMORY_MAX: Final = Path("/sys/fs/cgroup/memory.max")
MEMORY_SHARE: Final = 0.7  # of the container's memory limit, what all workers together may reach at their peak
AUTO_CPU_WORKERS: Final = 2
# A worker reports every attribute of its loaded backend but these (the model itself and what made it).
_NOT_FACTS: Final = frozenset({"pipe", "image_pipe", "settings", "location", "cache", "_loader", "_image_pipeline"})


class WorkerError(DeviceLostError):
    """The worker process failed to start, or died."""


def worker_count(settings: Settings, device: str, cpus: int | None = None) -> int:
    """Device workers to run: the setting, else two on a CPU with at least two CPUs, else one.

    Only a CPU has cores to share out; a GPU or a Neuron device is one device per pod, and its
    pipeline runs in the server's process (one worker)."""
    if settings.workers > 0:
        return settings.workers
    cpus = available_cpus() if cpus is None else cpus
    return AUTO_CPU_WORKERS if device == "cpu" and cpus >= AUTO_CPU_WORKERS else 1


def threads_per_worker(settings: Settings, workers: int, cpus: int | None = None) -> int:
    """Each worker's torch threads: the setting, else the server's automatic count (backends.intra_op_threads:
    the CPUs less the event loop's one) shared out."""
    if settings.torch_threads > 0:
        return settings.torch_threads
    return max(1, intra_op_threads(0, cpus) // workers)


def memory_limit(memory_max: Path = CGROUP_MEMORY_MAX) -> int | None:
    """Bytes this container may use per the cgroup v2 limit (``memory.max``), or None when unlimited."""
    try:
        raw = memory_max.read_text().strip()
    except OSError:
        return None
    return None if raw == "max" or not raw.isdigit() else int(raw)


def workers_that_fit(wanted: int, worker_bytes: int, server_bytes: int, limit: int | None) -> int:
    """How many of `wanted` workers of `worker_bytes` each fit beside the server in MEMORY_SHARE of `limit`.

    At least one: the first worker is already loaded when this is asked."""
    if limit is None or worker_bytes <= 0:
        return wanted
    room = MEMORY_SHARE * limit - server_bytes
    return max(1, min(wanted, math.floor(room / worker_bytes)))


def resident_bytes(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory now (VmRSS) or at its peak (VmHWM), 0 when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def create_backends(settings: Settings) -> list[Backend]:
    """The server's devices: one backend in this process, or `worker_count` worker processes."""
    device = detect_device(settings.device)
    workers = worker_count(settings, device)
    if workers == 1:
        backend = create_backend(settings)
        backend.encode_threads = max(1, available_cpus() - 1)  # the event loop keeps a CPU; the device waits
        return [backend]
    threads = threads_per_worker(settings, workers)
    return [ProcessBackend(settings, index, threads) for index in range(workers)]


class ProcessBackend(Backend):
    """A backend that runs in a worker process of its own (see the module doc)."""

    def __init__(self, settings: Settings, index: int, threads: int) -> None:
        super().__init__()
        self.index = index
        self.settings = settings.replace(torch_threads=threads)
        # Never loaded here: it answers the size and guidance rules once the worker's facts are in.
        self.rules = create_backend(self.settings)
        self.device = self.rules.device
        self._sync_facts()
        self.pid: int | None = None
        self._process: Any = None
        self._conn: Connection | None = None
        self._stop = _CONTEXT.RawValue("b", 0)  # 1: nobody waits for the running call (read at every step)

    def _sync_facts(self) -> None:
        for name in ("description", "default_steps", "default_guidance", "default_width", "default_height"):
            setattr(self, name, getattr(self.rules, name))

    @property
    def max_device_batch(self) -> int | None:
        return self.rules.max_device_batch

    def check_size(self, width: int, height: int) -> str | None:
        return self.rules.check_size(width, height)

    def check_guidance(self, guidance_scale: float) -> str | None:
        return self.rules.check_guidance(guidance_scale)

    def load(self) -> None:
        ours, theirs = _CONTEXT.Pipe()
        process = _CONTEXT.Process(
            target=serve_worker, args=(theirs, self.settings, self._stop), name=f"device-worker-{self.index}"
        )
        process.daemon = True  # never outlives the server, whatever ends it
        process.start()
        theirs.close()
        self._process, self._conn, self.pid = process, ours, process.pid
        kind, payload = self._receive()
        if kind != "loaded":
            self.close()
            raise payload if isinstance(payload, BaseException) else WorkerError(str(payload))
        vars(self.rules).update(payload)
        self._sync_facts()
        self.description = f"{self.description}, in worker process {self.index}"

    def _send(self, message: tuple[Any, ...]) -> None:
        """A message to the worker; WorkerError when it is not running or has gone."""
        if self._conn is None:
            raise WorkerError(f"device worker {self.index} is not running")
        try:
            self._conn.send(message)
        except OSError:
            raise self._gone() from None

    def _receive(self, should_stop: StopCheck | None = None) -> tuple[str, Any]:
        """The worker's next message; with `should_stop`, raise its stop flag whenever nobody waits."""
        conn, process = self._conn, self._process
        if conn is None or process is None:
            raise WorkerError(f"device worker {self.index} is not running")
        try:
            while not conn.poll(STOP_POLL_S):
                if should_stop is not None and should_stop():
                    self._stop.value = 1
                if not process.is_alive():
                    raise self._gone()
            message = conn.recv()
        except (EOFError, OSError):
            raise self._gone() from None
        kind, *rest = message
        return kind, rest[0] if len(rest) == 1 else tuple(rest)

    def _gone(self) -> WorkerError:
        process = self._process
        if process is not None:
            process.join(CLOSE_TIMEOUT_S)
        return WorkerError(f"device worker {self.index} exited with {None if process is None else process.exitcode}")

    def set_threads(self, threads: int) -> None:
        """Change the worker's torch threads (the lone worker left takes the CPUs meant for all of them)."""
        self._send(("threads", threads))
        self._receive()
        self.settings = self.settings.replace(torch_threads=threads)

    def generate(
        self,
        params: BatchParams,
        images: Sequence[ImageSpec],
        should_stop: StopCheck,
        on_step: StepReport | None = None,
    ) -> list[np.ndarray]:
        out, _ = self.generate_encoded(params, images, should_stop, on_step, [None] * len(images), live_steps=True)
        return out

    def generate_encoded(
        self,
        params: BatchParams,
        images: Sequence[ImageSpec],
        should_stop: StopCheck,
        on_step: StepReport | None,
        encoders: Sequence[Encoder | None],
        live_steps: bool = True,
    ) -> tuple[list[np.ndarray], list[bytes | None]]:
        """The worker generates and encodes: the server's process only relays (its GIL is the event loop's)."""
        self._stop.value = 0
        self._send(("generate", params, list(images), list(encoders), live_steps and on_step is not None))
        while True:
            kind, payload = self._receive(should_stop)
            if kind == "step":
                _report(on_step, *payload)
                if should_stop():
                    self._stop.value = 1
            elif kind == "images":
                out, encoded, steps = payload
                for step in steps:
                    _report(on_step, *step)
                return list(out), list(encoded)
            else:  # "error": the worker's exception, as the in-process backend would have raised it
                raise payload

    def close(self) -> None:
        conn, process = self._conn, self._process
        self._conn = self._process = None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.send(("exit",))
            conn.close()
        if process is not None:
            process.join(CLOSE_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join()


def _report(on_step: StepReport | None, done: int, total: int, at: float) -> None:
    """A worker's step report: a StepClock takes the time the step ended in the worker, not now."""
    if isinstance(on_step, StepClock):
        on_step.mark(done, total, at)
    elif on_step is not None:
        on_step(done, total)


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it crosses a pipe intact, else a BackendError with its type and text."""
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own bytes, just made
    except Exception:
        return BackendError(f"{type(exc).__name__}: {exc}")
    return exc


def _facts(backend: Backend) -> dict[str, Any]:
    """What the server needs to know of a loaded backend: its plain attributes, less the model."""
    facts = {}
    for name, value in vars(backend).items():
        if name in _NOT_FACTS:
            continue
        try:
            pickle.dumps(value)
        except Exception:  # noqa: S112 - a handle or a callable: nothing the rules read
            continue
        facts[name] = value
    return facts


def serve_worker(conn: Connection, settings: Settings, stop: Any) -> None:
    """A worker process's life: load, report the facts, then run batches until told to exit or orphaned."""
    # Ctrl+C reaches the whole process group: the server drains first, then closes its workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s worker-{os.getpid()} %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        backend = create_backend(settings)
        backend.load()
    except Exception as exc:
        conn.send(("failed", _portable(exc)))
        return
    conn.send(("loaded", _facts(backend)))
    live = False  # the running call's reports go out as they happen, else with its images
    kept: list[tuple[int, int, float]] = []

    def report(done: int, total: int) -> None:
        step = (done, total, time.perf_counter())
        if live:
            conn.send(("step", *step))
        else:
            kept.append(step)

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the server is gone
            return
        if message[0] == "threads":
            import torch

            torch.set_num_threads(message[1])
            conn.send(("threads", torch.get_num_threads()))
            continue
        if message[0] != "generate":
            return
        _, params, specs, encoders, live = message
        kept.clear()
        try:
            out, encoded = backend.generate_encoded(params, specs, lambda: stop.value != 0, report, encoders)
        except Exception as exc:
            conn.send(("error", _portable(exc)))
            continue
        conn.send(("images", out, encoded, kept))

"""Measure a CUDA pod's cold start with and without the artifact's TorchInductor cache.

    python -m runtime.compile.cold_start --artifact DIR [--model ID] [--max-batch N]

DIR is a CUDA artifact written by ``python -m runtime.compile --device cuda --inductor-cache`` on
this GPU class. Each case runs in a fresh process with empty Inductor and Triton cache directories
of its own, as a new pod has: ``without`` loads the model with no cache, ``with`` lets the server
adopt the artifact's (``runtime.server.backends.inductor_cache``). Each prints one JSON line: the
seconds to load, to warm up (where torch.compile compiles, or reads the cache) and in total, and
the server's one line about the cache. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from plan import contract

CASES = ("without", "with")


def run_case(case: str, artifact: Path, model_id: str, max_batch: int, scratch: Path) -> dict[str, Any]:
    """Load and warm up the server's CUDA backend with torch.compile in this process; the timings."""
    import torch

    from runtime.server.backends import DiffusersBackend, torch_dtype_for, warmup
    from runtime.server.model_source import resolve_model
    from runtime.server.settings import Settings

    settings = Settings(
        model_id=model_id,
        model_source=str(artifact),
        device="cuda",
        torch_compile=True,
        max_batch=max_batch,
        model_cache_dir=str(scratch / "models"),
        metrics_sink="none",
    )
    started = time.perf_counter()
    if case == "with":
        backend = DiffusersBackend(settings, "cuda")
    else:  # a loader: the backend sees no artifact directory, so it adopts no cache
        location = resolve_model(settings, "cuda")
        backend = DiffusersBackend(
            settings, "cuda", loader=lambda: location.load_diffusers(torch_dtype_for(settings.dtype, "cuda"))
        )
    backend.load()
    loaded = time.perf_counter()
    warmup(backend, max_batch)
    torch.cuda.synchronize()
    done = time.perf_counter()
    decision = backend.cache
    return {
        "case": case,
        "gpu": torch.cuda.get_device_name(0),
        "load_s": round(loaded - started, 2),
        "warmup_s": round(done - loaded, 2),
        "total_s": round(done - started, 2),
        "cache": decision.message if decision else "not offered",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.compile.cold_start", description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", type=Path, required=True, help="a CUDA artifact directory with an inductor cache")
    parser.add_argument("--model", default=contract.DEFAULT_MODEL_ID, help="the artifact's model id")
    parser.add_argument("--max-batch", type=int, default=contract.DEFAULT_MAX_BATCH)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.artifact, args.model, args.max_batch, Path(os.environ["SCRATCH"]))))
        return 0
    if not (args.artifact / contract.INDUCTOR_CACHE_DIRNAME).is_dir():
        print(f"--artifact {args.artifact}: no {contract.INDUCTOR_CACHE_DIRNAME}/ in it", file=sys.stderr)
        return 2
    failed = 0
    for case in CASES:
        with tempfile.TemporaryDirectory(prefix=f"cold-start-{case}-") as tmp:
            scratch = Path(tmp)
            env = {
                **os.environ,
                "SCRATCH": str(scratch),
                "TORCHINDUCTOR_CACHE_DIR": str(scratch / "inductor"),  # empty: what a new pod has
                "TRITON_CACHE_DIR": str(scratch / "triton"),
            }
            command = [sys.executable, "-m", "runtime.compile.cold_start", "--case", case]
            command += ["--artifact", str(args.artifact), "--model", args.model, "--max-batch", str(args.max_batch)]
            failed |= subprocess.run(command, env=env, check=False).returncode
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

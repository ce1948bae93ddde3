"""Device detection, the Neuron backend's static shapes, and CPU threads from the cgroup quota."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime.server import backends
from runtime.server.backends import BatchParams, CompiledShape, ImageSpec, NeuronBackend, detect_device
from runtime.server.settings import Settings
from spec import contract


def test_detect_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert detect_device("neuron") == "neuron"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(backends.glob, "glob", lambda pattern: [])
    assert detect_device(None) == "cpu"
    monkeypatch.setattr(backends.glob, "glob", lambda pattern: ["/dev/neuron0"] if "neuron" in pattern else [])
    assert detect_device(None) == "neuron"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert detect_device(None) == "cuda"
    with pytest.raises(backends.BackendError):
        detect_device("tpu")


# --- neuron backend: static shapes -------------------------------------------------------


class FakeNeuronPipeline:
    """Records calls; returns PIL-like uint8 images whose first pixel encodes the prompt index."""

    def __init__(self, batch_size: int, size: int) -> None:
        self.batch_size, self.size = batch_size, size
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        prompts = kwargs["prompt"]
        assert len(prompts) == self.batch_size, "compiled batch size must be respected"
        assert "width" not in kwargs and "height" not in kwargs
        images = []
        for p in prompts:
            img = np.zeros((self.size, self.size, 3), dtype=np.uint8)
            img[0, 0, 0] = int(p.removeprefix("p"))
            images.append(img)
        return type("Out", (), {"images": images})()


def neuron_backend(batch_size: int = 4, size: int = 512) -> tuple[NeuronBackend, FakeNeuronPipeline]:
    fake = FakeNeuronPipeline(batch_size, size)
    backend = NeuronBackend(Settings(model_id="org/m"), loader=lambda: (fake, CompiledShape(size, size, batch_size)))
    backend.load()
    return backend, fake


def test_neuron_rejects_other_sizes() -> None:
    backend, fake = neuron_backend()
    assert backend.check_size(512, 512) is None
    assert "512x512" in (backend.check_size(768, 512) or "")
    with pytest.raises(backends.BackendError):
        backend.generate(BatchParams(20, 7.5, 768, 768), [ImageSpec("p1", "", 1)], lambda: False)
    assert fake.calls == []
    assert (backend.default_width, backend.default_height, backend.max_device_batch) == (512, 512, 4)


def test_neuron_pads_short_batches_and_chunks_long_ones() -> None:
    backend, fake = neuron_backend(batch_size=4)
    specs = [ImageSpec(f"p{i}", "", 10 + i) for i in range(6)]
    images = backend.generate(BatchParams(20, 7.5, 512, 512), specs, lambda: False)
    assert len(images) == 6
    assert [round(float(img[0, 0, 0]) * 255) for img in images] == [0, 1, 2, 3, 4, 5]  # padding outputs dropped
    assert [c["prompt"] for c in fake.calls] == [["p0", "p1", "p2", "p3"], ["p4", "p5", "p5", "p5"]]
    assert all(len(c["generator"]) == 4 for c in fake.calls)
    assert fake.calls[0]["num_inference_steps"] == 20


def test_neuron_without_an_artifact_fails_with_a_reason() -> None:
    backend = NeuronBackend(Settings(model_id="tiny"))
    with pytest.raises(backends.BackendError, match=contract.ENV_MODEL_SOURCE):
        backend.load()


def test_cpu_threads_follow_the_cgroup_quota(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert backends.cpu_quota(cpu_max) == 2
    cpu_max.write_text("max 100000\n")
    assert backends.cpu_quota(cpu_max) is None
    assert backends.cpu_quota(tmp_path / "absent") is None
    assert backends.intra_op_threads(3) == 3
    assert backends.intra_op_threads(0) >= 1

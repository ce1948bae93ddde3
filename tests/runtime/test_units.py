"""Settings, device detection, the Neuron backend's static shapes, model sources and CloudWatch payloads."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from moto import mock_aws

from runtime import artifacts, backends
from runtime.backends import BatchParams, CompiledShape, ImageSpec, NeuronBackend, detect_accelerator
from runtime.metrics import CloudWatchAggregator, CloudWatchSink, Dimensions, EmfSink, Interval, compress
from runtime.model_source import ModelSourceError, resolve_model
from runtime.settings import Settings, SettingsError
from spec import contract

DIMS = Dimensions("sd-cuda-usw2-lax-1a", "cuda", "us-west-2-lax-1a")


# --- settings ----------------------------------------------------------------------------


def test_settings_from_env_and_flags_override() -> None:
    env = {
        contract.ENV_MODEL_ID: "org/model",
        contract.ENV_MAX_BATCH: "4",
        contract.ENV_MAX_WAIT_MS: "12.5",
        contract.ENV_QUEUE_SIZE: "9",
        contract.ENV_REQUEST_TIMEOUT_S: "30",
        contract.ENV_METRICS_SINK: "cloudwatch",
        contract.ENV_DEPLOYMENT: "sd-neuron",
        contract.ENV_AWS_REGION: "us-west-2",
        contract.ENV_ACCELERATOR: "neuron",
        contract.ENV_UI: "false",
        contract.ENV_PORT: "8000",
    }
    s = Settings.from_env(env)
    assert (s.model_id, s.max_batch, s.max_wait_ms, s.queue_size, s.request_timeout_s) == ("org/model", 4, 12.5, 9, 30)
    assert (s.metrics_sink, s.accelerator, s.ui, s.port) == ("cloudwatch", "neuron", False, 8000)
    assert s.metric_location == "us-west-2"  # no explicit location: the Region
    flags = Settings.from_args(["--model", "tiny", "--max-batch", "2", "--host", "127.0.0.1"], env)
    assert (flags.model_id, flags.max_batch, flags.host, flags.queue_size) == ("tiny", 2, "127.0.0.1", 9)
    assert Settings.from_env({}).port == contract.PORT


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({contract.ENV_MAX_BATCH: "zero"}, contract.ENV_MAX_BATCH),
        ({contract.ENV_MAX_BATCH: "0"}, contract.ENV_MAX_BATCH),
        ({contract.ENV_METRICS_SINK: "statsd"}, contract.ENV_METRICS_SINK),
        ({contract.ENV_ACCELERATOR: "tpu"}, contract.ENV_ACCELERATOR),
        ({contract.ENV_UI: "maybe"}, contract.ENV_UI),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_server_cli_rejects_bad_env_without_traceback(capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    from runtime.server import main

    monkeypatch.setenv(contract.ENV_QUEUE_SIZE, "-3")
    assert main(["--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert contract.ENV_QUEUE_SIZE in err and "Traceback" not in err


# --- device detection --------------------------------------------------------------------


def test_detect_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert detect_accelerator("neuron") == "neuron"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(backends.glob, "glob", lambda pattern: [])
    assert detect_accelerator(None) == "cpu"
    monkeypatch.setattr(backends.glob, "glob", lambda pattern: ["/dev/neuron0"] if "neuron" in pattern else [])
    assert detect_accelerator(None) == "neuron"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert detect_accelerator(None) == "cuda"
    with pytest.raises(backends.BackendError):
        detect_accelerator("tpu")


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


# --- model sources -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from runtime.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-artifact")
    build_tiny_pipeline().save_pretrained(root)
    spec = artifacts.BuildSpec(
        model_id="tiny",
        revision="main",
        chip="cpu",
        shapes=artifacts.Shapes(64, 64, 1),
        dtype="float32",
        versions=artifacts.library_versions("cpu"),
    )
    artifacts.write_manifest(root, spec)
    return root


def test_local_dir_with_manifest_is_verified_and_loads(tiny_artifact: Path) -> None:
    location = resolve_model(Settings(model_id="tiny", model_source=str(tiny_artifact)), "cpu")
    assert location.kind == "dir" and location.manifest.spec.chip == "cpu"
    backend = backends.DiffusersBackend(Settings(model_id="tiny", model_source=str(tiny_artifact)), "cpu")
    backend.load()
    (image,) = backend.generate(BatchParams(2, 7.5, 64, 64), [ImageSpec("a", "", 1)], lambda: False)
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()


def test_manifest_for_another_chip_model_or_revision_is_refused(tiny_artifact: Path) -> None:
    with pytest.raises(ModelSourceError, match="compiled for 'cpu'"):
        resolve_model(Settings(model_id="tiny", model_source=str(tiny_artifact)), "cuda")
    with pytest.raises(ModelSourceError, match="other/model"):
        resolve_model(Settings(model_id="other/model", model_source=str(tiny_artifact)), "cpu")
    with pytest.raises(ModelSourceError, match="revision"):
        resolve_model(Settings(model_id="tiny", model_revision="v2", model_source=str(tiny_artifact)), "cpu")


def test_tampered_local_artifact_is_refused(tiny_artifact: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_artifact, copy)
    weights = next(copy.rglob("unet/*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ModelSourceError, match="unet/"):
        resolve_model(Settings(model_id="tiny", model_source=str(copy)), "cpu")


def test_s3_artifact_is_downloaded_verified_and_cached(tiny_artifact: Path, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, "testing")
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="edge-models")
        uri = artifacts.artifact_uri("s3://edge-models/compiled", "tiny", "main", "cpu")
        artifacts.publish(tiny_artifact, uri)
        settings = Settings(model_id="tiny", model_source=uri, model_cache_dir=str(tmp_path))
        location = resolve_model(settings, "cpu")
        assert location.path is not None and location.path.is_relative_to(tmp_path)
        assert (location.path / contract.MANIFEST_NAME).is_file()
        assert location.manifest.spec.model_id == "tiny"
        with pytest.raises(ModelSourceError, match="no manifest"):
            resolve_model(settings.replace(model_source="s3://edge-models/nothing-here"), "cpu")


# --- CloudWatch --------------------------------------------------------------------------


def test_emf_record_names_namespace_dimensions_and_values() -> None:
    stream = io.StringIO()
    agg = CloudWatchAggregator(EmfSink(DIMS, stream), pending=lambda: 3, interval_s=60, clock=lambda: 1_700_000_000.0)
    for ms in (100.0, 200.0, 300.0):
        agg.record_request(ms, images=2)
    agg.sample_pending()
    agg.flush()
    (line,) = stream.getvalue().splitlines()
    doc = json.loads(line)
    meta = doc["_aws"]
    assert meta["Timestamp"] == 1_700_000_000_000
    (directive,) = meta["CloudWatchMetrics"]
    assert directive["Namespace"] == contract.METRIC_NAMESPACE
    assert directive["Dimensions"] == [list(contract.METRIC_DIMENSIONS)]
    names = {m["Name"] for m in directive["Metrics"]}
    assert names == {
        contract.METRIC_PENDING_REQUESTS,
        contract.METRIC_IMAGES_GENERATED,
        contract.METRIC_INFERENCE_LATENCY_MS,
    }
    for dim in contract.METRIC_DIMENSIONS:  # every dimension is a string member of the record
        assert isinstance(doc[dim], str)
    assert doc[contract.DIMENSION_LOCATION] == "us-west-2-lax-1a"
    assert doc[contract.METRIC_PENDING_REQUESTS] == 3
    assert doc[contract.METRIC_IMAGES_GENERATED] == 6
    assert doc[contract.METRIC_INFERENCE_LATENCY_MS] == [100.0, 200.0, 300.0]
    agg.flush()  # the next interval starts empty
    second = json.loads(stream.getvalue().splitlines()[1])
    assert second[contract.METRIC_IMAGES_GENERATED] == 0 and contract.METRIC_INFERENCE_LATENCY_MS not in second


def test_compress_keeps_at_most_100_values_and_the_mean() -> None:
    values = [float(i) for i in range(1000)]
    v, c = compress(values)
    assert len(v) == len(c) == 100 and sum(c) == 1000
    assert abs(sum(a * b for a, b in zip(v, c, strict=True)) / 1000 - 499.5) < 1e-9


def test_cloudwatch_sink_with_moto_one_call_per_interval(monkeypatch: Any) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, "testing")
    with mock_aws():
        client = boto3.client("cloudwatch", region_name="us-west-2")
        calls: list[str] = []
        client.meta.events.register("before-call.cloudwatch.PutMetricData", lambda **kw: calls.append("put"))
        agg = CloudWatchAggregator(CloudWatchSink(DIMS, "us-west-2", client=client), pending=lambda: 2)
        for i in range(250):
            agg.record_request(50.0 + i, images=1)
        agg.sample_pending()
        agg.flush()
        assert calls == ["put"]  # 250 requests, one API call
        listed = client.list_metrics(Namespace=contract.METRIC_NAMESPACE)["Metrics"]
        assert {m["MetricName"] for m in listed} == {
            contract.METRIC_PENDING_REQUESTS,
            contract.METRIC_IMAGES_GENERATED,
            contract.METRIC_INFERENCE_LATENCY_MS,
        }
        for m in listed:
            assert {d["Name"]: d["Value"] for d in m["Dimensions"]} == DIMS.as_dict()
        data = CloudWatchSink(DIMS, "us-west-2", client=client).metric_data(
            Interval(pending_samples=[1, 3], latencies_ms=[10.0, 10.0, 20.0], images=3), 1_700_000_000.0
        )
        by_name = {d["MetricName"]: d for d in data}
        assert by_name[contract.METRIC_PENDING_REQUESTS]["Value"] == 2
        assert by_name[contract.METRIC_INFERENCE_LATENCY_MS]["Values"] == [10.0, 10.0, 20.0]


def test_publisher_thread_publishes_per_interval_not_per_request() -> None:
    published: list[Interval] = []

    class Recorder:
        def publish(self, interval: Interval, timestamp: float) -> None:
            published.append(interval)

    agg = CloudWatchAggregator(Recorder(), pending=lambda: 1, interval_s=0.3, sample_s=0.05)
    agg.start()
    try:
        for _ in range(200):
            agg.record_request(5.0, images=1)
        import time

        time.sleep(0.8)
    finally:
        agg.stop()
    assert 2 <= len(published) <= 4  # two or three intervals plus the final flush, not 200
    assert sum(i.images for i in published) == 200
    assert all(i.pending == 1 for i in published if i.pending_samples)


def test_failing_sink_never_raises() -> None:
    class Broken:
        def publish(self, interval: Interval, timestamp: float) -> None:
            raise ConnectionError("no route to monitoring.us-west-2.amazonaws.com")

    agg = CloudWatchAggregator(Broken(), pending=lambda: 0)
    agg.record_request(1.0, 1)
    agg.flush()
    assert agg.failures == 1


def test_cpu_threads_follow_the_cgroup_quota(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert backends.cpu_quota(cpu_max) == 2
    cpu_max.write_text("max 100000\n")
    assert backends.cpu_quota(cpu_max) is None
    assert backends.cpu_quota(tmp_path / "absent") is None
    assert backends.intra_op_threads(3) == 3
    assert backends.intra_op_threads(0) >= 1

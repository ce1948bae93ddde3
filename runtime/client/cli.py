"""The command line of ``python -m runtime.client PROMPT -o out.png --inventory-url URL``.

Generates on the nearest healthy endpoint and prints who served, the probes, the attempts and
the timings; exit 1 with one line when no image could be made, 2 for bad flags.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Final

from runtime.client.auth import CREDENTIAL_URLS, carries_credentials
from runtime.client.client import DEFAULT_DEADLINE_S, ClientError, EdgeDiffusionClient, GenerationResult, ImageRequest
from runtime.settings import InvalidValueError, ProgramSettings, SettingsError, error_exit, setting

# The client's own environment (devices and app backends, not pods).
ENV_TOKEN: Final = "EDGE_DIFFUSION_TOKEN"  # noqa: S105 - the variable's name, not a token
ENV_FALLBACK_URLS: Final = "EDGE_DIFFUSION_FALLBACK_URLS"  # space- or comma-separated
ENV_CA_BUNDLE: Final = "EDGE_DIFFUSION_CA_BUNDLE"
_URL: Final = re.compile(r"^https?://[^\s/?#]+(/[^\s]*)?$")


def _are_urls(urls: tuple[str, ...]) -> bool:
    for url in urls:
        if not _URL.match(url):
            raise InvalidValueError(f"{url!r} is not an http(s)://host[:port] URL")
    return True


def _carries_credentials(url: str) -> bool:
    """The inventory URL: SigV4-signed, and its answer decides where tokens go, so never plain http elsewhere."""
    if not carries_credentials(url):
        raise InvalidValueError("its answer decides where tokens go")
    return True


class GenerateCommand(ProgramSettings):
    """The command line: what to generate, where the inventory is, which endpoints qualify."""

    PROG: ClassVar[str] = "python -m runtime.client"
    DESCRIPTION: ClassVar[str] = "Generate an image on the nearest healthy Edge Diffusion endpoint."

    prompt: str = setting(flag="prompt")
    output: Path = setting(
        flag="--output", aliases=("-o",), default=Path("out.png"), help="PNG path (more images: out-2.png, ...)"
    )
    inventory_url: str | None = setting(
        flag="--inventory-url",
        default=None,
        check=_carries_credentials,
        allowed=CREDENTIAL_URLS,
        help="the InventoryStack's InventoryUrl output (SigV4, IAM auth)",
    )
    endpoints_file: Path | None = setting(
        flag="--endpoints-file", default=None, help="inventory JSON on disk (tests, demos)"
    )
    fallback_urls: tuple[str, ...] = setting(
        env=ENV_FALLBACK_URLS,
        flag="--fallback-url",
        repeatable=True,
        metavar="URL",
        default=(),
        check=_are_urls,
        allowed="http(s)://host[:port] URLs",
        help="an endpoint to try last, with or without an inventory (the variable: space-separated); "
        "with a token, https or loopback only",
    )
    token: str | None = setting(
        flag="--token",
        env=ENV_TOKEN,
        default=None,
        help="bearer token to send instead of fetching one (prefer the variable: flags show in ps)",
    )
    ca_bundle: Path | None = setting(
        flag="--ca-bundle", env=ENV_CA_BUNDLE, default=None, help="PEM file of a private CA to trust too"
    )
    deadline: float = setting(
        flag="--deadline", default=DEFAULT_DEADLINE_S, gt=0, unit="seconds", help="total seconds, failovers included"
    )
    region: str | None = setting(flag="--region", default=None, help="Region of the inventory API (default: its URL's)")
    model: str | None = setting(flag="--model", default=None, help="only endpoints serving this model id")
    location: str | None = setting(flag="--location", default=None, help="only endpoints in this Region or Local Zone")
    accelerator: str | None = setting(
        flag="--accelerator", default=None, help="only endpoints on this accelerator (nvidia, neuron, cpu)"
    )
    negative_prompt: str | None = setting(flag="--negative-prompt", default=None)
    # The server checks the image parameters (its 422 names the field and the allowed values).
    steps: int | None = setting(flag="--steps", default=None)
    guidance_scale: float | None = setting(flag="--guidance-scale", default=None)
    width: int | None = setting(flag="--width", default=None)
    height: int | None = setting(flag="--height", default=None)
    seed: int | None = setting(flag="--seed", default=None)
    num_images: int = setting(flag="--num-images", default=1)

    def check(self) -> None:
        if self.inventory_url is not None and self.endpoints_file is not None:
            raise SettingsError("give one of --inventory-url or --endpoints-file, not both")
        if self.inventory_url is None and self.endpoints_file is None and not self.fallback_urls:
            raise SettingsError("one of --inventory-url, --endpoints-file or --fallback-url is required")
        parent = self.output.parent
        if not parent.is_dir():
            # Checked before generating: a typo in -o must not cost a generation, nor create directories.
            raise SettingsError(f"--output {str(self.output)!r}: directory {str(parent)!r} does not exist")

    def request(self) -> ImageRequest:
        return ImageRequest(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            width=self.width,
            height=self.height,
            seed=self.seed,
            num_images=self.num_images,
        )

    def filters(self) -> dict[str, str]:
        named = {"model": self.model, "location": self.location, "accelerator": self.accelerator}
        return {name: value for name, value in named.items() if value}


def outputs(base: Path, count: int) -> list[Path]:
    """``out.png``, ``out-2.png``, ...: one path per image."""
    return [base if i == 0 else base.with_name(f"{base.stem}-{i + 1}{base.suffix}") for i in range(count)]


def report(result: GenerationResult) -> None:
    e = result.endpoint
    tls_name = f", TLS name {e.server_name}" if e.server_name else ""
    print(f"served by {e.endpoint_id} ({e.url}{tls_name}, {e.location}, {e.accelerator}, {e.kind}) seed={result.seed}")
    for probe in result.probes:
        rtt = f"{probe.rtt_ms:.1f} ms" if probe.rtt_ms is not None else f"unreachable ({probe.error})"
        print(f"  probe {probe.endpoint.endpoint_id}: {rtt}")
    for attempt in result.attempts:
        print(f"  attempt {attempt.endpoint.endpoint_id}: {attempt.outcome} in {attempt.seconds:.2f}s")
    print("  timings: " + ", ".join(f"{k}={v:.3f}" for k, v in result.timings.items()))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        command = GenerateCommand.from_args(argv)
    except SettingsError as exc:
        return error_exit(GenerateCommand.PROG, exc)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s", stream=sys.stderr)
    try:
        with EdgeDiffusionClient(
            inventory_url=command.inventory_url,
            endpoints_file=command.endpoints_file,
            fallback_urls=command.fallback_urls,
            filters=command.filters(),
            region=command.region,
            token=command.token,
            ca_bundle=command.ca_bundle,
        ) as client:
            result = client.generate(command.request(), deadline_s=command.deadline)
    except ClientError as err:
        return error_exit(GenerateCommand.PROG, err, code=1)
    for path, image in zip(outputs(command.output, len(result.images)), result.images, strict=True):
        try:
            path.write_bytes(image)
        except OSError as err:
            return error_exit(GenerateCommand.PROG, f"cannot write {path}: {err.strerror}", code=1)
        print(f"wrote {path}")
    report(result)
    return 0

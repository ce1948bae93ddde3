"""The command line of ``python -m runtime.client PROMPT -o out.png --inventory-url URL``.

Generates on the nearest healthy endpoint and prints who served, the probes, the attempts and
the timings; exit 1 with one line when no image could be made, 2 for bad flags.

The output's format: ``--format png|jpeg|webp``, or else ``-o``'s extension (.png, .jpg or
.jpeg, .webp); a name whose extension says another format than ``--format`` is refused, so a
file's name never lies about its bytes. ``--image PATH`` (an image prompt, with ``--strength``)
is checked before any request: a readable file, PNG, JPEG or WebP by its first bytes, at most
8 MiB.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Final

from pydantic import PrivateAttr

from runtime.client.auth import CREDENTIAL_URLS, carries_credentials
from runtime.client.client import (
    DEFAULT_DEADLINE_S,
    IMAGE_FORMATS,
    MEDIA_TYPES,
    ClientError,
    EdgeDiffusionClient,
    GenerationResult,
    ImageRequest,
    read_image,
    sniff_image,
)
from runtime.settings import InvalidValueError, ProgramSettings, SettingsError, error_exit, setting

# The client's own environment (devices and app backends, not pods).
ENV_TOKEN: Final = "EDGE_DIFFUSION_TOKEN"  # noqa: S105 - the variable's name, not a token
ENV_FALLBACK_URLS: Final = "EDGE_DIFFUSION_FALLBACK_URLS"  # space- or comma-separated
ENV_CA_BUNDLE: Final = "EDGE_DIFFUSION_CA_BUNDLE"
_URL: Final = re.compile(r"^https?://[^\s/?#]+(/[^\s]*)?$")
# The output's extensions per format; the first is the one suggested.
EXTENSIONS: Final = {"png": (".png",), "jpeg": (".jpg", ".jpeg"), "webp": (".webp",)}
LOSSY: Final = ("jpeg", "webp")  # the formats a --quality applies to


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
        flag="--output",
        aliases=("-o",),
        default=Path("out.png"),
        help="image path; its extension (.png, .jpg, .jpeg, .webp) is the format unless --format says "
        "(more images: out-2.png, ...)",
    )
    image_format: str | None = setting(
        flag="--format",
        choices=IMAGE_FORMATS,
        default=None,
        help="the output's format (default: -o's extension); -o must carry its extension",
    )
    quality: int | None = setting(
        flag="--quality", default=None, ge=1, le=100, help="1-100, for jpeg and webp (server default 90)"
    )
    image: Path | None = setting(
        flag="--image", default=None, help="an image prompt: a PNG, JPEG or WebP file of at most 8 MiB"
    )
    strength: float | None = setting(
        flag="--strength",
        default=None,
        gt=0,
        le=1,
        allowed="a number above 0 and at most 1",
        help="with --image: how far to move from it, 0 < s <= 1 (server default 0.8)",
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
    _image_bytes: bytes | None = PrivateAttr(default=None)

    def check(self) -> None:
        if self.inventory_url is not None and self.endpoints_file is not None:
            raise SettingsError("give one of --inventory-url or --endpoints-file, not both")
        if self.inventory_url is None and self.endpoints_file is None and not self.fallback_urls:
            raise SettingsError("one of --inventory-url, --endpoints-file or --fallback-url is required")
        parent = self.output.parent
        if not parent.is_dir():
            # Checked before generating: a typo in -o must not cost a generation, nor create directories.
            raise SettingsError(f"--output {str(self.output)!r}: directory {str(parent)!r} does not exist")
        chosen = self.output_format()  # refuses a name that contradicts --format
        if self.quality is not None and chosen not in LOSSY:
            raise SettingsError(f"--quality {self.quality}: only for jpeg or webp output; this output is {chosen}")
        if self.strength is not None and self.image is None:
            raise SettingsError(f"--strength {self.strength:g}: only with --image (how far to move from it)")
        if self.image is not None:
            try:  # read once, here: before any request, and what is checked is what is sent
                self._image_bytes = read_image(self.image, "--image")
            except ClientError as err:
                raise SettingsError(str(err)) from None

    def output_format(self) -> str:
        """png, jpeg or webp: --format, else -o's extension; SettingsError where the two disagree."""
        suffix = self.output.suffix.lower()
        named = next((fmt for fmt, extensions in EXTENSIONS.items() if suffix in extensions), None)
        shown = str(self.output)
        if self.image_format is None:
            if named is None:
                every = ", ".join(ext for extensions in EXTENSIONS.values() for ext in extensions)
                raise SettingsError(
                    f"--output {shown!r}: no image extension to tell the format; allowed: {every} (or give --format)"
                )
            return named
        if named != self.image_format:
            allowed = " or ".join(EXTENSIONS[self.image_format])
            raise SettingsError(
                f"--output {shown!r} does not name a {self.image_format} file; allowed with --format "
                f"{self.image_format}: a name ending {allowed}"
            )
        return self.image_format

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
            # JSON answers carry every image, the seed and the timings; png is their default encoding
            # (left unsaid, so servers from before output_format still answer).
            response_format="json",
            output_format=None if self.output_format() == "png" else self.output_format(),
            quality=self.quality,
            image=self._image_bytes,
            strength=self.strength,
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
    wanted = MEDIA_TYPES[command.output_format()]
    for image in result.images:  # a server that ignored output_format: nothing written under a lying name
        got = sniff_image(image) or "an unknown type"
        if got != wanted:
            why = f"{result.endpoint.endpoint_id} answered {got}, not the {wanted} asked for; nothing written"
            return error_exit(GenerateCommand.PROG, why, code=1)
    for path, image in zip(outputs(command.output, len(result.images)), result.images, strict=True):
        try:
            path.write_bytes(image)
        except OSError as err:
            return error_exit(GenerateCommand.PROG, f"cannot write {path}: {err.strerror}", code=1)
        print(f"wrote {path}")
    report(result)
    return 0

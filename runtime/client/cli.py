"""``python -m runtime.client PROMPT -o out.png --inventory-url URL | --endpoints-file FILE``.

Generates on the nearest healthy endpoint and prints who served, the probes, the attempts and
the timings; exit 1 with one line when no image could be made, 2 for bad flags.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from runtime.client.client import DEFAULT_DEADLINE_S, ClientError, EdgeDiffusionClient, GenerationResult, ImageRequest
from runtime.settings import PATH, TEXT, ProgramSettings, SettingsError, error_exit, integer, number, setting


@dataclass(frozen=True)
class GenerateCommand(ProgramSettings):
    """The command line: what to generate, where the inventory is, which endpoints qualify."""

    PROG: ClassVar[str] = "python -m runtime.client"
    DESCRIPTION: ClassVar[str] = "Generate an image on the nearest healthy Edge Diffusion endpoint."

    prompt: str = setting(TEXT, flag="prompt")
    output: Path = setting(  # noqa: RUF009 - setting() returns a dataclasses.field
        PATH, flag="--output", aliases=("-o",), default=Path("out.png"), help="PNG path (more images: out-2.png, ...)"
    )
    inventory_url: str | None = setting(
        TEXT, flag="--inventory-url", default=None, help="the InventoryStack's InventoryUrl output (SigV4, IAM auth)"
    )
    endpoints_file: Path | None = setting(  # noqa: RUF009 - setting() returns a dataclasses.field
        PATH, flag="--endpoints-file", default=None, help="inventory JSON on disk (tests, demos)"
    )
    deadline: float = setting(
        number(0, exclusive=True, unit="seconds"),
        flag="--deadline",
        default=DEFAULT_DEADLINE_S,
        help="total seconds, failovers included",
    )
    region: str | None = setting(
        TEXT, flag="--region", default=None, help="Region of the inventory API (default: its URL's)"
    )
    model: str | None = setting(TEXT, flag="--model", default=None, help="only endpoints serving this model id")
    location: str | None = setting(
        TEXT, flag="--location", default=None, help="only endpoints in this Region or Local Zone"
    )
    accelerator: str | None = setting(
        TEXT, flag="--accelerator", default=None, help="only endpoints on this accelerator (nvidia, neuron, cpu)"
    )
    negative_prompt: str | None = setting(TEXT, flag="--negative-prompt", default=None)
    # The server checks the image parameters (its 422 names the field and the allowed values).
    steps: int | None = setting(integer(), flag="--steps", default=None)
    guidance_scale: float | None = setting(number(), flag="--guidance-scale", default=None)
    width: int | None = setting(integer(), flag="--width", default=None)
    height: int | None = setting(integer(), flag="--height", default=None)
    seed: int | None = setting(integer(), flag="--seed", default=None)
    num_images: int = setting(integer(), flag="--num-images", default=1)

    def check(self) -> None:
        if (self.inventory_url is None) == (self.endpoints_file is None):
            raise SettingsError("exactly one of --inventory-url or --endpoints-file is required")

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
    print(f"served by {e.endpoint_id} ({e.url}, {e.location}, {e.accelerator}) seed={result.seed}")
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
            filters=command.filters(),
            region=command.region,
        ) as client:
            result = client.generate(command.request(), deadline_s=command.deadline)
    except ClientError as err:
        return error_exit(GenerateCommand.PROG, err, code=1)
    for path, image in zip(outputs(command.output, len(result.images)), result.images, strict=True):
        path.write_bytes(image)
        print(f"wrote {path}")
    report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

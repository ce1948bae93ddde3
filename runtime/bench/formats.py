"""Encode time and size of an answer per response format and image size: what `response_format` costs.

Each figure is the server's own encoder (runtime.server.codec.encode, the call a device makes per
image, float pixels to file bytes, on one thread), the median of repeated calls. Two pictures per
size, both made in code:

- ``noise``: uniform random pixels, what the random-weights test models answer and the worst case
  for every codec (nothing to predict);
- ``scene``: a synthetic picture with a photograph's mix of smooth gradients, sharp edges, fine
  detail and sensor grain (a sky gradient, a fractal, discs, noise of 2 % of full scale).

    python -m runtime.bench.formats --sizes 64,256,512,1024 --quality 90
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

import numpy as np
from PIL import Image, ImageDraw

from plan import contract
from runtime.server.codec import DEFAULT_QUALITY, OUTPUT_FORMATS, encode
from runtime.settings import ProgramSettings, SettingsError, error_exit, setting

DEFAULT_SIZES: Final = (64, 256, 512, 1024)
PICTURES: Final = ("noise", "scene")
GRAIN: Final = 0.02  # the scene's noise, of full scale


@dataclass(frozen=True)
class Encoding:
    picture: str
    size: int
    output_format: str
    ms: float  # median per image
    size_bytes: int


def picture(kind: str, size: int, seed: int = 0) -> np.ndarray:
    """A size x size float32 HWC image in [0, 1] (see the module doc)."""
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.random((size, size, 3), dtype=np.float32)
    if kind != "scene":
        raise ValueError(f"picture {kind!r}: allowed {', '.join(PICTURES)}")
    sky = np.linspace(0.9, 0.3, size, dtype=np.float32)[:, None, None] * np.array([0.55, 0.7, 1.0], np.float32)
    image = np.broadcast_to(sky, (size, size, 3)).copy()
    fractal = Image.effect_mandelbrot((size, size), (-2.0, -1.25, 0.75, 1.25), 64)
    detail = np.asarray(fractal, dtype=np.float32)[:, :, None] / 255.0
    lower = slice(size // 2, size)
    image[lower] = 0.35 * image[lower] + 0.65 * detail[lower] * np.array([0.9, 0.6, 0.3], np.float32)
    shapes = Image.new("L", (size, size))
    draw = ImageDraw.Draw(shapes)
    for i in range(5):
        cx, cy = rng.uniform(0.1, 0.9, size=2) * size
        r = size * (0.04 + 0.03 * i)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    mask = np.asarray(shapes, dtype=np.float32)[:, :, None] / 255.0
    image = image * (1 - mask) + mask * np.array([0.95, 0.85, 0.2], np.float32)
    image += rng.normal(0.0, GRAIN, image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def time_encoding(image: np.ndarray, output_format: str, quality: int, min_seconds: float, min_calls: int) -> float:
    """Median seconds of one encode() call, over at least `min_calls` calls and `min_seconds`."""
    encode(image, output_format, quality)  # a codec's first call loads and sets it up
    seconds: list[float] = []
    spent = 0.0
    while len(seconds) < min_calls or spent < min_seconds:
        started = time.perf_counter()
        encode(image, output_format, quality)
        seconds.append(time.perf_counter() - started)
        spent += seconds[-1]
    return statistics.median(seconds)


def measure(
    sizes: Sequence[int],
    quality: int = DEFAULT_QUALITY,
    formats: Sequence[str] = OUTPUT_FORMATS,
    min_seconds: float = 0.5,
    min_calls: int = 5,
) -> list[Encoding]:
    out = []
    for size in sizes:
        for kind in PICTURES:
            image = picture(kind, size)
            for fmt in formats:
                seconds = time_encoding(image, fmt, quality, min_seconds, min_calls)
                out.append(Encoding(kind, size, fmt, seconds * 1000, len(encode(image, fmt, quality))))
    return out


def table(results: Sequence[Encoding], quality: int) -> str:
    """One row per size and picture: each format's ms and KiB."""
    formats = list(dict.fromkeys(r.output_format for r in results))
    head = " | ".join(f"{f}{'' if f == 'png' else f' q{quality}'} ms | KiB" for f in formats)
    lines = [f"| size | picture | {head} |", "|" + "---|" * (2 + 2 * len(formats))]
    rows: dict[tuple[int, str], dict[str, Encoding]] = {}
    for r in results:
        rows.setdefault((r.size, r.picture), {})[r.output_format] = r
    for (size, kind), by_format in rows.items():
        cells = " | ".join(f"{by_format[f].ms:.2f} | {by_format[f].size_bytes / 1024:.1f}" for f in formats)
        lines.append(f"| {size}x{size} | {kind} | {cells} |")
    return "\n".join(lines)


def _sizes(raw: str) -> tuple[int, ...]:
    low, high = contract.IMAGE_SIZE_BOUNDS
    allowed = f"sides from {low} to {high} in multiples of {contract.IMAGE_SIZE_MULTIPLE}, separated by commas"
    try:
        sizes = tuple(int(part) for part in raw.split(","))
    except ValueError:
        raise ValueError(f"--sizes {raw!r}: allowed {allowed}") from None
    bad = [s for s in sizes if not low <= s <= high or s % contract.IMAGE_SIZE_MULTIPLE]
    if not sizes or bad:
        raise ValueError(f"--sizes {raw!r}: {bad or 'none'} not allowed; allowed {allowed}")
    return sizes


class FormatSettings(ProgramSettings):
    """Which sizes, at which quality, for how long."""

    PROG: ClassVar[str] = "python -m runtime.bench.formats"
    DESCRIPTION: ClassVar[str] = "Encode time and size of an answer per response format and image size."

    sizes: str = setting(flag="--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="image sides, comma-separated")
    quality: int = setting(flag="--quality", default=DEFAULT_QUALITY, ge=1, le=100, help="jpeg and webp")
    seconds: float = setting(flag="--seconds", default=0.5, gt=0, help="per figure, at least")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = FormatSettings.from_args(argv)
        sizes = _sizes(args.sizes)
    except (SettingsError, ValueError) as exc:
        return error_exit(FormatSettings.PROG, exc)
    print(table(measure(sizes, args.quality, min_seconds=args.seconds), args.quality))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

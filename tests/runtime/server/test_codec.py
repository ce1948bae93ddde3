"""Image prompts are decoded safely and results encode in every output format (runtime.server.codec)."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from runtime.server import codec
from runtime.server.codec import ImageInputError, InputLimits

LIMITS = InputLimits(max_bytes=256 * 1024, max_pixels=1024 * 1024, min_side=64)


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (96, 80), mode: str = "RGB", **save: object) -> bytes:
    rng = np.random.default_rng(0)
    if mode == "I;16":
        picture = Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    else:
        picture = Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    picture.save(buf, format=fmt, **save)
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header declares width x height (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 64)  # far less than width x height: never decoded
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_each_allowed_format_opens_as_rgb(fmt: str) -> None:
    image = codec.open_image(image_bytes(fmt), "image", LIMITS)
    assert image.mode == "RGB"
    assert image.size == (96, 80)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"hello, not an image", "image: not a PNG, JPEG, WEBP image"),
        (b"", "image: empty (send a PNG, JPEG, WEBP image)"),
        (image_bytes("GIF"), "image: not a PNG, JPEG, WEBP image"),
        (image_bytes("BMP"), "image: not a PNG, JPEG, WEBP image"),
        (image_bytes("PNG")[:300], "image: truncated or corrupt PNG data"),
        (image_bytes("PNG", mode="I;16"), "image: colour mode I;16 is not supported"),
        (image_bytes("PNG", size=(32, 200)), "image: 32x200 is smaller than 64 pixels on a side"),
        (png_declaring(30000, 30000), "image: declares more pixels than the limit of 1048576 pixels"),
        (png_declaring(3000, 3000), "image: 3000x3000 is 9000000 pixels, over the limit of 1048576 pixels"),
        (b"\x89PNG" + b"\x00" * (300 * 1024), "image: 307204 bytes, over the limit of 262144 bytes"),
    ],
    ids=["text", "empty", "gif", "bmp", "truncated", "16-bit", "too-small", "bomb", "over-pixels", "too-large"],
)
def test_bad_images_are_one_line_refusals(data: bytes, expected: str) -> None:
    with pytest.raises(ImageInputError) as refused:
        codec.open_image(data, "image", LIMITS)
    message = str(refused.value)
    assert message.startswith(expected), message
    assert "\n" not in message
    assert refused.value.field == "image"


def test_a_bomb_is_refused_from_its_header_without_decoding() -> None:
    """Pillow's own guard only warns below twice its limit; ours refuses on the declared size."""
    with pytest.raises(ImageInputError, match="over the limit"):
        codec.open_image(png_declaring(2000, 2000), "image", InputLimits(max_pixels=1000 * 1000))


def test_transparency_becomes_white_and_orientation_is_applied() -> None:
    clear = Image.new("RGBA", (64, 64), (10, 20, 30, 0))
    buf = io.BytesIO()
    clear.save(buf, format="PNG")
    assert codec.open_image(buf.getvalue(), "image", LIMITS).getpixel((0, 0)) == (255, 255, 255)

    wide = Image.new("RGB", (128, 64), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    wide.save(buf, format="JPEG", exif=exif)
    assert codec.open_image(buf.getvalue(), "image", LIMITS).size == (64, 128)


def test_base64_plain_and_data_url() -> None:
    raw = image_bytes("PNG")
    plain = base64.b64encode(raw).decode()
    assert codec.decode_base64(plain, "image", LIMITS) == raw
    assert codec.decode_base64(f"data:image/png;base64,{plain}", "image", LIMITS) == raw
    with pytest.raises(ImageInputError, match=r"^image: not valid base64"):
        codec.decode_base64("***not base64***", "image", LIMITS)
    with pytest.raises(ImageInputError, match=r"^image: larger than 16 bytes once decoded"):
        codec.decode_base64(plain, "image", InputLimits(max_bytes=16))


def test_fit_crops_to_the_aspect_and_scales_to_unit_floats() -> None:
    image = codec.open_image(image_bytes("PNG", size=(200, 100)), "image", LIMITS)
    pixels = codec.fit(image, 64, 64)
    assert pixels.shape == (64, 64, 3)
    assert pixels.dtype == np.float32
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0


@pytest.mark.parametrize("fmt", codec.OUTPUT_FORMATS)
def test_every_output_format_decodes_back_to_the_image(fmt: str) -> None:
    rng = np.random.default_rng(1)
    smooth = np.linspace(0.0, 1.0, 64 * 64 * 3, dtype=np.float32).reshape(64, 64, 3)
    image = np.clip(smooth + rng.normal(0, 0.01, smooth.shape).astype(np.float32), 0, 1)
    data = codec.encode(image, fmt)
    back = Image.open(io.BytesIO(data))
    assert back.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]
    error = np.abs(np.asarray(back, dtype=np.float32) / 255.0 - image).mean()
    assert error < (0.003 if fmt == "png" else 0.03)


@pytest.mark.parametrize(("picture", "width", "height"), [("noise", 64, 64), ("scene", 512, 512), ("scene", 72, 136)])
def test_png_is_lossless_valid_and_as_small_as_pillows(picture: str, width: int, height: int) -> None:
    """The PNG writer's file: every chunk's CRC checks out (Pillow's verify), it decodes to exactly the
    pixels, and it is within 2 % of the size Pillow's own encoder makes at the same zlib level."""
    from runtime.bench.formats import picture as make

    pixels = codec.to_pixels(make(picture, max(width, height))[:height, :width])
    data = codec.png(pixels)
    Image.open(io.BytesIO(data)).verify()
    back = Image.open(io.BytesIO(data))
    assert (back.format, back.mode, back.size) == ("PNG", "RGB", (width, height))
    assert np.array_equal(np.asarray(back), pixels)
    pillows = io.BytesIO()
    Image.fromarray(pixels).save(pillows, format="PNG", compress_level=codec.PNG_LEVEL)
    assert len(data) <= 1.02 * len(pillows.getvalue()), (len(data), len(pillows.getvalue()))


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((8, 8, 3), np.uint16),
        np.zeros((8, 8, 4), np.uint8),
        np.zeros((8, 8), np.uint8),
        np.zeros((0, 8, 3), np.uint8),
    ],
)
def test_png_refuses_what_it_cannot_write_as_8_bit_rgb(pixels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="allowed uint8 H x W x 3"):
        codec.png(pixels)


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_quality_trades_bytes(fmt: str) -> None:
    rng = np.random.default_rng(2)
    image = rng.random((128, 128, 3), dtype=np.float32)
    assert len(codec.encode(image, fmt, quality=30)) < len(codec.encode(image, fmt, quality=95))

"""Images in and out of the API: decode an image prompt safely, encode results as PNG, JPEG or WebP.

An image prompt is untrusted bytes. Its header is read first and the declared size checked
against the pixel limit before a single pixel is decoded (a 50 kB PNG can declare 30,000 x
30,000 pixels: a decompression bomb); only PNG, JPEG and WebP are opened, and only the colour
modes that map onto RGB. Every refusal is an `ImageInputError` whose message is one line
naming the field, what was wrong and what is allowed; the route answers it with its `status`
(413 for more bytes than allowed, 422 for anything else).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# What Pillow may open: the formats browsers and phone cameras produce. GIF, BMP, TIFF, ICO and
# the rest of Pillow's plug-ins stay closed (more parsers is more attack surface).
INPUT_FORMATS: Final = ("PNG", "JPEG", "WEBP")
# Modes with a faithful RGB conversion; 16-bit, 32-bit integer and float images are refused.
INPUT_MODES: Final = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr")
OUTPUT_FORMATS: Final = ("png", "jpeg", "webp")
MEDIA_TYPES: Final = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
DEFAULT_QUALITY: Final = 90  # JPEG/WebP: visually lossless for generated images, about a tenth of the PNG
QUALITY_BOUNDS: Final = (1, 100)
PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
PNG_LEVEL: Final = 1  # zlib's fastest: level 6 took 16.3 ms against 10.6 at 512x512 for a file 3 % smaller
_DATA_URL: Final = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?;base64,", re.IGNORECASE)
_FORMAT_NAMES: Final = ", ".join(INPUT_FORMATS)


class ImageInputError(ValueError):
    """An image prompt the server will not use; `field` names the request field, the message says why."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.status = status  # the HTTP status it is answered with


@dataclass(frozen=True)
class InputLimits:
    """What an image prompt may be: encoded bytes, decoded pixels and the shortest side."""

    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    min_side: int = 64

    @property
    def max_base64_chars(self) -> int:
        """The longest base64 text (a data URL's header aside) that may hold max_bytes."""
        return (self.max_bytes + 2) // 3 * 4 + 4


# The longest data URL header accepted before the base64 text ("data:image/png;base64," is 22).
MAX_DATA_URL_HEADER: Final = 64


def decode_prompt(value: str | bytes, width: int, height: int, limits: InputLimits, field: str = "image") -> np.ndarray:
    """An image prompt (base64 text, a data URL, or file bytes) checked, decoded and fitted to width x height."""
    data = decode_base64(value, field, limits) if isinstance(value, str) else value
    return fit(open_image(data, field, limits), width, height)


def decode_base64(text: str, field: str, limits: InputLimits) -> bytes:
    """The bytes of a base64 image (plain, or a ``data:image/...;base64,`` URL as browsers write it)."""
    match = _DATA_URL.match(text[:MAX_DATA_URL_HEADER])
    payload = text[match.end() :] if match else text
    # A base64 text of n characters holds about 3n/4 bytes: refuse before decoding an oversized one.
    if len(payload) > limits.max_base64_chars:
        raise ImageInputError(field, f"larger than {limits.max_bytes} bytes once decoded", 413)
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError(field, "not valid base64 (send the image file's bytes base64-encoded)") from None


def open_image(data: bytes, field: str, limits: InputLimits) -> Image.Image:
    """The image prompt as RGB, checked and fully decoded; ImageInputError otherwise."""
    if len(data) > limits.max_bytes:
        raise ImageInputError(field, f"{len(data)} bytes, over the limit of {limits.max_bytes} bytes", 413)
    if not data:
        raise ImageInputError(field, f"empty (send a {_FORMAT_NAMES} image)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageInputError(field, f"declares more pixels than the limit of {limits.max_pixels} pixels") from None
    except UnidentifiedImageError:
        raise ImageInputError(field, f"not a {_FORMAT_NAMES} image") from None
    except (OSError, ValueError, SyntaxError):
        raise ImageInputError(field, f"not a readable {_FORMAT_NAMES} image") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageInputError(
            field, f"{width}x{height} is {width * height} pixels, over the limit of {limits.max_pixels} pixels"
        )
    if min(width, height) < limits.min_side:
        raise ImageInputError(field, f"{width}x{height} is smaller than {limits.min_side} pixels on a side")
    if image.mode not in INPUT_MODES:
        raise ImageInputError(field, f"colour mode {image.mode} is not supported (allowed: {', '.join(INPUT_MODES)})")
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise ImageInputError(field, f"truncated or corrupt {image.format} data") from None
    upright: Image.Image = ImageOps.exif_transpose(image) or image  # phone photos: as the camera was held
    if upright.mode in ("RGBA", "LA", "PA") or (upright.mode == "P" and "transparency" in upright.info):
        rgba = upright.convert("RGBA")
        background = Image.new("RGB", upright.size, (255, 255, 255))  # transparent pixels become white
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return upright.convert("RGB")


def fit(image: Image.Image, width: int, height: int) -> np.ndarray:
    """The image centre-cropped to width:height, resized to width x height: float32 HWC in [0, 1]."""
    fitted = ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)
    return np.asarray(fitted, dtype=np.float32) / 255.0


def to_pixels(image: np.ndarray) -> np.ndarray:
    """Float HWC in [0, 1] (what the backends return) as uint8 HWC."""
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)


def png(pixels: np.ndarray, level: int = PNG_LEVEL) -> bytes:
    """uint8 HWC RGB pixels as a PNG file: every row Sub-filtered, deflated at zlib `level`.

    Sub: each byte minus the one a pixel to its left. Pillow chooses a filter per row by trying all
    five, which took as long as the deflate itself: 24.1 ms for the benchmark's 512x512 scene against
    11.4 ms here, for files of 530 and 533 KiB (docs/benchmarks.md, "Response formats")."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3 or 0 in pixels.shape:
        raise ValueError(f"png: {pixels.dtype} pixels of shape {pixels.shape}: allowed uint8 H x W x 3, H and W >= 1")
    height, width, _ = pixels.shape
    rows = pixels.reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = 1  # the row's filter type: Sub
    filtered[:, 1:4] = rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=filtered[:, 4:])  # modulo 256, as PNG's filters are
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, no interlace
    return b"".join(
        (
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(filtered.data, level)),
            _chunk(b"IEND", b""),
        )
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def encode(image: np.ndarray, output_format: str = "png", quality: int = DEFAULT_QUALITY) -> bytes:
    """A result image as file bytes: PNG (lossless, fast settings), JPEG or WebP at `quality`."""
    if output_format == "png":
        return png(to_pixels(image))
    picture = Image.fromarray(to_pixels(image))
    buf = io.BytesIO()
    if output_format == "jpeg":
        picture.save(buf, format="JPEG", quality=quality)
    elif output_format == "webp":
        # method 0 is libwebp's fastest encoder; the default 4 takes several times as long for a few % less.
        picture.save(buf, format="WEBP", quality=quality, method=0)
    else:
        raise ValueError(f"output format {output_format!r}: allowed {', '.join(OUTPUT_FORMATS)}")
    return buf.getvalue()

"""What the API speaks: the body of POST /v1/images, its JSON answer, and errors as one line.

Request bounds come from `Limits`; the request model is built once per app from them, so the
OpenAPI document shows the real limits. Strict types: "5" is not a number of steps, true is
not 1 (2.0 is 2, as JSON Schema says). Every rule the model enforces is also in its JSON
schema (blank prompts and NUL as patterns, the cross-field rules below as if/then), so a
request valid by the published schema is never refused for its shape (an image prompt's bytes
are content: whether they are a PNG is checked when they are decoded, runtime.server.codec).
Every error, whatever raised it, is answered as `ApiError.body` (the `ErrorBody` schema): one
line naming the field and its allowed values.

The wire protocol (sdk/typescript/src/request.ts speaks it):
- the body is JSON, or multipart/form-data with the same field names (numbers as text, and
  `image` as a file part);
- `image`: an image prompt, base64 or a ``data:image/...;base64,`` URL in JSON (bytes in a file
  part); `strength` (0 < strength <= 1, default `DEFAULT_STRENGTH`): how far from it to move;
  only with an image;
- `response_format`: png (default), jpeg or webp answer the one image as binary with the
  X-Seed, X-Queue-Ms, X-Inference-Ms, X-Batch-Size and X-Request-Id headers; json answers every
  image base64-encoded in `output_format` (png by default; only with json);
- `quality` (1-100, default `runtime.server.codec.DEFAULT_QUALITY`): for jpeg and webp only
  (png is lossless: a quality there is refused, as it would change nothing);
- `steps` and `guidance_scale` null (or absent): the model's defaults (SD-Turbo: 1 step, guidance 0);
  an image prompt runs the last steps x strength steps of the schedule, at least one (the schedule
  is lengthened where steps x strength is below 1: the JSON answer's `steps` says how long).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from runtime.server.codec import DEFAULT_QUALITY, MAX_DATA_URL_HEADER, OUTPUT_FORMATS, QUALITY_BOUNDS, InputLimits
from runtime.server.settings import Limits

RESPONSE_FORMATS: Final = (*OUTPUT_FORMATS, "json")
LOSSY_FORMATS: Final = ("jpeg", "webp")  # the formats a quality applies to
# diffusers' img2img default: enough noise to restyle the image prompt while keeping its layout.
DEFAULT_STRENGTH: Final = 0.8
# What "blank" means, written once for the validator and the schema's pattern (JSON Schema and
# Python agree on these six characters; they differ on other Unicode spaces).
BLANK_CHARS: Final = " \t\n\r\f\v"
_NOT_BLANK_NO_NUL: Final = r"^[^\x00]*[^\x00 \t\n\r\f\v][^\x00]*$"
_NO_NUL: Final = r"^[^\x00]*$"
INTEGER_FIELDS: Final = ("steps", "width", "height", "seed", "num_images", "quality")
NUMBER_FIELDS: Final = ("guidance_scale", "strength")
# pydantic's bound errors: the message then quotes the refused number itself.
_BOUND_ERRORS: Final = ("less_than_equal", "greater_than_equal", "less_than", "greater_than", "multiple_of")


class ApiError(Exception):
    """An HTTP error answered as one JSON line: {"error": ..., "field": ..., "request_id": ...}."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self, request_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message, "request_id": request_id}
        if self.field:
            body["field"] = self.field
        return body


class ErrorBody(BaseModel):
    """Every error answer: one line saying what is wrong, the field it is about, and the request id."""

    error: str = Field(description="one line: the field, what is wrong, and what is allowed")
    field: str | None = Field(default=None, description="the field, header or part of the request at fault")
    request_id: str | None = Field(description="this request's X-Request-Id")


class Liveness(BaseModel):
    """GET /healthz: the process answers (nothing about the model or version); 503 once every device worker died."""

    status: Literal["alive", "no device"]


class Readiness(BaseModel):
    """GET /readyz: whether this pod takes images now, and why not."""

    ready: bool
    state: str = Field(description="starting, loading, warming, ready, failed or draining")
    reason: str = Field(description="why not ready (for operators); 'ready' when ready")


class Timings(BaseModel):
    queue_ms: float
    inference_ms: float
    batch_size: int  # images in the pipeline call the request rode in


class ImagesResponse(BaseModel):
    """The JSON answer (`response_format: "json"`): every image base64-encoded in `output_format`, with its seed."""

    request_id: str | None
    seed: int
    width: int
    height: int
    steps: int
    output_format: Literal["png", "jpeg", "webp"] = Field(description="the encoding of every image")
    images: list[str]
    timings: Timings


class Index(BaseModel):
    """GET /: where this server's pages are (each only when it is served)."""

    name: str
    images: str = Field(description="POST here to generate images")
    ui: str | None = Field(default=None, description="the browser UI, when it is on")
    docs: str | None = Field(default=None, description="the API's description, when it is on")


# The cross-field rules: pydantic error type -> (field, message), the same rules as if/then in the schema.
ONE_BINARY_IMAGE: Final = "a png, jpeg or webp response holds one image; use response_format 'json'"
_RULES: Final = {
    "one_binary_image": ("num_images", ONE_BINARY_IMAGE),
    "output_format_json_only": (
        "output_format",
        "only with response_format 'json' (a png, jpeg or webp response is encoded as response_format says)",
    ),
    "quality_lossy_only": (
        "quality",
        "only for jpeg and webp images (png is lossless); set response_format, or output_format with "
        "response_format 'json', to 'jpeg' or 'webp'",
    ),
    "strength_needs_image": ("strength", "only with an image prompt (image)"),
}


def _present(name: str, kind: str) -> dict[str, Any]:
    """JSON Schema: the body has `name` with a value of this JSON type (null is absent, as the model reads it)."""
    return {"properties": {name: {"type": kind}}, "required": [name]}


def _is(name: str, *values: str) -> dict[str, Any]:
    return {"properties": {name: {"enum": list(values)}}, "required": [name]}


def _image_request_schema(schema: dict[str, Any]) -> None:
    """The cross-field rules in JSON Schema (`_RULES`), as if/then."""
    schema["allOf"] = [
        {  # several images: JSON only
            "if": {"properties": {"num_images": {"minimum": 2}}, "required": ["num_images"]},
            "then": _is("response_format", "json"),
        },
        {"if": _present("output_format", "string"), "then": _is("response_format", "json")},
        {
            "if": _present("quality", "integer"),
            "then": {
                "anyOf": [
                    _is("response_format", *LOSSY_FORMATS),
                    {"allOf": [_is("response_format", "json"), _is("output_format", *LOSSY_FORMATS)]},
                ]
            },
        },
        {"if": _present("strength", "number"), "then": _present("image", "string")},
    ]


class ImageRequestBase(BaseModel):
    """Shared validators; fields and bounds are added by `build_request_model`."""

    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra=_image_request_schema)

    @model_validator(mode="before")
    @classmethod
    def _integral_numbers(cls, data: Any) -> Any:
        """2.0 is an integer in JSON Schema: accept it where the schema says integer (2.5 stays refused)."""
        if isinstance(data, dict):
            for name in INTEGER_FIELDS:
                value = data.get(name)
                if isinstance(value, float) and value.is_integer():
                    data = {**data, name: int(value)}
        return data

    @field_validator("prompt", check_fields=False)
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip(BLANK_CHARS):
            raise ValueError("must not be empty or only whitespace")
        return value

    @field_validator("prompt", "negative_prompt", check_fields=False)
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ImageRequestBase:
        """`_RULES`, in that order (the schema's allOf holds the same)."""
        answer = getattr(self, "response_format", "png")
        broken = None
        if answer != "json" and getattr(self, "num_images", 1) > 1:
            broken = "one_binary_image"
        elif getattr(self, "output_format", None) is not None and answer != "json":
            broken = "output_format_json_only"
        elif getattr(self, "quality", None) is not None and self.image_format not in LOSSY_FORMATS:
            broken = "quality_lossy_only"
        elif getattr(self, "strength", None) is not None and getattr(self, "image", None) is None:
            broken = "strength_needs_image"
        if broken is not None:
            raise PydanticCustomError(broken, _RULES[broken][1])
        return self

    @property
    def image_format(self) -> str:
        """The encoding of the answer's images: response_format, or output_format (png) in a JSON answer."""
        answer = str(getattr(self, "response_format", "png"))
        return answer if answer != "json" else str(getattr(self, "output_format", None) or "png")


def allowed_ranges(limits: Limits, image_limits: InputLimits | None = None) -> dict[str, str]:
    """Human-readable allowed values per field, quoted in every 422 about that field."""
    image_limits = image_limits or InputLimits()

    def size(largest: int) -> str:
        if largest <= limits.min_size:
            return f"{limits.min_size} (the only size this server serves)"
        served = " (the largest this server serves)" if largest < limits.max_size else ""
        return f"a multiple of {limits.size_multiple} from {limits.min_size} to {largest}{served}"

    return {
        "prompt": f"a non-empty string of at most {limits.max_prompt_chars} characters",
        "negative_prompt": f"a string of at most {limits.max_prompt_chars} characters, or null",
        "steps": f"an integer from {limits.min_steps} to {limits.max_steps}",
        "guidance_scale": f"a number from {limits.min_guidance:g} to {limits.max_guidance:g}, or null for the "
        "model's default (0 or 1 turns classifier-free guidance off)",
        "width": size(min(limits.max_size, limits.max_width)),
        "height": size(min(limits.max_size, limits.max_height)),
        "seed": f"an integer from 0 to {limits.max_seed}, or null for a random seed",
        "num_images": f"an integer from 1 to {limits.max_images}",
        "response_format": _choice(RESPONSE_FORMATS),
        "output_format": _choice(OUTPUT_FORMATS) + " (images inside a JSON answer; default 'png')",
        "quality": f"an integer from {QUALITY_BOUNDS[0]} to {QUALITY_BOUNDS[1]} for jpeg or webp "
        f"(default {DEFAULT_QUALITY})",
        "image": f"a PNG, JPEG or WebP image of at most {image_limits.max_bytes} bytes and "
        f"{image_limits.max_pixels} pixels, at least {image_limits.min_side} pixels a side: base64 or a data URL "
        "in JSON, a file part in multipart/form-data",
        "strength": f"a number above 0 and at most 1, with an image (default {DEFAULT_STRENGTH:g})",
    }


def _choice(values: Sequence[str]) -> str:
    return ", ".join(f"'{v}'" for v in values[:-1]) + f" or '{values[-1]}'"


def image_text_schema(image_limits: InputLimits) -> dict[str, Any]:
    """The JSON Schema of `image` in a JSON body: base64 text, or a data URL (its header counts too)."""
    return {
        "type": "string",
        "maxLength": image_text_max_chars(image_limits),
        "contentEncoding": "base64",
        "description": "an image prompt (PNG, JPEG or WebP): base64, or a data:image/...;base64, URL",
    }


def image_text_max_chars(image_limits: InputLimits) -> int:
    return image_limits.max_base64_chars + MAX_DATA_URL_HEADER


def build_request_model(limits: Limits, image_limits: InputLimits | None = None) -> type[ImageRequestBase]:
    """The pydantic model for these limits (null size, steps and guidance mean the model's defaults).

    `image` is text (base64 or a data URL) from JSON, bytes from a multipart file part (the route
    puts them there); the schema shows the text.
    """
    image_limits = image_limits or InputLimits()
    longest_text = image_text_max_chars(image_limits)

    def size(largest: int) -> Any:
        return (int | None, Field(default=None, ge=limits.min_size, le=largest, multiple_of=limits.size_multiple))

    def image_not_too_long(value: str | bytes | None) -> str | bytes | None:
        if isinstance(value, str) and len(value) > longest_text:
            raise ValueError(f"{len(value)} characters is longer than {longest_text}")
        return value

    return create_model(
        "ImageRequest",
        __base__=ImageRequestBase,
        prompt=(
            str,
            Field(
                min_length=1,
                max_length=limits.max_prompt_chars,
                examples=["a lighthouse at dawn"],
                json_schema_extra={"pattern": _NOT_BLANK_NO_NUL},
            ),
        ),
        negative_prompt=(
            str | None,
            Field(default=None, max_length=limits.max_prompt_chars, json_schema_extra={"pattern": _NO_NUL}),
        ),
        steps=(
            int | None,
            Field(
                default=None,
                ge=limits.min_steps,
                le=limits.max_steps,
                description="denoising steps over the whole schedule (an image prompt runs the last steps x "
                "strength of them, at least one); null: the model's default (SD-Turbo 1, SD 20)",
            ),
        ),
        guidance_scale=(
            float | None,
            Field(
                default=None,
                ge=limits.min_guidance,
                le=limits.max_guidance,
                allow_inf_nan=False,
                description="classifier-free guidance; 1 or less turns it off (the UNet runs once per step, not "
                "twice); null: the model's default (SD-Turbo 0, SD 7.5)",
            ),
        ),
        width=size(min(limits.max_size, limits.max_width)),
        height=size(min(limits.max_size, limits.max_height)),
        seed=(int | None, Field(default=None, ge=0, le=limits.max_seed)),
        num_images=(int, Field(default=1, ge=1, le=limits.max_images)),
        response_format=(
            Literal["png", "jpeg", "webp", "json"],
            Field(
                default="png",
                description="png, jpeg or webp: the one image as binary, seed and timings in X- headers; "
                "json: every image base64-encoded in output_format, with the seed and timings",
            ),
        ),
        output_format=(
            Literal["png", "jpeg", "webp"] | None,
            Field(default=None, description="the images' encoding inside a JSON answer (null: png); JSON only"),
        ),
        quality=(
            int | None,
            Field(
                default=None,
                ge=QUALITY_BOUNDS[0],
                le=QUALITY_BOUNDS[1],
                description=f"jpeg and webp only (null: {DEFAULT_QUALITY}); refused for png, which is lossless",
            ),
        ),
        image=(
            Annotated[
                str | bytes | None,
                AfterValidator(image_not_too_long),
                WithJsonSchema({"anyOf": [image_text_schema(image_limits), {"type": "null"}]}),
            ],
            None,
        ),
        strength=(
            float | None,
            Field(
                default=None,
                gt=0.0,
                le=1.0,
                allow_inf_nan=False,
                description=f"with an image only: how far from it to move (1: all the way); null: {DEFAULT_STRENGTH:g}",
            ),
        ),
    )


def _field_of(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    name = ".".join(parts) if parts else "body"
    return " ".join(name.split())[:64]  # client-chosen keys: keep the message one short line


def describe_errors(errors: Sequence[Mapping[str, Any]], ranges: Mapping[str, str]) -> tuple[str, str]:
    """(field, one-line message) for the first validation error, with the field's allowed values."""
    if not errors:
        return "body", "body: invalid request"
    err = errors[0]
    kind = str(err.get("type", ""))
    field = _field_of(err.get("loc", ()))
    if kind in _RULES:
        name, rule = _RULES[kind]
        return name, f"{name}: {rule}"
    if kind == "json_invalid":
        return "body", 'body: malformed JSON (send an object like {"prompt": "a cat"})'
    if field == "body" or kind in ("model_type", "model_attributes_type", "dict_type"):
        return "body", 'body: must be a JSON object like {"prompt": "a cat"}'
    if kind == "extra_forbidden":
        return field, f"{field}: unknown field (allowed: {', '.join(ranges)})"
    top = field.split(".")[0]
    allowed = ranges.get(top)
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    value = err.get("input")
    if kind in _BOUND_ERRORS and isinstance(value, int | float) and not isinstance(value, bool):
        msg = f"{value:g} is not allowed" if isinstance(value, float) else f"{value} is not allowed"
    message = f"{field}: {msg}" + (f"; allowed: {allowed}" if allowed else "")
    return field, " ".join(message.split())  # one line, whatever the input contained

"""What the API speaks: the body of POST /v1/images, its JSON answer, and errors as one line.

Request bounds come from `Limits`; the request model is built once per app from them, so the
OpenAPI document shows the real limits. Strict types: "5" is not a number of steps, true is
not 1 (2.0 is 2, as JSON Schema says). Every rule the model enforces is also in its JSON
schema (blank prompts and NUL as patterns, several images only as JSON as if/then), so a
request valid by the published schema is never refused for its shape. Every error, whatever
raised it, is answered as `ApiError.body` (the `ErrorBody` schema): one line naming the field
and its allowed values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic_core import PydanticCustomError

from runtime.server.settings import Limits

RESPONSE_FORMATS = ("png", "json")
# What "blank" means, written once for the validator and the schema's pattern (JSON Schema and
# Python agree on these six characters; they differ on other Unicode spaces).
BLANK_CHARS: Final = " \t\n\r\f\v"
_NOT_BLANK_NO_NUL: Final = r"^[^\x00]*[^\x00 \t\n\r\f\v][^\x00]*$"
_NO_NUL: Final = r"^[^\x00]*$"
_INTEGER_FIELDS: Final = ("steps", "width", "height", "seed", "num_images")
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
    """GET /healthz: the process answers (nothing about the model, device or version)."""

    status: Literal["alive"]


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
    """The JSON answer (`response_format: "json"`): every image as base64 PNG, with its seed."""

    request_id: str | None
    seed: int
    width: int
    height: int
    steps: int
    images: list[str]
    timings: Timings


ONE_PNG_IMAGE: Final = "a PNG response holds one image; use response_format 'json'"
ONE_PNG_IMAGE_ERROR: Final = "one_png_image"  # its pydantic error type: describe_errors names num_images


def _image_request_schema(schema: dict[str, Any]) -> None:
    """The cross-field rule in JSON Schema: num_images above 1 requires response_format json."""
    schema["if"] = {"properties": {"num_images": {"minimum": 2}}, "required": ["num_images"]}
    schema["then"] = {"properties": {"response_format": {"const": "json"}}, "required": ["response_format"]}


class ImageRequestBase(BaseModel):
    """Shared validators; fields and bounds are added by `build_request_model`."""

    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra=_image_request_schema)

    @model_validator(mode="before")
    @classmethod
    def _integral_numbers(cls, data: Any) -> Any:
        """2.0 is an integer in JSON Schema: accept it where the schema says integer (2.5 stays refused)."""
        if isinstance(data, dict):
            for name in _INTEGER_FIELDS:
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
    def _one_png_image(self) -> ImageRequestBase:
        if getattr(self, "response_format", "png") == "png" and getattr(self, "num_images", 1) > 1:
            raise PydanticCustomError(ONE_PNG_IMAGE_ERROR, ONE_PNG_IMAGE)
        return self


def allowed_ranges(limits: Limits) -> dict[str, str]:
    """Human-readable allowed values per field, quoted in every 422 about that field."""

    def size(largest: int) -> str:
        if largest <= limits.min_size:
            return f"{limits.min_size} (the only size this server serves)"
        served = " (the largest this server serves)" if largest < limits.max_size else ""
        return f"a multiple of {limits.size_multiple} from {limits.min_size} to {largest}{served}"

    return {
        "prompt": f"a non-empty string of at most {limits.max_prompt_chars} characters",
        "negative_prompt": f"a string of at most {limits.max_prompt_chars} characters, or null",
        "steps": f"an integer from {limits.min_steps} to {limits.max_steps}",
        "guidance_scale": f"a number from {limits.min_guidance:g} to {limits.max_guidance:g}",
        "width": size(min(limits.max_size, limits.max_width)),
        "height": size(min(limits.max_size, limits.max_height)),
        "seed": f"an integer from 0 to {limits.max_seed}, or null for a random seed",
        "num_images": f"an integer from 1 to {limits.max_images}",
        "response_format": " or ".join(f"'{f}'" for f in RESPONSE_FORMATS),
    }


def build_request_model(limits: Limits) -> type[ImageRequestBase]:
    """The pydantic model for these limits (null size/steps mean the model's defaults)."""

    def size(largest: int) -> Any:
        return (int | None, Field(default=None, ge=limits.min_size, le=largest, multiple_of=limits.size_multiple))

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
        steps=(int | None, Field(default=None, ge=limits.min_steps, le=limits.max_steps)),
        guidance_scale=(float, Field(default=7.5, ge=limits.min_guidance, le=limits.max_guidance, allow_inf_nan=False)),
        width=size(min(limits.max_size, limits.max_width)),
        height=size(min(limits.max_size, limits.max_height)),
        seed=(int | None, Field(default=None, ge=0, le=limits.max_seed)),
        num_images=(int, Field(default=1, ge=1, le=limits.max_images)),
        response_format=(Literal["png", "json"], "png"),
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
    if kind == ONE_PNG_IMAGE_ERROR:
        return "num_images", f"num_images: {ONE_PNG_IMAGE}"
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

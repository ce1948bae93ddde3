"""The device client: pull the endpoint inventory, pick the nearest healthy endpoint, generate there.

As a library (an AR app backend)::

    from runtime.client import EdgeDiffusionClient, ImageRequest, cognito_credentials

    client = EdgeDiffusionClient(
        inventory_url="https://.../v1/endpoints",  # SigV4-signed; its /v1/token route issues tokens
        fallback_urls=["https://alb.example.com"],  # tried last, even with the inventory down
    )
    # inventoryAuth=cognito: credentials=cognito_credentials(pool_id, provider, id_token, region)
    result = client.generate(ImageRequest(prompt="a lighthouse at dawn"), deadline_s=30)
    result.images[0]  # PNG bytes (result.media_type); result.endpoint says who served, result.timings how long
    # An image prompt (bytes or a pathlib.Path: multipart; a base64 or data: URL str: JSON), a JPEG answer:
    ImageRequest(prompt="in watercolour", image=Path("photo.jpg"), strength=0.6, output_format="jpeg")

From a shell::

    python -m runtime.client "a lighthouse at dawn" -o out.png --inventory-url URL
    python -m runtime.client "a lighthouse at dawn" -o out.png --endpoints-file endpoints.json
    python -m runtime.client "in watercolour" --image photo.jpg --strength 0.6 -o out.jpg --fallback-url URL

The names below are the library's public API (defined in ``client`` and ``auth``), imported on
first use so that ``python -m runtime.client`` can say in one line what is missing without httpx.
Not in the serving image: devices and app backends install it (runtime/requirements-client.txt).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from runtime.client.auth import SigV4Auth, TokenSource, cognito_credentials
    from runtime.client.client import (
        Attempt,
        ClientError,
        EdgeDiffusionClient,
        GenerationResult,
        ImageRequest,
        NoEndpointError,
        Probe,
        RequestRejectedError,
    )

_HOMES: Final = {
    "SigV4Auth": "runtime.client.auth",
    "TokenSource": "runtime.client.auth",
    "cognito_credentials": "runtime.client.auth",
    "Attempt": "runtime.client.client",
    "ClientError": "runtime.client.client",
    "EdgeDiffusionClient": "runtime.client.client",
    "GenerationResult": "runtime.client.client",
    "ImageRequest": "runtime.client.client",
    "NoEndpointError": "runtime.client.client",
    "Probe": "runtime.client.client",
    "RequestRejectedError": "runtime.client.client",
}

__all__ = [
    "Attempt",
    "ClientError",
    "EdgeDiffusionClient",
    "GenerationResult",
    "ImageRequest",
    "NoEndpointError",
    "Probe",
    "RequestRejectedError",
    "SigV4Auth",
    "TokenSource",
    "cognito_credentials",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)

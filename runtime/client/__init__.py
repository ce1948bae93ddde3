"""The device client: pull the endpoint inventory, pick the nearest healthy endpoint, generate there.

As a library (an AR app backend)::

    from runtime.client import EdgeDiffusionClient, ImageRequest, cognito_credentials

    client = EdgeDiffusionClient(inventory_url="https://.../v1/endpoints")  # SigV4-signed
    # inventoryAuth=cognito: credentials=cognito_credentials(pool_id, provider, id_token, region)
    result = client.generate(ImageRequest(prompt="a lighthouse at dawn"), deadline_s=30)
    result.images[0]  # PNG bytes; result.endpoint says who served, result.timings how long

From a shell::

    python -m runtime.client "a lighthouse at dawn" -o out.png --inventory-url URL
    python -m runtime.client "a lighthouse at dawn" -o out.png --endpoints-file endpoints.json

The names below are the library's public API (defined in ``client`` and ``auth``). Not in the
serving image: devices and app backends install it.
"""

from runtime.client.auth import SigV4Auth, cognito_credentials
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
    "cognito_credentials",
]

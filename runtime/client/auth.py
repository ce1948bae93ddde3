"""Credentials for the inventory API: SigV4 signing (IAM auth) and Cognito identity-pool logins."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx


class SigV4Auth(httpx.Auth):
    """Signs requests to the inventory API (IAM auth) with botocore credentials."""

    def __init__(self, credentials: Any, region: str, service: str = "execute-api") -> None:
        self._credentials, self._region, self._service = credentials, region, service

    def auth_flow(self, request: httpx.Request) -> Any:
        from botocore.auth import SigV4Auth as BotoSigV4
        from botocore.awsrequest import AWSRequest

        signed = AWSRequest(method=request.method, url=str(request.url), data=request.content or None)
        BotoSigV4(self._credentials.get_frozen_credentials(), self._service, self._region).add_auth(signed)
        for name, value in signed.headers.items():
            request.headers[name] = value
        yield request


def cognito_credentials(identity_pool_id: str, provider_name: str, id_token: str, region: str) -> Any:
    """Credentials for ``inventoryAuth=cognito``: a signed-in user's ID token (from the user pool,
    ``provider_name`` like ``cognito-idp.REGION.amazonaws.com/POOL_ID``) exchanged at the identity
    pool (the InventoryStack's ``IdentityPoolId`` output). Pass the result as ``credentials=``."""
    import boto3
    from botocore.credentials import Credentials

    identity = boto3.client("cognito-identity", region_name=region)
    logins = {provider_name: id_token}
    identity_id = identity.get_id(IdentityPoolId=identity_pool_id, Logins=logins)["IdentityId"]
    issued = identity.get_credentials_for_identity(IdentityId=identity_id, Logins=logins)["Credentials"]
    return Credentials(issued["AccessKeyId"], issued["SecretKey"], issued["SessionToken"])


def region_of(url: str) -> str | None:
    """The Region of an execute-api URL (``https://id.execute-api.REGION.amazonaws.com/...``)."""
    parts = (urlsplit(url).hostname or "").split(".")
    return parts[2] if len(parts) > 3 and parts[1] == "execute-api" else None

"""Records the S3 calls code under test makes, and injects dropped connections."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import EndpointConnectionError

DEFAULT_OPERATIONS = ("PutObject", "CreateMultipartUpload", "GetObject")


class S3Calls:
    """(operation, Key) of every S3 call seen through a botocore event emitter, in order.

    Pass one client's ``client.meta.events`` to watch that client, or the default session's
    ``boto3._get_default_session().events`` to watch every client code creates with
    ``boto3.client(...)``. ``fail_after[op] = n`` makes the (n+1)-th call of ``op`` fail like a
    dropped connection.
    """

    def __init__(self, events: Any, operations: tuple[str, ...] = DEFAULT_OPERATIONS) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail_after: dict[str, int] = {}
        for op in operations:
            events.register(f"before-parameter-build.s3.{op}", self._hook(op))

    def _hook(self, op: str) -> Any:
        def hook(params: dict[str, Any], **_: Any) -> None:
            limit = self.fail_after.get(op)
            if limit is not None and self.count(op) >= limit:
                raise EndpointConnectionError(endpoint_url="https://s3.us-east-1.amazonaws.com")
            self.calls.append((op, str(params.get("Key", ""))))

        return hook

    def reset(self) -> None:
        """Forget recorded calls and stop injecting failures (hooks stay registered)."""
        self.calls.clear()
        self.fail_after.clear()

    def count(self, *ops: str) -> int:
        return sum(1 for o, _ in self.calls if o in ops)

    def keys(self, op: str) -> list[str]:
        return [k for o, k in self.calls if o == op]

"""The image gate: a serving pod is scheduled only once every image it runs is in its registry.

Serving pods are created behind ``contract.SCHEDULING_GATE_IMAGE``, so a pod whose image is not
pushed yet costs no node (docs/adr/0002-serving-pods-wait-for-their-image.md). Every
``gate_interval_s`` the publisher checks the gated pods' images in ECR and removes the gate of
those whose images are all published; what counts as published, the caching and the error rules:
docs/adr/0008-image-gate-opens-only-on-a-published-answer.md.
"""

from __future__ import annotations

import enum
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from plan import contract
from runtime.inventory.cluster import KubernetesApi

log = logging.getLogger("edge_diffusion.inventory")

NEGATIVE_TTL_S: Final = 30.0
NOT_YET: Final = frozenset({"ImageNotFoundException", "RepositoryNotFoundException"})
# Private ECR registries: dkr.ecr, dkr.ecr-fips, dkr-ecr (dual-stack .on.aws), and the China partition.
ECR_HOST: Final = re.compile(
    r"^(?P<account>\d{12})\.dkr[.-]ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.(?:amazonaws\.com(?:\.cn)?|on\.aws)$"
)
ECR_PATH: Final = re.compile(
    r"^(?P<repository>[a-z0-9][a-z0-9._/-]*?)(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
DEFAULT_TAG: Final = "latest"


class ImageState(enum.Enum):
    PUBLISHED = "published"
    MISSING = "missing"
    UNKNOWN = "unknown"  # the check failed: the gate stays, retried next cycle


@dataclass(frozen=True)
class EcrImage:
    """One image in a private ECR registry, by digest when the reference has one (what is pulled)."""

    account: str
    region: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def image_id(self) -> dict[str, str]:
        return {"imageDigest": self.digest} if self.digest else {"imageTag": self.tag or DEFAULT_TAG}


def parse_image(reference: str) -> EcrImage | None:
    """The ECR image ``reference`` names; None for another registry. ValueError: an ECR host with a
    reference nothing could pull (the gate stays: the pod would fail to pull it anyway)."""
    host, _, rest = reference.partition("/")
    found = ECR_HOST.match(host)
    if found is None:
        return None
    path = ECR_PATH.match(rest)
    if path is None:
        raise ValueError(f"{reference!r} is no ECR image reference")
    return EcrImage(found["account"], found["region"], path["repository"], path["tag"], path["digest"])


def _error_code(err: Exception) -> str | None:
    """The AWS error code of a botocore ClientError (duck-typed: botocore stays an import of __main__)."""
    response = getattr(err, "response", None)
    code = response.get("Error", {}).get("Code") if isinstance(response, Mapping) else None
    return str(code) if code else None


def _images(pod: Mapping[str, Any]) -> list[str]:
    """Every distinct image of the pod, init containers first."""
    spec = pod.get("spec", {}) or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    return list(dict.fromkeys(str(c["image"]) for c in containers if c.get("image")))


def _gate_index(pod: Mapping[str, Any], gate: str) -> int | None:
    gates = (pod.get("spec", {}) or {}).get("schedulingGates") or []
    return next((i for i, g in enumerate(gates) if (g or {}).get("name") == gate), None)


@dataclass(frozen=True)
class GateReport:
    """One cycle: pods behind the gate, how many were opened, still wait, or could not be opened."""

    gated: int
    opened: int
    waiting: int
    failed: int


class ImageGate:
    """Removes ``gate`` from the pods of ``namespace`` whose images are all published."""

    def __init__(
        self,
        api: KubernetesApi,
        ecr: Any,
        namespace: str,
        *,
        gate: str = contract.SCHEDULING_GATE_IMAGE,
        negative_ttl_s: float = NEGATIVE_TTL_S,
        ecr_in: Callable[[str], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``ecr``: the client of the publisher's Region; ``ecr_in(region)`` one for an image of another
        Region (without it such an image is an error: the gate stays)."""
        self._api, self._namespace, self._gate = api, namespace, gate
        self._ecr_in, self._clock, self._negative_ttl_s = ecr_in, clock, negative_ttl_s
        self._clients: dict[str, Any] = {str(ecr.meta.region_name): ecr}
        self._published: set[EcrImage] = set()
        self._missing: dict[EcrImage, float] = {}  # image -> when DescribeImages last said not found
        self._warned: dict[str, tuple[str, float]] = {}  # reference -> (error logged, when)

    def _client(self, region: str) -> Any:
        if region not in self._clients:
            if self._ecr_in is None:
                raise LookupError(f"the publisher checks ECR in {next(iter(self._clients))} only, not {region}")
            self._clients[region] = self._ecr_in(region)
        return self._clients[region]

    def _warn(self, reference: str, message: str, now: float) -> None:
        """One line per image and error; the same error again only once per negative TTL."""
        last = self._warned.get(reference)
        if last is None or last[0] != message or now - last[1] >= self._negative_ttl_s:
            log.warning("cannot check image %s, its pods stay gated (retried next cycle): %s", reference, message)
            self._warned[reference] = (message, now)

    def state(self, reference: str) -> ImageState:
        """Whether ``reference`` is published, from the cache or one DescribeImages call."""
        now = self._clock()
        try:
            image = parse_image(reference)
        except ValueError as err:
            self._warn(reference, str(err), now)
            return ImageState.UNKNOWN
        if image is None or image in self._published:
            return ImageState.PUBLISHED
        checked = self._missing.get(image)
        if checked is not None and now - checked < self._negative_ttl_s:
            return ImageState.MISSING
        try:
            found = self._client(image.region).describe_images(
                registryId=image.account, repositoryName=image.repository, imageIds=[image.image_id]
            )
        except Exception as err:  # every failure keeps the gate; only "not found" is an answer
            code = _error_code(err)
            if code not in NOT_YET:
                self._warn(reference, str(err) if code else f"{type(err).__name__}: {err}", now)
                return ImageState.UNKNOWN
            found = {"imageDetails": []}
        self._warned.pop(reference, None)
        if found.get("imageDetails"):
            self._published.add(image)
            self._missing.pop(image, None)
            return ImageState.PUBLISHED
        self._missing[image] = now
        log.info("waiting for %s: not in ECR yet", reference)
        return ImageState.MISSING

    def cycle(self) -> GateReport:
        """One pass over the gated pods of the namespace (a failed list raises: the loop logs it)."""
        pods = self._api.list_items(f"/api/v1/namespaces/{self._namespace}/pods")
        gated = opened = waiting = failed = 0
        memo: dict[str, ImageState] = {}  # each image once per cycle, however many pods run it
        first_error: Exception | None = None
        for pod in pods:
            meta = pod.get("metadata", {}) or {}
            index = _gate_index(pod, self._gate)
            if index is None or meta.get("deletionTimestamp"):
                continue
            gated += 1
            images = _images(pod)
            for image in images:
                if image not in memo:
                    memo[image] = self.state(image)
            if any(memo[image] is not ImageState.PUBLISHED for image in images):
                waiting += 1
                continue
            name = str(meta.get("name"))
            try:
                removed = self._api.remove_scheduling_gate(self._namespace, name, index, self._gate)
            except Exception as err:  # the other pods go on; one line for the cycle below
                failed += 1
                first_error = first_error or err
                continue
            if removed:
                opened += 1
                log.info("opened the image gate of pod %s: %s published", name, ", ".join(images) or "no image")
            else:
                log.debug("pod %s is gone or its gates changed: skipped", name)
        if first_error is not None:
            log.warning("could not open the image gate of %d pod(s), retried next cycle: %s", failed, first_error)
        return GateReport(gated=gated, opened=opened, waiting=waiting, failed=failed)


def run_gates(gate: ImageGate, interval_s: float, stop: threading.Event) -> None:
    """``gate.cycle()`` every ``interval_s`` until ``stop`` is set; a failed cycle is logged and the loop goes on."""
    while True:
        try:
            gate.cycle()
        except Exception as err:  # the API server may be briefly unreachable: next cycle
            log.warning("image gate cycle failed (retried in %gs): %s", interval_s, err)
        if stop.wait(interval_s):
            return


def start_gates(gate: ImageGate, interval_s: float, stop: threading.Event) -> threading.Thread:
    """The gate loop in its own daemon thread, beside the publisher's."""
    thread = threading.Thread(target=run_gates, args=(gate, interval_s, stop), name="image-gate", daemon=True)
    thread.start()
    return thread

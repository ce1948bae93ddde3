"""Artifacts under an S3 prefix: reading the manifest, publishing (manifest last), downloading, and
what promoting one records (``promotion_of``).

Uploads carry each file's sha256 as object metadata, so a re-run sends only what changed; one
writer at a time publishes a prefix (``publish_lock``).
boto3 is imported only when S3 is used: the artifacts CLI verifies local dirs without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeAlias

from plan.model_artifacts import (
    IMAGE_VERSION_OPTION,
    MANIFEST_NAME,
    MODELS_PREFIX,
    artifact_prefix,
    cluster_models_key_prefix,
)
from runtime.artifacts.local import atomic_write, entry_problem, remove_unlisted, verify_dir
from runtime.artifacts.manifest import ArtifactError, ArtifactSpec, Manifest, PublishResult
from runtime.artifacts.promotions import Promotion

log = logging.getLogger("edge_diffusion.artifacts")

S3Client: TypeAlias = Any  # a boto3 S3 client
SCHEME: Final = "s3://"
SHA256_METADATA_KEY: Final = "sha256"  # S3 object metadata (x-amz-meta-sha256) set on upload
_BUCKET_RE: Final = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_DELETE_BATCH: Final = 1000  # DeleteObjects' limit
LOCK_SUFFIX: Final = ".publishing"
LOCK_STALE_AFTER_S: Final = 1800.0  # a publish uploads a few GB in minutes: a lock this old lost its writer
LOCK_POLL_S: Final = 10.0
# A conditional put of a key that exists (412), or racing another conditional write of it (409).
CONFLICT_CODES: Final = ("ConditionalRequestConflict", "409")
LOCK_HELD_CODES: Final = ("PreconditionFailed", "412", *CONFLICT_CODES)


def is_s3(uri: str) -> bool:
    return uri.startswith(SCHEME)


def s3_uri_problem(uri: str) -> str | None:
    """Why ``uri`` is not a usable ``s3://bucket[/prefix]``, or None."""
    if not is_s3(uri):
        return "not an s3:// URI"
    bucket, _, prefix = uri[len(SCHEME) :].partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        return f"bucket name {bucket!r} is not a valid S3 bucket name"
    prefix = prefix.strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        return "prefix must not contain empty, '.' or '..' segments"
    return None


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> (``bucket``, ``a/b/``): the prefix is '' or ends with '/'."""
    problem = s3_uri_problem(uri)
    if problem:
        raise ArtifactError(f"{uri!r}: {problem}")
    bucket, _, prefix = uri[len(SCHEME) :].partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def normalize_s3_uri(uri: str) -> str:
    """``s3://bucket/prefix/`` with exactly one trailing slash (validated)."""
    bucket, prefix = parse_s3_uri(uri)
    return f"{SCHEME}{bucket}/{prefix}"


def s3_client() -> S3Client:
    import boto3

    return boto3.client("s3")


def _error_code(exc: Exception) -> str:
    from botocore.exceptions import ClientError

    return str(exc.response.get("Error", {}).get("Code", "")) if isinstance(exc, ClientError) else ""


def _is_not_found(exc: Exception) -> bool:
    return _error_code(exc) in ("404", "NoSuchKey", "NotFound")


def _list_keys(s3: S3Client, bucket: str, prefix: str) -> dict[str, int]:
    """Every key under prefix with its size."""
    keys: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            keys[obj["Key"]] = int(obj["Size"])
    return keys


def read_remote_manifest(uri: str, s3: S3Client | None = None) -> Manifest | None:
    """The manifest at an S3 prefix, or None when there is none (never published or interrupted)."""
    s3 = s3 or s3_client()
    bucket, prefix = parse_s3_uri(uri)
    try:
        body = s3.get_object(Bucket=bucket, Key=prefix + MANIFEST_NAME)["Body"].read()
    except Exception as exc:
        if _is_not_found(exc):
            return None
        raise
    return Manifest.from_json(body, origin=f"{SCHEME}{bucket}/{prefix}{MANIFEST_NAME}")


def _listed_manifest(uri: str, s3: S3Client) -> tuple[Manifest | None, str, dict[str, int]]:
    """The manifest at an S3 prefix whatever its spec (None: none, or unreadable), the prefix and its keys.

    The prefix is listed before the manifest is read: S3 answers a GET of a missing key with 403,
    not 404, unless the caller may list the bucket, and the compile role may list only its own
    cluster's prefix."""
    bucket, prefix = parse_s3_uri(uri)
    keys = _list_keys(s3, bucket, prefix)
    if prefix + MANIFEST_NAME not in keys:
        return None, prefix, keys
    try:
        return read_remote_manifest(uri, s3), prefix, keys
    except ArtifactError:
        return None, prefix, keys


def published_manifest_s3(uri: str, s3: S3Client) -> Manifest | None:
    """The manifest at an S3 prefix whatever its spec, or None when there is none or it is unreadable."""
    return _listed_manifest(uri, s3)[0]


def find_published_s3(uri: str, spec: ArtifactSpec, s3: S3Client) -> Manifest | None:
    """The manifest of a complete artifact compiled from ``spec`` at ``uri`` (every file present
    with its recorded size), else None; an unreadable manifest counts as absent."""
    manifest, prefix, keys = _listed_manifest(uri, s3)
    if manifest is None or not manifest.matches(spec):
        return None
    if any(keys.get(prefix + f.path) != f.size for f in manifest.files):
        return None
    return manifest


def lock_key(prefix: str) -> str:
    """The publish lock of an artifact prefix: a sibling key (``.../cuda.publishing``), so neither a
    listing of the artifact nor the image build's ``aws s3 sync`` of it ever sees it."""
    return prefix.rstrip("/") + LOCK_SUFFIX


@contextmanager
def publish_lock(
    s3: S3Client,
    bucket: str,
    prefix: str,
    *,
    stale_after_s: float = LOCK_STALE_AFTER_S,
    poll_s: float = LOCK_POLL_S,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[None]:
    """Hold the prefix's publish lock: an object created only if absent (S3 conditional write).

    Two compile jobs of one cluster may publish one artifact at once (a replaced Job's old pods
    still running, a retry next to a writer that lost its node); interleaved publishes would
    delete each other's files or pair a manifest with the other's. The second waits; a lock older
    than ``stale_after_s`` (its writer died) is taken over. Lock and release are conditional on the
    lock's ETag (S3 conditional deletes), so no writer removes a lock another writer holds.
    """
    key = lock_key(prefix)
    body = json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode()
    while True:
        try:
            ours = s3.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")["ETag"]
            break
        except Exception as exc:
            code = _error_code(exc)
            if code not in LOCK_HELD_CODES:
                raise
        held = _listed(s3, bucket, key)
        if held is None:
            if code in CONFLICT_CODES:  # another writer's put is still in flight: it will be listed
                sleep(poll_s)
            continue  # released meanwhile
        if (datetime.now(UTC) - held["LastModified"]).total_seconds() > stale_after_s:
            # Its writer died. Delete that lock only (If-Match: another waiter may have taken it
            # over already); then the conditional put decides who goes on.
            _delete_if(s3, bucket, key, held["ETag"])
            continue
        sleep(poll_s)
    try:
        yield
    finally:
        if not _delete_if(s3, bucket, key, ours):
            log.warning("s3://%s/%s: the publish lock was taken over before this publish released it", bucket, key)


def _listed(s3: S3Client, bucket: str, key: str) -> Mapping[str, Any] | None:
    """``key``'s listing entry (ETag, LastModified), or None when it is gone.

    Listed, not HEAD: a compile role may list its prefix only (s3:ListBucket with an s3:prefix
    condition), and without s3:ListBucket on the key S3 answers a HEAD of a missing key 403, not 404:
    a lock released just before the check would end the job."""
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    return next((entry for entry in listed.get("Contents", []) if entry["Key"] == key), None)


def _delete_if(s3: S3Client, bucket: str, key: str, etag: str) -> bool:
    """Delete ``key`` if it is still the object with ``etag``; False when it is not (or is gone)."""
    try:
        s3.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
    except Exception as exc:
        if _error_code(exc) in (*LOCK_HELD_CODES, "NoSuchKey", "404"):
            return False
        raise
    return True


def publish_s3(local_dir: Path, manifest: Manifest, uri: str, s3: S3Client) -> PublishResult:
    """Upload a verified artifact under the prefix's lock: old manifest off, changed files, stale
    keys out, manifest last. An equal artifact another writer published meanwhile is kept."""
    bucket, prefix = parse_s3_uri(uri)
    with publish_lock(s3, bucket, prefix):
        published = find_published_s3(uri, manifest.spec, s3)
        if published is not None:
            return PublishResult(f"{SCHEME}{bucket}/{prefix}", (), tuple(f.path for f in published.files), ())
        return _publish_unlocked(local_dir, manifest, bucket, prefix, s3)


def _publish_unlocked(local_dir: Path, manifest: Manifest, bucket: str, prefix: str, s3: S3Client) -> PublishResult:
    s3.delete_object(Bucket=bucket, Key=prefix + MANIFEST_NAME)
    existing = _list_keys(s3, bucket, prefix)
    sent: list[str] = []
    reused: list[str] = []
    for entry in manifest.files:
        key = prefix + entry.path
        if existing.get(key) == entry.size and _remote_sha(s3, bucket, key) == entry.sha256:
            reused.append(entry.path)
            continue
        s3.upload_file(
            str(local_dir / entry.path), bucket, key, ExtraArgs={"Metadata": {SHA256_METADATA_KEY: entry.sha256}}
        )
        sent.append(entry.path)
    wanted = {prefix + f.path for f in manifest.files} | {prefix + MANIFEST_NAME}
    stale = sorted(k for k in existing if k not in wanted)
    for start in range(0, len(stale), _DELETE_BATCH):
        batch = stale[start : start + _DELETE_BATCH]
        answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
        # DeleteObjects answers 200 and lists per-key failures (AccessDenied, ...) in Errors.
        for error in answer.get("Errors", [])[:1]:
            raise ArtifactError(
                f"{SCHEME}{bucket}/{error.get('Key')}: not removed ({error.get('Code')}: {error.get('Message')}); "
                "the artifact has no manifest until a publish completes"
            )
    s3.put_object(
        Bucket=bucket,
        Key=prefix + MANIFEST_NAME,
        Body=(local_dir / MANIFEST_NAME).read_bytes(),
        ContentType="application/json",
    )
    removed = tuple(k[len(prefix) :] for k in stale)
    return PublishResult(f"{SCHEME}{bucket}/{prefix}", tuple(sent), tuple(reused), removed)


def _remote_sha(s3: S3Client, bucket: str, key: str) -> str | None:
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if _is_not_found(exc):
            return None
        raise
    value = head.get("Metadata", {}).get(SHA256_METADATA_KEY)
    return str(value) if value else None


def download(uri: str, dest: Path, s3: S3Client | None = None) -> Manifest:
    """Download the files an S3 manifest lists into ``dest``, then the manifest, then verify.

    Files already in ``dest`` with the listed size and sha256 are kept. Files in ``dest`` that the
    manifest does not list are removed, so ``dest`` must be a directory this function owns
    (a per-artifact cache dir), never a shared one.
    """
    s3 = s3 or s3_client()
    bucket, prefix = parse_s3_uri(uri)
    # Listed first: without s3:ListBucket on the key, S3 answers a GET of a missing one with 403.
    listed = _list_keys(s3, bucket, prefix + MANIFEST_NAME)
    manifest = read_remote_manifest(uri, s3) if prefix + MANIFEST_NAME in listed else None
    if manifest is None:
        raise ArtifactError(
            f"{SCHEME}{bucket}/{prefix}{MANIFEST_NAME}: no manifest (nothing published there, or an upload "
            "was interrupted; re-run the compile job)"
        )
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MANIFEST_NAME).unlink(missing_ok=True)
    for entry in manifest.files:
        if entry_problem(dest, entry) is None:
            continue
        target = dest / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.partial")
        try:
            s3.download_file(bucket, prefix + entry.path, str(tmp))
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            if _is_not_found(exc):
                raise ArtifactError(
                    f"{SCHEME}{bucket}/{prefix}{entry.path}: listed in the manifest but missing"
                ) from None
            raise
        os.replace(tmp, target)
    remove_unlisted(dest, manifest)
    atomic_write(dest / MANIFEST_NAME, manifest.to_json().encode())
    return verify_dir(dest)


def promotion_of(uri: str, s3: S3Client) -> Promotion:
    """What promoting the artifact at ``uri`` records: its cluster, what it was compiled for, and
    the sha256 of its manifest exactly as stored (the bytes the image build checks).

    ``uri`` must be a cluster's artifact, ``s3://<bucket>/models/<cluster>/<model>/<revision>/<device>/``,
    complete (a manifest, and every file it lists with its size) and compiled with an image version.
    """
    bucket, prefix = parse_s3_uri(uri)
    parts = prefix.split("/")
    if len(parts) < 3 or parts[0] != MODELS_PREFIX:
        raise ArtifactError(
            f"{uri!r} is not a cluster's artifact; allowed: s3://<bucket>/{MODELS_PREFIX}/<cluster>/<model>/<revision>/<device>/"
        )
    keys = _list_keys(s3, bucket, prefix)
    if prefix + MANIFEST_NAME not in keys:
        raise ArtifactError(
            f"{SCHEME}{bucket}/{prefix}{MANIFEST_NAME}: no manifest (nothing published, or an upload was interrupted)"
        )
    body: bytes = s3.get_object(Bucket=bucket, Key=prefix + MANIFEST_NAME)["Body"].read()
    manifest = Manifest.from_json(body, origin=f"{SCHEME}{bucket}/{prefix}{MANIFEST_NAME}")
    spec = manifest.spec
    try:
        home = artifact_prefix(cluster_models_key_prefix(parts[1]), spec.model_id, spec.revision, spec.device)
    except ValueError as exc:
        raise ArtifactError(f"{uri!r}: {exc}") from None
    if prefix != home:
        place = artifact_prefix(f"{MODELS_PREFIX}/<cluster>", spec.model_id, spec.revision, spec.device)
        raise ArtifactError(
            f"{uri!r} is not where a cluster publishes {spec.describe()}; allowed: s3://{bucket}/{place}"
        )
    incomplete = next((f for f in manifest.files if keys.get(prefix + f.path) != f.size), None)
    if incomplete is not None:
        raise ArtifactError(
            f"{SCHEME}{bucket}/{prefix}{incomplete.path}: missing, or not the {incomplete.size} bytes listed"
        )
    version = spec.options.get(IMAGE_VERSION_OPTION)
    if not version:
        raise ArtifactError(
            f"{uri!r} was compiled without --image-version: no serving image version may carry it (compile it again)"
        )
    return Promotion(spec.model_id, spec.revision, spec.device, version, parts[1], hashlib.sha256(body).hexdigest())

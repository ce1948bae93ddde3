"""Run a workload's real code against moto as its role, with every call authorized the way AWS does.

Setup (buckets, tables, keys, roles) runs unauthenticated. Inside :meth:`AwsHarness.acting_as` the
workload runs with temporary credentials of a moto role that holds exactly the policy documents its
template gives it (:func:`tests.iam.templates.role_policies`), and moto's IAM enforcement is on:
moto still checks that each request is signed by those credentials, and this harness replaces the
authorization step (``ActionAuthenticatorMixin._authenticate_and_authorize_action``, patched per
test) with :func:`authorizations`, which says what AWS authorizes each request as (action, resource
ARN, condition context), and :func:`tests.iam.policy.decide`, which evaluates the role's documents
(read back from moto) and the resource's policy from its template (the model bucket's bucket policy,
the token key's key policy).

A denied request answers AccessDenied as AWS would, and is recorded: leaving ``acting_as`` raises an
AssertionError with one line per denial, ``<workload>: <action> on <resource> denied by ...``, even
when the workload swallowed the error (the inventory publisher logs and carries on). A request the
harness cannot model (an operation not in :func:`authorizations`, a condition key it does not fill)
is denied and reported the same way: never allowed by default.

Modeled, per API call (AWS service authorization reference, "Actions, resources, and condition keys"):

- S3: GetObject/HeadObject -> s3:GetObject, PutObject and the multipart calls -> s3:PutObject,
  AbortMultipartUpload -> s3:AbortMultipartUpload, DeleteObject -> s3:DeleteObject, DeleteObjects ->
  s3:DeleteObject on each key it names, ListObjects(V2)/HeadBucket -> s3:ListBucket on the bucket with
  ``s3:prefix``/``s3:delimiter``/``s3:max-keys`` from the query; ``*Version`` actions with a versionId.
- DynamoDB item and query calls -> ``dynamodb:<Operation>`` on the table (or index) ARN.
- KMS -> ``kms:<Operation>`` on the key's ARN however the request names it, with ``kms:RequestAlias``
  (the alias name, when KeyId is an alias name or alias ARN), ``kms:CallerAccount``, and for
  Sign/Verify ``kms:SigningAlgorithm`` and ``kms:MessageType``; the key policy must allow too.
  Modeled operations: GetPublicKey, Sign, Verify, DescribeKey, and the ones that manage a key:
  CreateGrant (no ``kms:Grant*`` condition key is modeled), PutKeyPolicy, ScheduleKeyDeletion,
  DisableKey, DisableKeyRotation, TagResource.
- KMS UpdateAlias/DeleteAlias -> the action on the alias ARN (IAM alone: an alias has no policy)
  and on each key it names: the one it points at, and for UpdateAlias the new one.
- Every request carries ``aws:PrincipalArn``: the workload's role ARN (AWS's value for a session
  of an assumed role).
- Secrets Manager GetSecretValue/DescribeSecret -> on the secret's full ARN, with
  ``secretsmanager:SecretId``/``VersionId``/``VersionStage``.
- CloudWatch PutMetricData -> ``cloudwatch:PutMetricData`` on ``*`` with ``cloudwatch:namespace``.
- ECR DescribeImages/BatchGetImage/ListImages -> on the repository ARN (``registryId`` or this
  account); GetAuthorizationToken on ``*``.

A GET or HEAD of a missing key also needs s3:ListBucket on the bucket, evaluated without
``s3:prefix`` (S3 answers 403 AccessDenied instead of 404 otherwise; GetObject's "Permissions" in
the S3 API reference). That a grant limited by ``s3:prefix`` does not count is what
``ci_build/build-image.sh`` assumes too; AWS does not document that case explicitly.

Not modeled (stated here so nobody reads a pass as covering it): DeleteObjects deleting the
allowed keys of a partly denied batch (moto refuses the whole batch; the denial is reported either
way), and the trust policies (Pod Identity and Lambda assume the roles in AWS; here the harness
does).
"""

from __future__ import annotations

import contextlib
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest

from tests.iam.policy import Decision, Principal, Request, UnmodeledError, decide
from tests.iam.templates import Resolver, RolePolicies, properties, resource_policy, resources

ACCOUNT: Final = "123456789012"  # moto's default account, and the session synth's
REGION: Final = "us-west-2"
SESSION_NAME: Final = "iam-test"
# Query parameters of a bucket GET that still make it a ListObjects(V2) call.
LIST_PARAMS: Final = frozenset(
    {
        "list-type",
        "prefix",
        "delimiter",
        "max-keys",
        "continuation-token",
        "start-after",
        "encoding-type",
        "fetch-owner",
    }
)
S3_LIST_KEYS: Final = {"prefix": "s3:prefix", "delimiter": "s3:delimiter", "max-keys": "s3:max-keys"}
# Request headers that make S3 authorize more than the call's own action (not modeled here).
S3_EXTRA_AUTH_HEADERS: Final = ("x-amz-copy-source", "x-amz-acl", "x-amz-grant-", "x-amz-tagging")
S3_OBJECT_SUBRESOURCES: Final = frozenset(
    {"acl", "tagging", "retention", "legal-hold", "torrent", "attributes", "restore", "select"}
)


@dataclass(frozen=True)
class Workload:
    name: str  # how failures name it: the service account, or the Lambda function
    role: RolePolicies
    arn: str  # of its role in moto

    @property
    def role_name(self) -> str:
        return self.arn.rsplit("/", 1)[1]


@dataclass(frozen=True)
class Call:
    """One authorization of one request a workload made, and its outcome."""

    workload: str
    request: Request
    decision: Decision

    def line(self) -> str:
        r = self.request
        return f"{self.workload}: {r.action} on {r.resource} denied by {self.decision.reason} [{r.operation}]"


# --- what AWS authorizes each request as ------------------------------------------------------------


def _secure(response: Any) -> dict[str, tuple[str, ...]]:
    return {"aws:securetransport": ("true" if str(response.uri).startswith("https://") else "false",)}


def _s3(response: Any, moto_resource: str) -> list[Request]:
    method = response.method
    query = parse_qs(urlsplit(response.uri).query, keep_blank_values=True)
    headers = {str(k).lower() for k in response.headers}
    context = _secure(response)
    bucket_arn, _, key = moto_resource.partition("/")

    def one(
        operation: str, action: str, resource: str = moto_resource, extra: Mapping[str, tuple[str, ...]] | None = None
    ) -> Request:
        keys = frozenset(S3_LIST_KEYS.values()) if action == "s3:ListBucket" else frozenset()
        return Request(f"s3:{operation}", action, resource, {**context, **(extra or {})}, keys)

    if key:
        if any(h.startswith(S3_EXTRA_AUTH_HEADERS) for h in headers) or S3_OBJECT_SUBRESOURCES & set(query):
            raise UnmodeledError(f"s3 {method} {key} with {sorted(query)}: needs more than one action (not modeled)")
        versioned = "versionId" in query
        if method in ("GET", "HEAD") and "uploadId" in query:
            return [one("ListParts", "s3:ListMultipartUploadParts")]
        if method in ("GET", "HEAD"):
            operation = "GetObject" if method == "GET" else "HeadObject"
            requests = [one(operation, "s3:GetObjectVersion" if versioned else "s3:GetObject")]
            if not versioned and not _exists(response, bucket_arn.removeprefix("arn:aws:s3:::"), key):
                # S3 answers a missing key with 404 only to a caller that may list the bucket, else 403.
                # No s3:prefix is in this request's context: a ListBucket grant limited to a prefix does
                # not count (what ci_build/build-image.sh relies on when it lists instead of fetching).
                missing = f"{operation} of a missing key: 403 AccessDenied, not 404, unless it may s3:ListBucket"
                requests.append(one(missing, "s3:ListBucket", bucket_arn))
            return requests
        if method == "PUT":
            return [one("UploadPart" if "uploadId" in query else "PutObject", "s3:PutObject")]
        if method == "POST" and ("uploads" in query or "uploadId" in query):
            return [one("CreateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload", "s3:PutObject")]
        if method == "DELETE" and "uploadId" in query:
            return [one("AbortMultipartUpload", "s3:AbortMultipartUpload")]
        if method == "DELETE":
            return [one("DeleteObject", "s3:DeleteObjectVersion" if versioned else "s3:DeleteObject")]
    elif method == "GET" and set(query) <= LIST_PARAMS:
        operation = "ListObjectsV2" if query.get("list-type") == ["2"] else "ListObjects"
        extra = {S3_LIST_KEYS[name]: tuple(query[name]) for name in S3_LIST_KEYS if name in query}
        return [one(operation, "s3:ListBucket", extra=extra)]
    elif method == "HEAD" and not query:
        return [one("HeadBucket", "s3:ListBucket")]
    elif method == "POST" and set(query) == {"delete"}:
        body = response.body.encode() if isinstance(response.body, str) else response.body
        requests = []
        for element in ET.fromstring(body).iter():
            if element.tag.rsplit("}", 1)[-1] != "Object":
                continue
            fields = {child.tag.rsplit("}", 1)[-1]: child.text or "" for child in element}
            action = "s3:DeleteObjectVersion" if fields.get("VersionId") else "s3:DeleteObject"
            requests.append(one("DeleteObjects", action, f"{bucket_arn}/{fields['Key']}"))
        return requests
    raise UnmodeledError(f"s3 {method} {moto_resource} with {sorted(query)}: how AWS authorizes it is not modeled")


def _exists(response: Any, bucket: str, key: str) -> bool:
    from moto.s3.models import FakeKey

    found = response.backend.get_bucket(bucket).keys.get(key)
    return isinstance(found, FakeKey)


def _dynamodb(response: Any, operation: str) -> list[Request]:
    table = response._get_param("TableName")
    arn = f"arn:aws:dynamodb:{response.region}:{response.current_account}:table/{table}"
    index = response._get_param("IndexName") if operation in ("Query", "Scan") else None
    resource = f"{arn}/index/{index}" if index else arn
    return [Request(f"dynamodb:{operation}", f"dynamodb:{operation}", resource, _secure(response))]


def _kms(response: Any, operation: str) -> list[Request]:
    from moto.kms.models import kms_backends

    key_id = str(response._get_param("KeyId"))
    try:
        arn = kms_backends[response.current_account][response.region].describe_key(key_id).arn
    except Exception:
        raise UnmodeledError(f"kms:{operation} names {key_id!r}, which is no key here (AWS answers NotFound)") from None
    context = {**_secure(response), "kms:calleraccount": (response.current_account,)}
    if key_id.startswith("alias/") or ":alias/" in key_id:  # KMS puts the alias NAME in the context
        context["kms:requestalias"] = ("alias/" + key_id.split("alias/", 1)[1],)
    modeled = {"kms:requestalias", "kms:calleraccount", "kms:viaservice", "kms:grantisforawsresource"}
    if operation in ("Sign", "Verify"):
        context["kms:signingalgorithm"] = (str(response._get_param("SigningAlgorithm")),)
        context["kms:messagetype"] = (str(response._get_param("MessageType") or "RAW"),)
        modeled |= {"kms:signingalgorithm", "kms:messagetype"}
    return [Request(f"kms:{operation}", f"kms:{operation}", arn, context, frozenset(modeled))]


def _kms_alias(response: Any, operation: str) -> list[Request]:
    from moto.kms.models import kms_backends

    backend = kms_backends[response.current_account][response.region]
    alias = str(response._get_param("AliasName"))
    current = backend.get_key_id_from_alias(alias)
    if current is None:
        raise UnmodeledError(f"kms:{operation} names {alias!r}, which is no alias here (AWS answers NotFound)")
    context = {**_secure(response), "kms:calleraccount": (response.current_account,)}
    modeled = frozenset({"kms:calleraccount", "kms:viaservice"})
    action = f"kms:{operation}"
    alias_arn = f"arn:aws:kms:{response.region}:{response.current_account}:{alias}"
    keys = [current, *([str(response._get_param("TargetKeyId"))] if operation == "UpdateAlias" else [])]
    arns = [backend.describe_key(key).arn for key in keys]
    return [Request(action, action, arn, context, modeled) for arn in (alias_arn, *dict.fromkeys(arns))]


def _secretsmanager(response: Any, operation: str) -> list[Request]:
    from moto.secretsmanager.models import secretsmanager_backends

    secret_id = str(response._get_param("SecretId"))
    secret = secretsmanager_backends[response.current_account][response.region].secrets.get(secret_id)
    if secret is None:
        raise UnmodeledError(f"secretsmanager:{operation} names {secret_id!r}, which is no secret here")
    context = {**_secure(response), "secretsmanager:secretid": (secret_id,)}
    for param, key in (("VersionId", "secretsmanager:versionid"), ("VersionStage", "secretsmanager:versionstage")):
        if response._get_param(param):
            context[key] = (str(response._get_param(param)),)
    modeled = frozenset({"secretsmanager:secretid", "secretsmanager:versionid", "secretsmanager:versionstage"})
    action = f"secretsmanager:{operation}"
    return [Request(action, action, secret.arn, context, modeled)]


def _put_metric_data(response: Any, operation: str) -> list[Request]:
    context = {**_secure(response), "cloudwatch:namespace": (str(response._get_param("Namespace")),)}
    action = "cloudwatch:PutMetricData"
    return [Request(action, action, "*", context, frozenset({"cloudwatch:namespace"}))]


def _ecr(response: Any, operation: str) -> list[Request]:
    action = f"ecr:{operation}"
    if operation == "GetAuthorizationToken":
        return [Request(action, action, "*", _secure(response))]
    registry = response._get_param("registryId") or response.current_account
    arn = f"arn:aws:ecr:{response.region}:{registry}:repository/{response._get_param('repositoryName')}"
    return [Request(action, action, arn, _secure(response))]


_DYNAMODB_OPERATIONS: Final = ("PutItem", "UpdateItem", "DeleteItem", "GetItem", "Query", "Scan", "DescribeTable")
SERVICES: Final[Mapping[tuple[str, str], Callable[[Any, str], list[Request]]]] = {
    **{("dynamodb", op): _dynamodb for op in _DYNAMODB_OPERATIONS},
    **{("kms", op): _kms for op in ("GetPublicKey", "Sign", "Verify", "DescribeKey")},
    **{
        ("kms", op): _kms
        for op in ("CreateGrant", "PutKeyPolicy", "ScheduleKeyDeletion", "DisableKey", "DisableKeyRotation")
    },
    ("kms", "TagResource"): _kms,
    **{("kms", op): _kms_alias for op in ("UpdateAlias", "DeleteAlias")},
    **{("secretsmanager", op): _secretsmanager for op in ("GetSecretValue", "DescribeSecret")},
    **{("ecr", op): _ecr for op in ("DescribeImages", "BatchGetImage", "ListImages", "GetAuthorizationToken")},
    ("cloudwatch", "PutMetricData"): _put_metric_data,
    ("sts", "GetCallerIdentity"): lambda response, operation: [],  # needs no permission
}


PRINCIPAL_ARN_KEY: Final = "aws:principalarn"


def with_principal_arn(request: Request, role_arn: str) -> Request:
    """``request`` with the global ``aws:PrincipalArn`` of a session of ``role_arn``: the role's ARN."""
    return replace(
        request,
        context={**request.context, PRINCIPAL_ARN_KEY: (role_arn,)},
        modeled=request.modeled | {PRINCIPAL_ARN_KEY},
    )


def authorizations(response: Any, moto_resource: str) -> list[Request]:
    """What AWS authorizes the request moto is answering as: one Request per (action, resource)."""
    if response.service_name == "s3":
        return _s3(response, moto_resource)
    operation = response._get_action()
    handler = SERVICES.get((response.service_name, operation))
    if handler is None:
        raise UnmodeledError(f"{response.service_name}:{operation}: how AWS authorizes it is not modeled")
    return handler(response, operation)


def _document(policy: Any) -> dict[str, Any]:
    """A policy document as moto's ``collect_policies`` returns it (inline text, or a managed policy)."""
    if isinstance(policy, str):
        return dict(json.loads(policy))
    if isinstance(policy, Mapping):
        return dict(json.loads(policy["policy_document"]))
    version = next(v for v in policy.versions if v.is_default)
    return dict(json.loads(version.document))


# --- the harness --------------------------------------------------------------------------------------


class AwsHarness:
    """One moto account with workloads' roles and the resources they call; see the module docstring."""

    def __init__(self, account: str = ACCOUNT, region: str = REGION) -> None:
        self.account, self.region = account, region
        self.workloads: dict[str, Workload] = {}  # by role name in moto
        self.calls: list[Call] = []
        self.problems: list[str] = []
        self.bucket_policies: dict[str, Mapping[str, Any]] = {}  # bucket name -> document
        self.key_policies: dict[str, Mapping[str, Any]] = {}  # key ARN -> document

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Put :meth:`authorize` in place of moto's authorization step (authentication stays moto's)."""
        from moto.core.authorization import ActionAuthenticatorMixin

        original = ActionAuthenticatorMixin._authenticate_and_authorize_action
        harness = self

        def authenticate_and_authorize(response: Any, iam_request_cls: type, resource: str = "*") -> None:
            class Checked(iam_request_cls):
                def check_action_permitted(self, moto_resource: str) -> None:
                    harness.authorize(response, self, moto_resource)

            original(response, Checked, resource)

        monkeypatch.setattr(ActionAuthenticatorMixin, "_authenticate_and_authorize_action", authenticate_and_authorize)

    # --- setup, unauthenticated -----------------------------------------------------------------------

    def client(self, service: str) -> Any:
        """A client for setup and checks (outside ``acting_as`` nothing is authorized)."""
        return boto3.client(
            service,
            region_name=self.region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def resolver(self, template: Mapping[str, Any], **kwargs: Any) -> Resolver:
        """Resolves ``template`` in this account; its roles resolve to the moto roles ``add_workload`` makes."""
        return Resolver(template, account=self.account, region=self.region, **kwargs)

    def add_workload(self, name: str, role: RolePolicies) -> Workload:
        """A moto role named by the role's logical id, holding exactly ``role.documents``."""
        iam = self.client("iam")
        arn = iam.create_role(RoleName=role.logical_id, AssumeRolePolicyDocument=json.dumps(role.trust))["Role"]["Arn"]
        for policy_name, document in role.documents.items():
            iam.put_role_policy(RoleName=role.logical_id, PolicyName=policy_name, PolicyDocument=json.dumps(document))
        workload = Workload(name, role, arn)
        self.workloads[role.logical_id] = workload
        return workload

    def create_buckets(self, template: Mapping[str, Any], resolver: Resolver) -> list[str]:
        """Every bucket with a fixed name, its versioning, and its bucket policy (evaluated by the harness)."""
        s3 = self.client("s3")
        created = []
        for logical_id, bucket in resources(template, "AWS::S3::Bucket").items():
            name = bucket["Properties"].get("BucketName")
            if not isinstance(name, str):
                continue
            s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": self.region})
            versioning = bucket["Properties"].get("VersioningConfiguration", {}).get("Status")
            if versioning:
                s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": versioning})
            for policy_id, policy in resources(template, "AWS::S3::BucketPolicy").items():
                if policy["Properties"]["Bucket"] == {"Ref": logical_id}:
                    self.bucket_policies[name] = resource_policy(template, policy_id, resolver)
            created.append(name)
        return created

    def create_tables(self, template: Mapping[str, Any]) -> list[str]:
        dynamodb = self.client("dynamodb")
        names = []
        for table in resources(template, "AWS::DynamoDB::Table").values():
            props = table["Properties"]
            dynamodb.create_table(
                TableName=props["TableName"],
                KeySchema=props["KeySchema"],
                AttributeDefinitions=props["AttributeDefinitions"],
                BillingMode=props.get("BillingMode", "PROVISIONED"),
            )
            names.append(props["TableName"])
        return names

    def create_keys(self, template: Mapping[str, Any], resolver: Resolver) -> dict[str, str]:
        """Every KMS key (spec and usage as the template says) and its aliases; binds each key in
        ``resolver``. Returns logical id -> key ARN. Key policies: :meth:`attach_key_policies`."""
        kms = self.client("kms")
        arns = {}
        for logical_id in resources(template, "AWS::KMS::Key"):
            props = properties(template, logical_id)
            key = kms.create_key(
                KeySpec=props.get("KeySpec", "SYMMETRIC_DEFAULT"), KeyUsage=props.get("KeyUsage", "ENCRYPT_DECRYPT")
            )["KeyMetadata"]
            resolver.bind(logical_id, Ref=key["KeyId"], Arn=key["Arn"])
            arns[logical_id] = key["Arn"]
        for alias in resources(template, "AWS::KMS::Alias").values():
            target = resolver.resolve(alias["Properties"]["TargetKeyId"])
            kms.create_alias(AliasName=alias["Properties"]["AliasName"], TargetKeyId=target)
        return arns

    def attach_key_policies(self, template: Mapping[str, Any], resolver: Resolver, arns: Mapping[str, str]) -> None:
        for logical_id, arn in arns.items():
            self.key_policies[arn] = resource_policy(template, logical_id, resolver)

    # --- running a workload ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def acting_as(self, workload: Workload, env: Mapping[str, str] | None = None) -> Iterator[boto3.Session]:
        """Run as ``workload``: its role's credentials in the environment (and the returned session),
        ``env`` set, IAM enforced. On leaving, every denial or unmodeled request fails the test."""
        from moto import settings
        from moto.core.authorization import ActionAuthenticatorMixin

        credentials = self.client("sts").assume_role(RoleArn=workload.arn, RoleSessionName=SESSION_NAME)["Credentials"]
        first_call, first_problem = len(self.calls), len(self.problems)
        error: BaseException | None = None
        with pytest.MonkeyPatch.context() as patch:
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            patch.delenv("AWS_PROFILE", raising=False)
            patch.setenv("AWS_ACCESS_KEY_ID", credentials["AccessKeyId"])
            patch.setenv("AWS_SECRET_ACCESS_KEY", credentials["SecretAccessKey"])
            patch.setenv("AWS_SESSION_TOKEN", credentials["SessionToken"])
            patch.setenv("AWS_DEFAULT_REGION", self.region)
            patch.setattr(boto3, "DEFAULT_SESSION", None)  # clients the code makes pick these up
            patch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
            patch.setattr(ActionAuthenticatorMixin, "request_count", 0)
            try:
                yield boto3.Session(
                    aws_access_key_id=credentials["AccessKeyId"],
                    aws_secret_access_key=credentials["SecretAccessKey"],
                    aws_session_token=credentials["SessionToken"],
                    region_name=self.region,
                )
            except BaseException as exc:  # reported below, after the denials that likely caused it
                error = exc
        lines = [c.line() for c in self.calls[first_call:] if not c.decision.allowed]
        lines += self.problems[first_problem:]
        if lines:
            raise AssertionError("\n".join(lines)) from error
        if error is not None:
            raise error

    def authorize(self, response: Any, iam_request: Any, moto_resource: str) -> None:
        """The authorization step of one request moto answers; raises moto's AccessDenied on a denial."""
        caller = iam_request._access_key.arn
        role_name = caller.split(":assumed-role/", 1)[-1].split("/", 1)[0] if ":assumed-role/" in caller else None
        workload = self.workloads.get(role_name or "")
        if workload is None:
            self.problems.append(f"a request signed by {caller}, which is no workload's role session")
            iam_request._raise_access_denied()
            return
        principal = Principal(role_arn=workload.arn, account=self.account)
        documents = [_document(p) for p in iam_request._access_key.collect_policies()]
        denied = False
        try:
            requests = [with_principal_arn(r, workload.arn) for r in authorizations(response, moto_resource)]
        except UnmodeledError as exc:
            self.problems.append(f"{workload.name}: {exc}")
            requests, denied = [], True
        for request in requests:
            try:
                policy, is_key = self._resource_policy(request)
                decision = decide(request, principal, documents, policy, key_policy=is_key)
            except UnmodeledError as exc:
                self.problems.append(f"{workload.name}: {request.action} on {request.resource}: {exc}")
                denied = True
                continue
            self.calls.append(Call(workload.name, request, decision))
            denied |= not decision.allowed
        if denied:
            iam_request._raise_access_denied()

    def _resource_policy(self, request: Request) -> tuple[Mapping[str, Any] | None, bool]:
        if request.action.startswith("s3:"):
            bucket = request.resource.removeprefix("arn:aws:s3:::").split("/", 1)[0]
            return self.bucket_policies.get(bucket), False
        if request.action.startswith("kms:") and ":alias/" in request.resource:
            return None, False  # an alias has no policy of its own: IAM alone decides
        if request.action.startswith("kms:"):
            if request.resource not in self.key_policies:
                raise UnmodeledError(f"no key policy known for {request.resource} (KMS requires one)")
            return self.key_policies[request.resource], True
        return None, False

    # --- what happened ------------------------------------------------------------------------------------

    def authorized(self, workload: str, action: str | None = None, resource: str | None = None) -> list[Call]:
        """The allowed calls of ``workload``, optionally of one action and resource."""
        return [
            c
            for c in self.calls
            if c.workload == workload
            and c.decision.allowed
            and (action is None or c.request.action == action)
            and (resource is None or c.request.resource == resource)
        ]

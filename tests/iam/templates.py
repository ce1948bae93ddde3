"""What the synthesized templates give each workload, read from the templates themselves.

A workload's role is found the way the deployment finds it: a pod's service account through its
``AWS::EKS::PodIdentityAssociation``, a Lambda function through its ``Role``. Its policy documents
are the role's inline ``Policies``, every ``AWS::IAM::Policy``/``AWS::IAM::ManagedPolicy`` whose
``Roles`` name it, and the customer managed policies in ``ManagedPolicyArns``; AWS managed policies
are listed (``RolePolicies.aws_managed``) but not evaluated (their documents are not in the
template). The pods' environment and arguments come from the Kubernetes manifests the cluster stack
applies.

:class:`Resolver` resolves the intrinsics in those documents (pseudo parameters, ``Ref`` and
``Fn::GetAtt`` of resources the template names or the test created and bound, ``Fn::Join``,
``Fn::Sub``, ``Fn::Select``, ``Fn::Split``, and ``Fn::ImportValue`` from the exporting stack's
``Outputs``, :func:`exports`). It fails loudly on anything else, with two deliberate exceptions,
both written down where they are used:

- a role without ``RoleName`` resolves to ``arn:<partition>:iam::<account>:role/<logical id>``, the
  name the harness gives that role in moto (:mod:`tests.iam.harness`);
- a resource of a type named in ``opaque_types`` (a log group CloudFormation names at deploy time)
  resolves to an :class:`Opaque` marker. It may only stand in the ``Resource`` of an Allow statement,
  where it matches no request (the statement grants nothing here); anywhere else it is an error.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

# The property holding a resource's physical name, for types whose name the template fixes.
STATIC_NAMES: Final = {
    "AWS::DynamoDB::Table": "TableName",
    "AWS::S3::Bucket": "BucketName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::IAM::Role": "RoleName",
    "AWS::KMS::Alias": "AliasName",
    "AWS::ECR::Repository": "RepositoryName",
}
AWS_MANAGED_POLICY: Final = re.compile(r"^arn:aws[a-z-]*:iam::aws:policy/")
# Kubernetes kinds whose pod template is at spec.template.spec; Volcano Jobs keep one per task.
POD_TEMPLATE_KINDS: Final = ("Deployment", "StatefulSet", "DaemonSet")
OPAQUE_ARN_PREFIX: Final = "arn:aws:unresolved:::"


class TemplateError(Exception):
    """The template holds something this reader does not resolve; the test fails instead of guessing."""


@dataclass(frozen=True)
class Opaque:
    """A name CloudFormation makes at deploy time that no request here can carry."""

    what: str

    def __str__(self) -> str:
        """An ARN of no service, so a policy holding it stays valid and matches no request."""
        return f"{OPAQUE_ARN_PREFIX}{self.what.replace(' ', '/')}"


def resources(template: Mapping[str, Any], type_: str | None = None) -> dict[str, Mapping[str, Any]]:
    found = dict(template.get("Resources", {}))
    return {k: v for k, v in found.items() if type_ is None or v["Type"] == type_}


def properties(template: Mapping[str, Any], logical_id: str) -> Mapping[str, Any]:
    resource = resources(template).get(logical_id)
    if resource is None:
        raise TemplateError(f"no resource {logical_id} in the template")
    return dict(resource.get("Properties", {}))


class Resolver:
    """Resolves CloudFormation intrinsics to the values they take in the test's account and Region."""

    def __init__(
        self,
        template: Mapping[str, Any],
        *,
        account: str,
        region: str,
        partition: str = "aws",
        role_name: Callable[[str], str] = lambda logical_id: logical_id,
        opaque_types: Iterable[str] = (),
        imports: Mapping[str, Any] | None = None,
    ) -> None:
        self.template = template
        self.account, self.region, self.partition = account, region, partition
        self.role_name = role_name
        self.opaque_types = frozenset(opaque_types)
        self.imports = dict(imports or {})  # export name -> value, from the exporting stacks' Outputs
        self.bindings: dict[str, dict[str, str]] = {}
        self.pseudo = {
            "AWS::Partition": partition,
            "AWS::Region": region,
            "AWS::AccountId": account,
            "AWS::URLSuffix": "amazonaws.com",
        }

    def bind(self, logical_id: str, **attributes: str) -> None:
        """What a resource the test created resolves to (``Ref=...``, ``Arn=...``), e.g. a KMS key's id."""
        self.bindings.setdefault(logical_id, {}).update(attributes)

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, Mapping):
            return value
        if len(value) == 1:
            ((name, argument),) = value.items()
            if name == "Ref":
                return self._ref(argument)
            if name == "Fn::GetAtt":
                logical_id, attribute = argument.split(".", 1) if isinstance(argument, str) else argument
                return self._attribute(logical_id, attribute)
            if name == "Fn::Join":
                separator, parts = argument
                return _joined(separator, self.resolve(parts))
            if name == "Fn::Sub":
                return self._sub(argument)
            if name == "Fn::Select":
                index, items = argument
                return self.resolve(items)[int(self.resolve(index))]
            if name == "Fn::Split":
                separator, text = argument
                resolved = self.resolve(text)
                if isinstance(resolved, Opaque):
                    raise TemplateError(f"Fn::Split of {resolved}")
                return resolved.split(separator)
            if name == "Fn::ImportValue":
                export = self.resolve(argument)
                if export not in self.imports:
                    raise TemplateError(f"Fn::ImportValue {export!r}: no stack given to the resolver exports it")
                return self.imports[export]
            if name.startswith("Fn::") or name == "Condition":
                raise TemplateError(f"{name} {json.dumps(argument)}: not resolved here")
        return {k: self.resolve(v) for k, v in value.items()}

    def _resource(self, logical_id: str) -> Mapping[str, Any]:
        resource = resources(self.template).get(logical_id)
        if resource is None:
            raise TemplateError(f"Ref/GetAtt of {logical_id}: no such resource (a parameter or another stack's?)")
        return resource

    def _ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if "Ref" in self.bindings.get(name, {}):
            return self.bindings[name]["Ref"]
        resource = self._resource(name)
        kind, props = resource["Type"], resource.get("Properties", {})
        if kind == "AWS::IAM::Role":
            return props.get("RoleName") or self.role_name(name)
        if kind in STATIC_NAMES and STATIC_NAMES[kind] in props:
            return self.resolve(props[STATIC_NAMES[kind]])
        return self._unresolved(name, "Ref", kind)

    def _attribute(self, logical_id: str, attribute: str) -> Any:
        if attribute in self.bindings.get(logical_id, {}):
            return self.bindings[logical_id][attribute]
        resource = self._resource(logical_id)
        kind, props = resource["Type"], resource.get("Properties", {})
        p, r, a = self.partition, self.region, self.account
        if attribute == "Arn" and kind == "AWS::IAM::Role":
            path = props.get("Path", "/")
            return f"arn:{p}:iam::{a}:role{path}{self._ref(logical_id)}"
        named = kind in STATIC_NAMES and STATIC_NAMES[kind] in props
        if attribute == "Arn" and named:
            name = self._ref(logical_id)
            arns = {
                "AWS::DynamoDB::Table": f"arn:{p}:dynamodb:{r}:{a}:table/{name}",
                "AWS::S3::Bucket": f"arn:{p}:s3:::{name}",
                "AWS::Logs::LogGroup": f"arn:{p}:logs:{r}:{a}:log-group:{name}:*",
                "AWS::ECR::Repository": f"arn:{p}:ecr:{r}:{a}:repository/{name}",
            }
            if kind in arns:
                return arns[kind]
        return self._unresolved(logical_id, attribute, kind)

    def _unresolved(self, logical_id: str, attribute: str, kind: str) -> Opaque:
        if kind in self.opaque_types:
            return Opaque(f"{kind} {logical_id}.{attribute}")
        raise TemplateError(
            f"{kind} {logical_id}.{attribute}: no physical name in the template and nothing bound to it "
            "(create the resource in moto and Resolver.bind it)"
        )

    def _sub(self, argument: Any) -> Any:
        text, variables = (argument, {}) if isinstance(argument, str) else argument
        variables = {k: self.resolve(v) for k, v in variables.items()}

        def one(match: re.Match[str]) -> Any:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return variables[name]
            if "." in name:
                return self._attribute(*name.split(".", 1))
            return self._ref(name)

        parts: list[Any] = []
        last = 0
        for match in re.finditer(r"\$\{([^}]+)\}", text):
            parts += [text[last : match.start()], one(match)]
            last = match.end()
        parts.append(text[last:])
        return _joined("", parts)


def exports(template: Mapping[str, Any], resolver: Resolver) -> dict[str, Any]:
    """What a stack exports (``Outputs`` with ``Export``), resolved: the ``imports`` of its importers."""
    return {
        resolver.resolve(output["Export"]["Name"]): resolver.resolve(output["Value"])
        for output in template.get("Outputs", {}).values()
        if "Export" in output
    }


def _joined(separator: str, parts: list[Any]) -> Any:
    if any(isinstance(p, Opaque) for p in parts):
        return Opaque(separator.join(p.what if isinstance(p, Opaque) else str(p) for p in parts))
    return separator.join(str(p) for p in parts)


def settle(document: Any, where: str) -> dict[str, Any]:
    """A resolved policy document with Opaque markers only where they can grant nothing."""
    doc = copy.deepcopy(document)
    for index, statement in enumerate(_statements(doc)):
        resource = statement.get("Resource")
        if statement.get("Effect") == "Allow" and resource is not None:
            listed = resource if isinstance(resource, list) else [resource]
            statement["Resource"] = [str(r) if isinstance(r, Opaque) else r for r in listed]
        leftover = _find_opaque(statement)
        if leftover is not None:
            raise TemplateError(f"{where} statement {index}: {leftover} outside an Allow statement's Resource")
    return dict(doc)


def _statements(document: Any) -> list[dict[str, Any]]:
    listed = document.get("Statement", [])
    return listed if isinstance(listed, list) else [listed]


def _find_opaque(value: Any) -> Opaque | None:
    if isinstance(value, Opaque):
        return value
    children = value.values() if isinstance(value, Mapping) else value if isinstance(value, list) else ()
    return next((found for child in children if (found := _find_opaque(child)) is not None), None)


@dataclass(frozen=True)
class RolePolicies:
    """A role and the policy documents the template gives it, resolved."""

    logical_id: str
    trust: Mapping[str, Any]
    documents: Mapping[str, Mapping[str, Any]]  # policy name -> document
    aws_managed: tuple[str, ...] = ()  # AWS managed policy ARNs: attached, not evaluated here
    opaque: tuple[str, ...] = field(default=())  # resources that resolved to Opaque markers

    def actions(self) -> set[str]:
        return {
            action
            for doc in self.documents.values()
            for statement in _statements(doc)
            for action in _as_list(statement.get("Action", []))
        }

    def without_action(self, action: str) -> RolePolicies:
        """The same role with ``action`` taken out of every statement (a negative test's policy)."""
        documents: dict[str, Mapping[str, Any]] = {}
        for name, doc in self.documents.items():
            kept = []
            for statement in _statements(copy.deepcopy(doc)):
                actions = [a for a in _as_list(statement.get("Action", [])) if a != action]
                if "Action" in statement and not actions:
                    continue
                if "Action" in statement:
                    statement["Action"] = actions
                kept.append(statement)
            documents[name] = {**doc, "Statement": kept}
        return RolePolicies(self.logical_id, self.trust, documents, self.aws_managed, self.opaque)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def role_policies(template: Mapping[str, Any], role_id: str, resolver: Resolver) -> RolePolicies:
    role = resources(template).get(role_id)
    if role is None or role["Type"] != "AWS::IAM::Role":
        raise TemplateError(f"{role_id} is not an AWS::IAM::Role of this template")
    props = role.get("Properties", {})
    if "PermissionsBoundary" in props:
        raise TemplateError(f"{role_id}: permissions boundaries are not evaluated here")
    raw: dict[str, Any] = {p["PolicyName"]: p["PolicyDocument"] for p in props.get("Policies", [])}
    attached = {"Ref": role_id}
    for logical_id, policy in resources(template).items():
        kind, attached_to = policy["Type"], policy.get("Properties", {}).get("Roles", [])
        if kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy") and attached in attached_to:
            raw[logical_id] = policy["Properties"]["PolicyDocument"]
    aws_managed: list[str] = []
    for arn in props.get("ManagedPolicyArns", []):
        if isinstance(arn, Mapping) and set(arn) == {"Ref"}:
            target = resources(template).get(arn["Ref"], {})
            if target.get("Type") == "AWS::IAM::ManagedPolicy":
                raw[arn["Ref"]] = target["Properties"]["PolicyDocument"]
                continue
        resolved = resolver.resolve(arn)
        if isinstance(resolved, str) and AWS_MANAGED_POLICY.match(resolved):
            aws_managed.append(resolved)
            continue
        raise TemplateError(f"{role_id}: managed policy {json.dumps(arn)} is neither AWS managed nor in the template")
    documents = {name: settle(resolver.resolve(doc), f"{role_id} policy {name}") for name, doc in raw.items()}
    opaque = tuple(
        r
        for doc in documents.values()
        for statement in _statements(doc)
        for r in _as_list(statement.get("Resource", []))
        if isinstance(r, str) and r.startswith(OPAQUE_ARN_PREFIX)
    )
    trust = resolver.resolve(props.get("AssumeRolePolicyDocument", {}))
    return RolePolicies(role_id, trust, documents, tuple(aws_managed), opaque)


def resource_policy(template: Mapping[str, Any], logical_id: str, resolver: Resolver) -> dict[str, Any]:
    """A resolved resource policy (a bucket policy's or a key policy's document)."""
    props = properties(template, logical_id)
    document = props.get("PolicyDocument", props.get("KeyPolicy"))
    if document is None:
        raise TemplateError(f"{logical_id} holds no policy document")
    return settle(resolver.resolve(document), logical_id)


def pod_identity_role(template: Mapping[str, Any], namespace: str, service_account: str) -> str:
    """The logical id of the role EKS Pod Identity gives ``namespace/service_account``."""
    found = [
        p["Properties"]["RoleArn"]
        for p in resources(template, "AWS::EKS::PodIdentityAssociation").values()
        if p["Properties"]["Namespace"] == namespace and p["Properties"]["ServiceAccount"] == service_account
    ]
    if len(found) != 1 or set(found[0]) != {"Fn::GetAtt"}:
        raise TemplateError(f"{namespace}/{service_account}: {len(found)} Pod Identity associations ({found})")
    return str(found[0]["Fn::GetAtt"][0])


# --- the pods: Kubernetes objects the cluster stack applies -----------------------------------------


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    env: Mapping[str, str]  # literal values only: valueFrom entries are left out
    command: tuple[str, ...]
    args: tuple[str, ...]


@dataclass(frozen=True)
class Pod:
    """One workload's pod template: where it runs, as whom, and what its containers get."""

    kind: str
    name: str
    namespace: str
    service_account: str
    containers: tuple[Container, ...]

    @property
    def container(self) -> Container:
        (only,) = self.containers
        return only


def kubernetes_objects(template: Mapping[str, Any]) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for logical_id, resource in resources(template, "Custom::AWSCDK-EKS-KubernetesResource").items():
        manifest = resource["Properties"]["Manifest"]
        if not isinstance(manifest, str):
            raise TemplateError(f"{logical_id}: a manifest with intrinsics is not read here")
        objects.extend(json.loads(manifest))
    return objects


def _pod_templates(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spec = obj.get("spec", {})
    if obj["kind"] in POD_TEMPLATE_KINDS or (obj["kind"] == "Job" and "template" in spec):
        return [spec["template"]]
    if obj["kind"] == "Job" and "tasks" in spec:  # a Volcano Job
        return [task["template"] for task in spec["tasks"]]
    return []


def pods(template: Mapping[str, Any], kind: str) -> list[Pod]:
    found = []
    for obj in kubernetes_objects(template):
        if obj["kind"] != kind:
            continue
        for pod_template in _pod_templates(obj):
            spec = pod_template["spec"]
            containers = tuple(
                Container(
                    name=c["name"],
                    image=c["image"],
                    env={e["name"]: e["value"] for e in c.get("env", []) if "value" in e},
                    command=tuple(c.get("command", ())),
                    args=tuple(c.get("args", ())),
                )
                for c in spec["containers"]
            )
            metadata = obj["metadata"]
            found.append(Pod(kind, metadata["name"], metadata["namespace"], spec["serviceAccountName"], containers))
    return found


def pod(template: Mapping[str, Any], kind: str, name: str) -> Pod:
    (found,) = [p for p in pods(template, kind) if p.name == name]
    return found


# --- Lambda functions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LambdaFunction:
    logical_id: str
    handler: str
    role_id: str
    env: Mapping[str, str]


def lambda_function(template: Mapping[str, Any], handler: str, resolver: Resolver) -> LambdaFunction:
    (logical_id,) = [
        k for k, v in resources(template, "AWS::Lambda::Function").items() if v["Properties"]["Handler"] == handler
    ]
    props = properties(template, logical_id)
    role = props["Role"]
    if set(role) != {"Fn::GetAtt"} or role["Fn::GetAtt"][1] != "Arn":
        raise TemplateError(f"{logical_id}: Role {json.dumps(role)} is not a role of this template")
    env = resolver.resolve(props.get("Environment", {}).get("Variables", {}))
    if any(not isinstance(v, str) for v in env.values()):
        raise TemplateError(f"{logical_id}: environment {env} is not fully resolved")
    return LambdaFunction(logical_id, handler, role["Fn::GetAtt"][0], env)

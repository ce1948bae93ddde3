"""Offline validation of synthesized manifests.

- Core kinds: kubernetes-validate, strict schemas of the cluster's Kubernetes version.
- Custom resources: the ``openAPIV3Schema`` of their CRD in third_party/*/crds, made closed
  (``additionalProperties: false`` wherever the schema lists properties and does not
  preserve unknown fields), checked with jsonschema; then the CRD's
  ``x-kubernetes-validations`` CEL rules evaluated with cel-python where that is possible
  offline. Every rule evaluation, skip (with its reason) and unreached rule is counted.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import yaml
from celpy import celtypes

# The vendored upstream CRDs (third_party/<origin>/crds/*.yaml), the same files `make imports` reads.
THIRD_PARTY = Path(__file__).resolve().parents[2] / "third_party"
# Functions of the Kubernetes CEL libraries (and CEL extensions) that cel-python 0.5 lacks
# and these tests do not implement: a rule using one is skipped, with that reason.
K8S_CEL_FUNCTIONS = (
    "quantity", "isQuantity", "url", "isURL", "ip", "isIP", "cidr", "isCIDR", "format", "lowerAscii",
    "upperAscii", "join", "indexOf", "lastIndexOf", "replace", "substring", "trim",
    "findAll", "isSorted", "sum", "min", "max", "semver", "isSemver", "reverse", "charAt",
)  # fmt: skip


def _find(value: Any, pattern: Any) -> celtypes.StringType:
    """Kubernetes regex library ``<string>.find(<regex>)``: the first match, or ""."""
    match = re.search(str(pattern), str(value))
    return celtypes.StringType(match.group(0) if match else "")


def _split(value: Any, separator: Any) -> celtypes.ListType:
    """CEL strings extension ``<string>.split(<separator>)``."""
    return celtypes.ListType([celtypes.StringType(part) for part in str(value).split(str(separator))])


# Implemented here (Python's re is RE2-compatible for the CRDs' patterns): Karpenter uses them.
EXTRA_FUNCTIONS = {"find": _find, "split": _split}
_FUNCTION_CALL = re.compile(r"\.?\b([A-Za-z_]\w*)\s*\(")


@dataclass(frozen=True)
class Rule:
    crd: str  # kind
    path: str  # JSON-pointer-like path of the schema node carrying the rule
    rule: str

    @property
    def skip_reason(self) -> str | None:
        """Why this rule cannot be evaluated offline, or None if it can."""
        if re.search(r"\boldSelf\b", self.rule):
            return "transition rule (oldSelf needs the object stored in the cluster)"
        used = sorted({name for name in _FUNCTION_CALL.findall(self.rule) if name in K8S_CEL_FUNCTIONS})
        if used:
            return f"Kubernetes CEL library function(s) not in cel-python: {', '.join(used)}"
        return None


@dataclass
class Tally:
    """What the validators did, for the closing note."""

    objects: Counter[str] = field(default_factory=Counter)  # chart -> objects checked
    core_objects: int = 0
    custom_objects: int = 0
    cel_evaluations: int = 0  # (rule, object) pairs evaluated
    cel_skipped: Counter[str] = field(default_factory=Counter)  # reason -> (rule, object) pairs
    rules_evaluated: set[Rule] = field(default_factory=set)
    rules_skipped: dict[Rule, str] = field(default_factory=dict)
    rules_total: dict[str, int] = field(default_factory=dict)  # kind -> rules in its CRD
    rules_unreached: set[Rule] = field(default_factory=set)  # their field absent in every object

    def summary(self) -> dict[str, Any]:
        skipped_by_reason = Counter(self.rules_skipped.values())
        return {
            "objects_checked_per_chart": dict(self.objects),
            "core_objects_kubernetes_validate": self.core_objects,
            "custom_resources_jsonschema": self.custom_objects,
            "cel_rules_in_used_crds": self.rules_total,
            "cel_rules_evaluated": len(self.rules_evaluated),
            "cel_evaluations": self.cel_evaluations,
            "cel_rules_skipped": dict(skipped_by_reason),
            "cel_evaluations_skipped": dict(self.cel_skipped),
            "cel_rules_not_reached": len(self.rules_unreached - self.rules_evaluated - set(self.rules_skipped)),
        }


@cache
def crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema of every served version of every CRD."""
    result: dict[tuple[str, str], dict[str, Any]] = {}
    paths = sorted(THIRD_PARTY.glob("*/crds/*.yaml"))
    if not paths:
        raise FileNotFoundError(f"no CRDs in {THIRD_PARTY}/*/crds")
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
            for version in doc["spec"]["versions"]:
                if version.get("served"):
                    result[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return result


def closed(schema: Any) -> Any:
    """A copy of ``schema`` that rejects unknown fields wherever Kubernetes would prune them."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def _validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    schema = closed(copy.deepcopy(crds()[(api_version, kind)]))
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    return cls(schema)


def is_custom(obj: dict[str, Any]) -> bool:
    return (obj["apiVersion"], obj["kind"]) in crds()


def validate_core(obj: dict[str, Any], kubernetes_version: str) -> None:
    """Raises kubernetes_validate.ValidationError (strict: unknown fields are errors)."""
    kubernetes_validate.validate(obj, kubernetes_version, strict=True)


def validate_custom(obj: dict[str, Any]) -> list[str]:
    """Schema errors of a custom resource against its closed CRD schema."""
    validator = _validator(obj["apiVersion"], obj["kind"])
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def all_rules(kind: str, schema: Any, path: str = "") -> Iterator[Rule]:
    if isinstance(schema, dict):
        for item in schema.get("x-kubernetes-validations", []):
            yield Rule(kind, path or "/", item["rule"])
        for key, sub in schema.get("properties", {}).items():
            yield from all_rules(kind, sub, f"{path}/{key}")
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                yield from all_rules(kind, schema[key], f"{path}/{'*' if key == 'items' else '{}'}")


def rules_with_values(kind: str, schema: Any, value: Any, path: str = "") -> Iterator[tuple[Rule, Any]]:
    """Each rule of ``schema`` paired with the value it applies to in ``value``."""
    if not isinstance(schema, dict):
        return
    for item in schema.get("x-kubernetes-validations", []):
        yield Rule(kind, path or "/", item["rule"]), value
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            if props and key in props:
                yield from rules_with_values(kind, props[key], sub, f"{path}/{key}")
            elif isinstance(extra, dict):
                yield from rules_with_values(kind, extra, sub, f"{path}/{{}}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for sub in value:
            yield from rules_with_values(kind, schema["items"], sub, f"{path}/*")


@cache
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule), functions=EXTRA_FUNCTIONS)  # type: ignore[arg-type]  # cel-python types functions narrower than it calls them


def evaluate_cel(obj: dict[str, Any], tally: Tally) -> list[str]:
    """Evaluate the CRD's CEL rules on ``obj``; return the rules that evaluate to false."""
    kind = obj["kind"]
    schema = crds()[(obj["apiVersion"], kind)]
    rules = set(all_rules(kind, schema))
    tally.rules_total[kind] = len(rules)
    tally.rules_unreached |= rules
    failures = []
    for rule, value in rules_with_values(kind, schema, obj):
        reason = rule.skip_reason
        if reason:
            tally.rules_skipped[rule] = reason
            tally.cel_skipped[reason] += 1
            continue
        try:
            result = _program(rule.rule).evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError as err:
            raise AssertionError(f"{kind} {rule.path}: cannot evaluate {rule.rule!r}: {err}") from err
        if isinstance(result, celpy.CELEvalError):
            raise AssertionError(f"{kind} {rule.path}: cannot evaluate {rule.rule!r}: {result}")
        tally.rules_evaluated.add(rule)
        tally.cel_evaluations += 1
        if result != celtypes.BoolType(True):
            failures.append(f"{obj['metadata']['name']} {rule.path}: {rule.rule}")
    return failures

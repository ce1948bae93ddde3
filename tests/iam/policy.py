"""IAM policy evaluation for the requests the workloads make: statements, conditions, and the decision.

Why not moto's evaluator (``moto.iam.access_control.IAMPolicyStatement``): moto 5.2.5 evaluates
only ``StringEquals`` conditions and only against values it is handed, and its authorizer hands it
none, so every ``Condition`` passes (``cloudwatch:namespace``, ``kms:RequestAlias`` and
``s3:prefix`` would all be ignored); a failed condition on an Allow turns into an explicit Deny;
``?`` in a pattern is read as a regex quantifier (``-??????`` in a secret ARN raises); a statement
without ``Resource`` (one with ``NotResource``) allows everything; and actions are named by signing
name (``monitoring:PutMetricData``, never ``cloudwatch:PutMetricData``). This module evaluates the
policy grammar the app's templates use the way the IAM User Guide describes ("Policy evaluation
logic", "IAM JSON policy elements: Condition operators"), and refuses what it does not model:

- a condition operator other than the String*, Arn*, Bool and Null families (with ``IfExists``),
  set operators (``ForAnyValue:``/``ForAllValues:``), policy variables (``${...}``);
- a condition key the request does not model (``Request.modeled``): rather than guess whether
  AWS would fill it, :class:`UnmodeledError` is raised and the harness fails the test;
- ``NotPrincipal``, and principals other than ``*``, an account, a role ARN or a service.

Not evaluated at all (nothing in the templates uses them; a template that starts to fails loudly
in :mod:`tests.iam.templates`): permissions boundaries, session policies, SCPs, VPC endpoint
policies.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

STATEMENT_KEYS: Final = frozenset(
    {"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition", "Principal"}
)
# Condition keys every request carries here: boto3 calls https endpoints only.
GLOBAL_KEYS: Final = frozenset({"aws:securetransport"})


class UnmodeledError(Exception):
    """The harness cannot tell how AWS would decide this; the test fails instead of guessing."""


@dataclass(frozen=True)
class Request:
    """One authorization AWS makes for an API call: an action on a resource in a request context.

    ``context`` maps lower-case condition keys to the values AWS puts in this request's context;
    ``modeled`` names every key whose presence or absence the harness knows for this request (a
    key in ``modeled`` but not in ``context`` is absent, as AWS would leave it).
    """

    operation: str  # the API call, e.g. "s3:DeleteObjects"
    action: str  # the IAM action it is authorized as, e.g. "s3:DeleteObject"
    resource: str  # the ARN it is authorized against, or "*"
    context: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    modeled: frozenset[str] = frozenset()

    def value(self, key: str) -> tuple[str, ...] | None:
        """The context values of ``key``; None when absent. Raises UnmodeledError for a key not modeled."""
        name = key.lower()
        if name not in self.modeled | GLOBAL_KEYS:
            raise UnmodeledError(
                f"condition key {key!r} on {self.action}: the harness does not model its value for {self.operation}"
            )
        return self.context.get(name)


@dataclass(frozen=True)
class Principal:
    """Who calls: a session of ``role_arn`` in ``account``."""

    role_arn: str
    account: str


class Effect(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    NONE = "none"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # what decided: "denied by <reason>" / "allowed by <reason>"


def _pattern(text: str, *, ignore_case: bool) -> re.Pattern[str]:
    """IAM wildcards: ``*`` any run of characters (``/`` and ``:`` included), ``?`` one character."""
    if "${" in text:
        raise UnmodeledError(f"policy variable in {text!r}: not modeled")
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in text)
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.compile(f"^{body}$", flags)


def wildcard_match(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    return _pattern(pattern, ignore_case=ignore_case).match(value) is not None


def _listed(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, str):
            raise UnmodeledError(f"policy value {item!r} is not a string (an unresolved intrinsic?)")
    return items


def _arn_like(pattern: str, value: str) -> bool:
    """ArnLike: the six colon-separated parts match one by one (the last part may hold colons)."""
    wanted, actual = pattern.split(":", 5), value.split(":", 5)
    if len(wanted) != 6 or len(actual) != 6:
        return False
    return all(wildcard_match(w, a) for w, a in zip(wanted, actual, strict=True))


# operator -> (does one expected value match one actual value, is the operator negated)
_OPERATORS: Final[Mapping[str, tuple[Any, bool]]] = {
    "StringEquals": (lambda e, a: a == e, False),
    "StringNotEquals": (lambda e, a: a == e, True),
    "StringEqualsIgnoreCase": (lambda e, a: a.lower() == e.lower(), False),
    "StringNotEqualsIgnoreCase": (lambda e, a: a.lower() == e.lower(), True),
    "StringLike": (lambda e, a: wildcard_match(e, a), False),
    "StringNotLike": (lambda e, a: wildcard_match(e, a), True),
    "ArnEquals": (lambda e, a: a == e, False),
    "ArnNotEquals": (lambda e, a: a == e, True),
    "ArnLike": (_arn_like, False),
    "ArnNotLike": (_arn_like, True),
    "Bool": (lambda e, a: a.lower() == e.lower(), False),
}


def _condition_holds(operator: str, key: str, expected: Any, request: Request) -> bool:
    values = _listed(expected)
    actual = request.value(key)
    if operator == "Null":  # "true": the key must be absent
        return all((actual is None) == (v.lower() == "true") for v in values)
    if operator.startswith(("ForAnyValue:", "ForAllValues:")):
        raise UnmodeledError(f"set operator {operator} on {key}: not modeled")
    base, if_exists = (operator[: -len("IfExists")], True) if operator.endswith("IfExists") else (operator, False)
    if base not in _OPERATORS:
        raise UnmodeledError(f"condition operator {operator} on {key}: not modeled")
    matches, negated = _OPERATORS[base]
    if actual is None:  # IAM: a missing key fails a condition, except negated operators and ...IfExists
        return if_exists or negated
    hit = any(matches(e, a) for e in values for a in actual)
    return not hit if negated else hit


def conditions_hold(conditions: Mapping[str, Mapping[str, Any]], request: Request) -> bool:
    """Every operator block and every key in it must hold (AND); values within a key are OR."""
    return all(
        _condition_holds(operator, key, expected, request)
        for operator, block in conditions.items()
        for key, expected in block.items()
    )


def _principal_kind(statement: Mapping[str, Any], principal: Principal) -> str | None:
    """How a resource policy statement's Principal covers ``principal``: "direct", "account" or None."""
    if "NotPrincipal" in statement:
        raise UnmodeledError("NotPrincipal: not modeled")
    given = statement.get("Principal")
    if given is None:
        raise UnmodeledError("a resource policy statement without Principal")
    if given == "*":
        return "direct"
    if not isinstance(given, Mapping):
        raise UnmodeledError(f"Principal {given!r}: not modeled")
    unknown = set(given) - {"AWS", "Service", "Federated", "CanonicalUser"}
    if unknown:
        raise UnmodeledError(f"Principal types {sorted(unknown)}: not modeled")
    kinds: set[str] = set()
    for value in _listed(given.get("AWS", [])):
        if value == "*" or value == principal.role_arn:
            kinds.add("direct")
        elif value in (principal.account, f"arn:aws:iam::{principal.account}:root"):
            kinds.add("account")
        elif not value.startswith("arn:"):
            raise UnmodeledError(f"AWS principal {value!r}: not modeled")
    return "direct" if "direct" in kinds else "account" if kinds else None  # services never match a role


def statement_effect(statement: Mapping[str, Any], request: Request) -> Effect:
    """The statement's effect on ``request`` if it applies (action, resource and conditions), else NONE."""
    unknown = set(statement) - STATEMENT_KEYS
    if unknown:
        raise UnmodeledError(f"statement elements {sorted(unknown)}: not modeled")
    if ("Action" in statement) == ("NotAction" in statement):
        raise UnmodeledError("a statement needs exactly one of Action and NotAction")
    if ("Resource" in statement) == ("NotResource" in statement):
        raise UnmodeledError("a statement needs exactly one of Resource and NotResource")
    if "Action" in statement:
        acts = any(wildcard_match(a, request.action, ignore_case=True) for a in _listed(statement["Action"]))
    else:
        acts = not any(wildcard_match(a, request.action, ignore_case=True) for a in _listed(statement["NotAction"]))
    if not acts:
        return Effect.NONE
    if "Resource" in statement:
        covers = any(wildcard_match(r, request.resource) for r in _listed(statement["Resource"]))
    else:
        covers = not any(wildcard_match(r, request.resource) for r in _listed(statement["NotResource"]))
    if not covers or not conditions_hold(statement.get("Condition", {}), request):
        return Effect.NONE
    effect = statement.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise UnmodeledError(f"Effect {effect!r}")
    return Effect.ALLOW if effect == "Allow" else Effect.DENY


def statements(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    listed = document.get("Statement", [])
    return list(listed) if isinstance(listed, list) else [listed]


def identity_effect(documents: Iterable[Mapping[str, Any]], request: Request) -> Effect:
    """DENY if any statement denies, else ALLOW if any allows, else NONE (implicit deny)."""
    effects = {statement_effect(s, request) for d in documents for s in statements(d)}
    return Effect.DENY if Effect.DENY in effects else Effect.ALLOW if Effect.ALLOW in effects else Effect.NONE


def resource_effect(document: Mapping[str, Any], request: Request, principal: Principal) -> tuple[Effect, bool]:
    """(effect, whether an Allow names the principal itself rather than only its account)."""
    denied, allowed, direct = False, False, False
    for statement in statements(document):
        kind = _principal_kind(statement, principal)
        if kind is None:
            continue
        effect = statement_effect({k: v for k, v in statement.items() if k != "Principal"}, request)
        denied |= effect is Effect.DENY
        if effect is Effect.ALLOW:
            allowed = True
            direct |= kind == "direct"
    return (Effect.DENY if denied else Effect.ALLOW if allowed else Effect.NONE), direct


def decide(
    request: Request,
    principal: Principal,
    identity: Sequence[Mapping[str, Any]],
    resource_policy: Mapping[str, Any] | None = None,
    *,
    key_policy: bool = False,
) -> Decision:
    """Same-account evaluation: an explicit Deny anywhere wins; otherwise an identity-policy Allow or a
    resource-policy Allow naming the principal allows. A KMS key policy (``key_policy``) must allow
    itself: naming the principal, or naming the account, which delegates to the identity policies."""
    mine = identity_effect(identity, request)
    theirs, direct = (
        resource_effect(resource_policy, request, principal) if resource_policy is not None else (Effect.NONE, False)
    )
    if mine is Effect.DENY:
        return Decision(False, "its role's policies (an explicit Deny)")
    if theirs is Effect.DENY:
        return Decision(False, f"the {'key' if key_policy else 'resource'} policy (an explicit Deny)")
    if key_policy:
        if theirs is not Effect.ALLOW:
            return Decision(False, "the key policy (it allows neither the role nor the account)")
        if direct or mine is Effect.ALLOW:
            return Decision(True, "the key policy" if direct else "its role's policies, as the key policy delegates")
        return Decision(False, "its role's policies (no statement allows it; the key policy delegates to IAM)")
    if mine is Effect.ALLOW:
        return Decision(True, "its role's policies")
    if theirs is Effect.ALLOW and direct:
        return Decision(True, "the resource policy")
    return Decision(False, "its role's policies (no statement allows it)")

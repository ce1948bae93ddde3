"""Reading the upstream documents vendored in third_party/: what upstream publishes is read, not retyped.

Controllers whose upstream publishes their AWS permissions (Karpenter's getting-started
CloudFormation template, the AWS Load Balancer Controller's IAM policy) get them from the
exact copies in third_party/ (see third_party/README.md); an upgrade replaces the file there
and the templates follow.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml

THIRD_PARTY: Final = Path(__file__).resolve().parents[2] / "third_party"

_PLACEHOLDER: Final = re.compile(r"\$\{([^}]+)\}")


class _CloudFormationLoader(yaml.SafeLoader):
    """Reads CloudFormation's short-form tags (``!Sub``, ``!GetAtt``, ``!Ref``, ...) as their long form."""


def _intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        scalar = loader.construct_scalar(node)
        value = scalar.split(".", 1) if tag_suffix == "GetAtt" else scalar
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CloudFormationLoader.add_multi_constructor("!", _intrinsic)


def load_cloudformation(path: Path) -> dict[str, Any]:
    """A CloudFormation YAML template, short-form tags read as ``{"Fn::Sub": ...}`` and the like."""
    template = yaml.load(path.read_text(), Loader=_CloudFormationLoader)  # noqa: S506 (a SafeLoader subclass)
    assert isinstance(template, dict), f"{path} is not a CloudFormation template"
    return template


def substitute(value: Any, values: Mapping[str, str], *, source: str) -> Any:
    """``value`` with every ``${Name}`` in its strings (mapping keys included) replaced by ``values[Name]``,
    as ``Fn::Sub`` would (``${!Name}`` stays a literal ``${Name}``).

    Raises KeyError naming the placeholder and ``source`` when ``values`` has no value for it:
    a placeholder new upstream needs a value chosen here, not a silent pass-through.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("!"):
            return "${" + name[1:] + "}"
        if name not in values:
            raise KeyError(f"{source} uses ${{{name}}}, which has no value here (known: {', '.join(values)})")
        return values[name]

    if isinstance(value, str):
        return _PLACEHOLDER.sub(replace, value)
    if isinstance(value, list):
        return [substitute(item, values, source=source) for item in value]
    if isinstance(value, dict):
        return {
            substitute(key, values, source=source): substitute(item, values, source=source)
            for key, item in value.items()
        }
    return value


def statement_resources(statement: Mapping[str, Any]) -> list[str]:
    """An IAM policy statement's ``Resource`` as a list (IAM JSON also allows a single string)."""
    resource = statement["Resource"]
    return [resource] if isinstance(resource, str) else list(resource)

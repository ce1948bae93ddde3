"""Reading the vendored upstream documents: CloudFormation short forms and ${...} substitution."""

from __future__ import annotations

import pytest

from stacks.cluster.upstream import THIRD_PARTY, load_cloudformation, statement_resources, substitute


def test_cloudformation_short_forms_read_as_their_long_form() -> None:
    resources = load_cloudformation(THIRD_PARTY / "karpenter" / "cloudformation.yaml")["Resources"]
    queue_policy = resources["KarpenterInterruptionQueuePolicy"]["Properties"]
    assert queue_policy["Queues"] == [{"Ref": "KarpenterInterruptionQueue"}]
    assert queue_policy["PolicyDocument"]["Statement"][0]["Resource"] == {
        "Fn::GetAtt": ["KarpenterInterruptionQueue", "Arn"]
    }
    assert resources["KarpenterNodeRole"]["Properties"]["RoleName"] == {"Fn::Sub": "KarpenterNodeRole-${ClusterName}"}


def test_substitute_replaces_placeholders_in_keys_and_values() -> None:
    value = {"aws:ResourceTag/kubernetes.io/cluster/${ClusterName}": ["owned", "${AWS::Region}"], "n": 300}
    assert substitute(value, {"ClusterName": "edge", "AWS::Region": "us-west-2"}, source="t") == {
        "aws:ResourceTag/kubernetes.io/cluster/edge": ["owned", "us-west-2"],
        "n": 300,
    }
    assert substitute("${!Literal}-${A}", {"A": "a"}, source="t") == "${Literal}-a"


def test_substitute_refuses_a_placeholder_without_a_value() -> None:
    with pytest.raises(KeyError, match=r"cloudformation.yaml NewPolicy uses \$\{KarpenterNewThing.Arn\}"):
        substitute({"Resource": "${KarpenterNewThing.Arn}"}, {"A": "a"}, source="cloudformation.yaml NewPolicy")


def test_statement_resources_accepts_both_iam_forms() -> None:
    assert statement_resources({"Resource": "*"}) == ["*"]
    assert statement_resources({"Resource": ["a", "b"]}) == ["a", "b"]

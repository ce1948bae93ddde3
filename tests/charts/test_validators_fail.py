"""The validators can fail: each one rejects a broken copy of a real object."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest

from tests.charts import validate
from tests.charts.conftest import Rendered
from tests.charts.test_validation import KUBERNETES_VERSION
from tests.charts.validate import Tally


def test_core_validation_rejects_an_unknown_field(rendered: Rendered) -> None:
    workload = copy.deepcopy(rendered.named("Deployment", "stable-diffusion-nvidia"))
    workload["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        validate.validate_core(workload, KUBERNETES_VERSION)


def test_crd_validation_rejects_unknown_fields_and_bad_values(rendered: Rendered) -> None:
    pool = copy.deepcopy(rendered.named("NodePool", "nvidia"))
    assert validate.validate_custom(pool) == []
    pool["spec"]["template"]["spec"]["instanceFamilies"] = ["g5"]  # not a NodePool field
    pool["spec"]["weight"] = 1000  # maximum 100
    errors = validate.validate_custom(pool)
    assert any("instanceFamilies" in e for e in errors), errors
    assert any("weight" in e for e in errors), errors
    job = copy.deepcopy(rendered.of_kind("Job")[0])
    job["spec"]["tasks"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = None
    assert validate.validate_custom(job)


def test_cel_rules_reject_what_karpenter_rejects(rendered: Rendered) -> None:
    pool = copy.deepcopy(rendered.named("NodePool", "nvidia"))
    # Restricted label domain (evaluated with the find() implementation) and an In without values.
    pool["spec"]["template"]["metadata"]["labels"]["karpenter.sh/custom"] = "x"
    pool["spec"]["template"]["spec"]["requirements"].append(
        {"key": "karpenter.k8s.aws/instance-size", "operator": "In", "values": []}
    )
    failures = validate.evaluate_cel(pool, Tally())
    assert any("labels" in f for f in failures), failures
    assert any("requirements" in f for f in failures), failures
    node_class = copy.deepcopy(rendered.named("EC2NodeClass", "regional"))
    node_class["spec"]["amiSelectorTerms"] = [{"alias": "ubuntu@latest"}]  # split() rule
    assert validate.evaluate_cel(node_class, Tally())

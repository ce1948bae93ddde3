"""Every synthesized object validates: core kinds against the Kubernetes schemas (strict),
custom resources against their CRD schemas (closed) and CEL rules."""

from __future__ import annotations

import kubernetes_validate
import pytest

from plan import versions
from tests.charts import validate
from tests.charts.conftest import Rendered
from tests.charts.validate import Tally

# kubernetes-validate 1.37.0 ships 1.35 schemas: validate against the cluster's own version.
KUBERNETES_VERSION = f"{versions.KUBERNETES_VERSION}.0"


def test_schemas_of_the_cluster_version_are_installed() -> None:
    assert KUBERNETES_VERSION in kubernetes_validate.utils.all_versions()


CHARTS = (
    "karpenter",
    "device-plugins",
    "serving",
    "autoscaling",
    "model-build-queue",
    "model-builds",
    "inventory",
    "network-policies",
)


def test_every_chart_is_validated(rendered: Rendered) -> None:
    assert set(rendered.objects) == set(CHARTS)


def validation_errors(rendered: Rendered, tally: Tally, chart: str) -> list[str]:
    """Every error of the chart's objects: schemas (strict core, closed CRDs) and CEL rules, counted in ``tally``."""
    objects = rendered.objects[chart]
    assert objects, f"chart {chart} is empty"
    errors: list[str] = []
    for obj in objects:
        ident = f"{obj['kind']}/{obj['metadata']['name']}"
        if validate.is_custom(obj):
            errors += [f"{ident}: {e}" for e in validate.validate_custom(obj)]
            errors += [f"{ident}: CEL rule false: {e}" for e in validate.evaluate_cel(obj, tally)]
            tally.custom_objects += 1
        else:
            try:
                validate.validate_core(obj, KUBERNETES_VERSION)
            except kubernetes_validate.ValidationError as err:
                errors.append(f"{ident}: {err.message} at {list(err.path)}")
            tally.core_objects += 1
        tally.objects[chart] += 1
    return errors


@pytest.mark.parametrize("chart", CHARTS)
def test_every_object_validates(rendered: Rendered, tally: Tally, chart: str) -> None:
    errors = validation_errors(rendered, tally, chart)
    assert not errors, "\n".join(errors)

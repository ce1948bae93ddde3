"""The `pipeline` config key: source of the image and deploy pipelines, with one-line errors."""

from __future__ import annotations

import pytest

from plan.config import ConfigError, PipelineConfig, load_config

# Only the pipeline's keys, in a development deployment (one that may serve plain HTTP).
DEV = {"development": True}
ARN = "arn:aws:codeconnections:us-west-2:123456789012:connection/12345678-1234-1234-1234-123456789012"


def test_default_is_an_s3_source_that_needs_nothing() -> None:
    assert load_config(DEV).pipeline == PipelineConfig()
    assert PipelineConfig().source == "s3"


def test_codeconnections_source_from_command_line_json() -> None:
    raw = f'{{"source": "codeconnections", "connectionArn": "{ARN}", "repository": "acme/edge", "prDiffs": "false"}}'
    pipeline = load_config({**DEV, "pipeline": raw}).pipeline
    assert (pipeline.source, pipeline.connection_arn, pipeline.repository, pipeline.pr_diffs) == (
        "codeconnections",
        ARN,
        "acme/edge",
        False,
    )


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"source": "git"}, "pipeline.source"),
        ({"source": "codeconnections"}, "pipeline.connectionArn"),
        ({"source": "codeconnections", "connectionArn": ARN}, "pipeline.repository"),
        ({"source": "codeconnections", "connectionArn": ARN, "repository": "no-slash"}, "pipeline.repository"),
        ({"logRetentionDays": 10}, "pipeline.logRetentionDays"),
        ({"branch": "a..b"}, "pipeline.branch"),
        ({"sourceObjectKey": "/abs.zip"}, "pipeline.sourceObjectKey"),
        ({"unknown": 1}, "pipeline.unknown"),
    ],
)
def test_bad_pipeline_values_name_the_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config({**DEV, "pipeline": raw})
    assert key in [error.key for error in err.value.errors]
    assert all("\n" not in str(error) for error in err.value.errors)

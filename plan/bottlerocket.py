"""Where Bottlerocket pulls its own host containers from, per Region: the data-volume snapshot
builder's isolated subnet reaches that registry through a VPC endpoint, so a Region without one
cannot build the snapshot (``nodeImage.buildSnapshot``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

# Registry of Bottlerocket's host containers (admin, control: the SSM agent) per Region: the
# `ecr-prefix` map of bottlerocket-os/bottlerocket sources/api/schnauzer/src/helpers.rs (ECR_MAP),
# commercial partition. A Region missing here makes Bottlerocket pull from us-east-1, which the
# builder's subnet (no internet route) cannot reach.
BOTTLEROCKET_ECR_ACCOUNTS: Final[Mapping[str, str]] = {
    **dict.fromkeys(
        (
            "ap-northeast-1",
            "ap-northeast-2",
            "ap-northeast-3",
            "ap-south-1",
            "ap-southeast-1",
            "ap-southeast-2",
            "ca-central-1",
            "eu-central-1",
            "eu-north-1",
            "eu-west-1",
            "eu-west-2",
            "eu-west-3",
            "sa-east-1",
            "us-east-1",
            "us-east-2",
            "us-west-1",
            "us-west-2",
        ),
        "328549459982",
    ),
    "af-south-1": "917644944286",
    "ap-east-1": "375569722642",
    "ap-south-2": "764716012617",
    "ap-southeast-3": "386774335080",
    "ap-southeast-4": "731751899352",
    "ap-southeast-5": "851725293737",
    "ca-west-1": "253897149516",
    "eu-central-2": "861738308508",
    "eu-south-1": "586180183710",
    "eu-south-2": "620625777247",
    "il-central-1": "288123944683",
    "me-central-1": "553577323255",
    "me-south-1": "509306038620",
}

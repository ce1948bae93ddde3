"""The real AWS Local Zones per parent Region: a small dated table for suggestions in config errors.

A zone missing here is still accepted (`make preflight` asks EC2 which zones exist and are opted
in); the table only keeps error messages from suggesting a zone that does not exist. Plain data,
imported by ``plan.config`` and ``plan.topology``.
"""

from __future__ import annotations

from typing import Final

# From the AWS Local Zones user guide, "Available Local Zones"
# (https://docs.aws.amazon.com/local-zones/latest/ug/available-local-zones.html, linked from
# https://aws.amazon.com/about-aws/global-infrastructure/localzones/locations/), as of the date below.
LOCAL_ZONES_AS_OF: Final = "2025-06"
LOCAL_ZONES: Final[dict[str, tuple[str, ...]]] = {
    "us-west-2": (
        "us-west-2-lax-1a",
        "us-west-2-lax-1b",
        "us-west-2-den-1a",
        "us-west-2-las-1a",
        "us-west-2-phx-2a",
        "us-west-2-pdx-1a",
        "us-west-2-sea-1a",
        "us-west-2-hnl-1a",
    ),
    "us-east-1": (
        "us-east-1-atl-2a",
        "us-east-1-bos-1a",
        "us-east-1-chi-2a",
        "us-east-1-dfw-2a",
        "us-east-1-iah-2a",
        "us-east-1-mci-1a",
        "us-east-1-mia-2a",
        "us-east-1-msp-1a",
        "us-east-1-nyc-2a",
        "us-east-1-phl-1a",
        "us-east-1-qro-1a",
        "us-east-1-scl-1a",
        "us-east-1-lim-1a",
    ),
    "eu-central-1": ("eu-central-1-ham-1a", "eu-central-1-waw-1a"),
    "eu-north-1": ("eu-north-1-cph-1a", "eu-north-1-hel-1a"),
    "af-south-1": ("af-south-1-los-1a",),
    "ap-northeast-1": ("ap-northeast-1-tpe-1a",),
    "ap-south-1": ("ap-south-1-ccu-1a", "ap-south-1-del-1a"),
    "ap-southeast-1": ("ap-southeast-1-bkk-1a", "ap-southeast-1-mnl-1a"),
    "ap-southeast-2": ("ap-southeast-2-akl-1a", "ap-southeast-2-per-1a"),
    "me-south-1": ("me-south-1-mct-1a",),
}


def local_zone_hint(region: str) -> str:
    """What to suggest for a bad Local Zone name: real zones of ``region``, or that it has none."""
    zones = LOCAL_ZONES.get(region, ())
    if zones:
        return f"Local Zones of {region} such as {', '.join(zones[:4])} (AWS list of {LOCAL_ZONES_AS_OF})"
    return (
        f"none: {region} has no Local Zones (AWS list of {LOCAL_ZONES_AS_OF}; Regions with Local Zones: "
        f"{', '.join(sorted(LOCAL_ZONES))}), so set localZones=[] or pick one of those Regions"
    )

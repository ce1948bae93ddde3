"""Allowed but weaker choices, and keys with a new name: one ``warning: ...`` line each.

app.py prints them once per synth (and preflight once per run), so a config that works but
serves plain HTTP, skips authentication or uses a deprecated key says so without failing.
"""

from __future__ import annotations

from plan import contract
from plan.accelerators import ACCELERATORS, instance_families
from plan.config.models import AppConfig
from plan.config.rules import config_key
from plan.config.sections import RENAMED
from plan.model_artifacts import model_profile


def config_warnings(config: AppConfig) -> list[str]:
    """One ``warning: ...`` line per weaker choice or renamed key of ``config``."""
    warnings: list[str] = []
    for old, (new, what) in RENAMED.items():
        if getattr(config.serving, old) is not None:
            warnings.append(f"warning: serving.{config_key(old)} is deprecated: use serving.{config_key(new)} ({what})")
    if not config.tls.certificate_arn:
        warnings.append(
            "warning: no tls.certificateArn: the Region's ALB serves plain HTTP; "
            f"set tls.certificateArn to an ACM certificate of {config.region} for HTTPS"
        )
    if config.serving_local_zones and not config.tls.local_zone_secret:
        zones = ", ".join(config.serving_local_zones)
        warnings.append(
            f"warning: no tls.localZoneSecret: the Local Zone NodePorts ({zones}) serve plain HTTP; set "
            "tls.localZoneSecret to a Secrets Manager secret holding "
            f'{{"{contract.TLS_SECRET_CERTIFICATE_FIELD}": ..., "{contract.TLS_SECRET_PRIVATE_KEY_FIELD}": ...}} '
            "for HTTPS"
        )
    if config.tls.local_zone_server_name and not config.tls.local_zone_secret:
        warnings.append(
            f"warning: tls.localZoneServerName={config.tls.local_zone_server_name} without tls.localZoneSecret: "
            "no Local Zone endpoint serves TLS, so no device verifies that name"
        )
    usable = instance_families(config.accelerators, large=config.enable_large_nvidia_instances)
    for zone in config.local_zones:
        unused = [family for family in zone.instance_families if family not in usable]
        if unused:
            warnings.append(
                f"warning: localZones[{zone.name}].instanceFamilies {', '.join(unused)}: no enabled accelerator "
                f"({', '.join(config.accelerators)}) runs on them, so the zone gets no NodePool for them"
            )
    warnings += model_warnings(config) + torch_compile_warnings(config)
    if config.serving.vae == "tiny" and "neuron" in config.accelerators:
        warnings.append(
            "warning: serving.vae=tiny: neuron pods decode with the full VAE compiled into their model; "
            "nvidia and cpu pods with the tiny one"
        )
    if config.auth.mode == "none":
        warnings.append(
            "warning: auth.mode=none: anyone who can reach the endpoints can generate images; "
            "auth.mode=token requires a token from the inventory API"
        )
    return warnings


def torch_compile_warnings(config: AppConfig) -> list[str]:
    """serving.torchCompile where no pod gets the compile job's kernels: no accelerator that builds them,
    or a Local Zone whose GPUs are of another family (its pods compile their own at start)."""
    if not config.serving.torch_compile:
        return []
    kernels = {name: ACCELERATORS[name].compile.kernel_family for name in config.accelerators}
    families = {name: family for name, family in kernels.items() if family}
    if not families:
        return [
            f"warning: serving.torchCompile: no enabled accelerator ({', '.join(config.accelerators)}) runs "
            "torch.compile (nvidia does), so it changes nothing"
        ]
    return [
        f"warning: serving.torchCompile: localZones[{zone.name}] has no {family} ({'+'.join(zone.instance_families)}): "
        f"its {name} pods compile their own kernels at start, for minutes"
        for zone in config.local_zones
        for name, family in families.items()
        if any(f in ACCELERATORS[name].instance_families for f in zone.instance_families)
        and family not in zone.instance_families
    ]


def model_warnings(config: AppConfig) -> list[str]:
    """A known model (``plan.model_artifacts.MODEL_PROFILES``) served at a size it was not trained at,
    or under a licence that allows no commercial use."""
    profile = model_profile(config.model_id)
    if profile is None:
        return []
    warnings: list[str] = []
    size, served = profile.native_size, (config.serving.width, config.serving.height)
    if served != (size, size):
        warnings.append(
            f"warning: serving.width x serving.height {served[0]}x{served[1]}: {profile.title} ({config.model_id}) "
            f"was trained at {size}x{size} and gives worse images at other sizes; set both to {size}"
        )
    if profile.non_commercial:
        warnings.append(
            f"warning: modelId {config.model_id} comes under the {profile.licence}; "
            f"check that your use is allowed ({profile.card}, docs/models.md)"
        )
    return warnings

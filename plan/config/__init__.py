"""Typed configuration of the app, read once from CDK context and validated at synth time.

Values come from ``cdk.json`` ``context``, ``deployments/<name>.json`` and ``-c key=value``
overrides. Each key is one field of a frozen pydantic model with its default, bounds and
one-line description (``models``, ``sections``), from which the README's table is written
(``reference``); rules over several values are the models' validators. Every bad value of a
config is reported in one run, one line each naming the key, the value and what is allowed
(``ConfigError``, several: ``ConfigErrors``), never a traceback.

Modules: ``rules`` (checks and refusals the models use), ``sections`` and ``models`` (the
models), ``schema`` (walking them by key), ``reading`` (context and ``-c`` text), ``loading``
(validation into one-line errors), ``warnings`` and ``reference``.
"""

from __future__ import annotations

from plan.config.errors import ConfigError, ConfigErrors, raise_collected
from plan.config.loading import config_errors, load_config
from plan.config.models import DEVELOPMENT_KEY, AppConfig
from plan.config.reading import CDK_JSON, cli_context, context_keys, is_config_key
from plan.config.reference import reference_table
from plan.config.sections import (
    DEFAULT_ALB_SECURITY_POLICY,
    LOG_RETENTION_DAYS,
    AlarmsConfig,
    AuthConfig,
    LocalZoneConfig,
    NodeImageConfig,
    PipelineConfig,
    ServingConfig,
    TlsConfig,
)
from plan.config.warnings import config_warnings

__all__ = [
    "CDK_JSON",
    "DEFAULT_ALB_SECURITY_POLICY",
    "DEVELOPMENT_KEY",
    "LOG_RETENTION_DAYS",
    "AlarmsConfig",
    "AppConfig",
    "AuthConfig",
    "ConfigError",
    "ConfigErrors",
    "LocalZoneConfig",
    "NodeImageConfig",
    "PipelineConfig",
    "ServingConfig",
    "TlsConfig",
    "cli_context",
    "config_errors",
    "config_warnings",
    "context_keys",
    "is_config_key",
    "load_config",
    "raise_collected",
    "reference_table",
]

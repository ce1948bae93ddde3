"""One-line config errors: what every entry point prints for a bad value, instead of a traceback.

A line names the key (camelCase, dotted when nested), the value and what is allowed, so the user
can fix it without reading the code; several bad values are reported together, each once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line meant for the user."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"invalid config {key}={value!r}: allowed {allowed}")

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        """Each bad value (one here; several in :class:`ConfigErrors`)."""
        return (self,)

    def lines(self) -> list[str]:
        """What an entry point prints on stderr: one ``error: ...`` line per bad value."""
        return [f"error: {error}" for error in self.errors]


class ConfigErrors(ConfigError):  # noqa: N818 (a group of ConfigError, not an error kind of its own)
    """Several bad values of one config, reported together (``except ConfigError`` catches it)."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self._errors = tuple(errors)
        first = self._errors[0]
        self.key, self.value, self.allowed = first.key, first.value, first.allowed
        ValueError.__init__(self, "\n".join(str(error) for error in self._errors))

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        return self._errors


def raise_collected(errors: Iterable[ConfigError]) -> None:
    """Raise what was collected, each distinct message once: one ConfigError, or ConfigErrors."""
    unique: dict[str, ConfigError] = {}
    for error in errors:
        for one in error.errors:
            unique.setdefault(str(one), one)
    found = list(unique.values())
    if len(found) == 1:
        raise found[0]
    if found:
        raise ConfigErrors(found)

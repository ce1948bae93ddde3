"""Generation modes: steps and guidance, from text alone or from an image prompt at a strength.

A mode is what a benchmark row varies on the same loaded networks: few steps without guidance
(SD-Turbo's recipe), the guided 20-step reference, image-to-image. Spelt on the command line as
``STEPS/GUIDANCE`` or ``STEPS/GUIDANCE/STRENGTH``. Importing this module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from runtime.server.settings import Limits
from runtime.settings import InvalidValueError

LIMITS: Final = Limits()  # what a request may ask for: a mode asks for no more


@dataclass(frozen=True)
class Mode:
    """One way of making an image: ``steps`` at ``guidance``, from text alone or from an image prompt at ``strength``.

    Spelt ``STEPS/GUIDANCE`` or ``STEPS/GUIDANCE/STRENGTH`` (``1/0``, ``20/7.5``, ``20/7.5/0.5``).
    """

    steps: int
    guidance: float
    strength: float | None = None

    def __str__(self) -> str:
        text = f"{self.steps}/{self.guidance:g}"
        return text if self.strength is None else f"{text}/{self.strength:g}"

    @property
    def guided(self) -> bool:
        """diffusers runs classifier-free guidance (the UNet on twice the batch) only above 1."""
        return self.guidance > 1

    @property
    def unet_calls(self) -> int:
        """UNet calls per generation: every step, or the last steps * strength of them (diffusers' get_timesteps)."""
        return self.steps if self.strength is None else min(int(self.steps * self.strength), self.steps)

    @property
    def kind(self) -> str:
        return "text-to-image" if self.strength is None else "image-to-image"


MODE_SPELLING: Final = "STEPS/GUIDANCE or STEPS/GUIDANCE/STRENGTH"


def parse_mode(text: str) -> Mode:
    """A mode from its spelling; ValueError saying why for anything a request could not ask for."""
    parts = text.split("/")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        steps, guidance = int(parts[0]), float(parts[1])
        strength = float(parts[2]) if len(parts) == 3 else None
    except ValueError:
        raise ValueError(f"mode {text!r} is not {MODE_SPELLING}") from None
    if not LIMITS.min_steps <= steps <= LIMITS.max_steps:
        raise ValueError(f"mode {text!r}: steps must be from {LIMITS.min_steps} to {LIMITS.max_steps}")
    if not LIMITS.min_guidance <= guidance <= LIMITS.max_guidance:
        raise ValueError(f"mode {text!r}: guidance must be from {LIMITS.min_guidance:g} to {LIMITS.max_guidance:g}")
    mode = Mode(steps, guidance, strength)
    if strength is not None and not (0 < strength <= 1 and mode.unet_calls >= 1):
        raise ValueError(f"mode {text!r}: strength must be above 0 and at most 1, and steps x strength at least 1")
    return mode


def check_mode_texts(value: tuple[str, ...]) -> bool:
    """A settings check: every text a mode :func:`parse_mode` reads, else its one-line reason."""
    for text in value:
        try:
            parse_mode(text)
        except ValueError as exc:
            raise InvalidValueError(str(exc)) from None
    return True

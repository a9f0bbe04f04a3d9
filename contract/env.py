"""Environment values, parsed the same way in every component.

Entry points read the environment once and hand a mapping down; the functions here take that
mapping (or one value) and raise ``InvalidSetting``, whose message is one line naming the
variable, which each component turns into its own configuration error.
"""

from __future__ import annotations

from collections.abc import Mapping

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})
BOOL_WORDS = "true/false, yes/no, on/off or 1/0"


class InvalidSetting(ValueError):
    """A variable (or a flag standing for one) with an unusable value; ``message`` names it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def parse_bool(value: str) -> bool:
    """``True``/``1``/``yes``/``on`` and ``False``/``0``/``no``/``off``/empty, any case: never a
    truthy string (``DO_SIMULATE=False`` is false). Anything else is a ``ValueError``."""
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"expected {BOOL_WORDS}")


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    """The boolean variable ``name``; ``default`` when it is unset or empty."""
    value = env.get(name, "")
    if not value.strip():
        return default
    try:
        return parse_bool(value)
    except ValueError as exc:
        raise InvalidSetting(f"{name}={value!r}: {exc}") from None


def env_text(env: Mapping[str, str], name: str) -> str | None:
    """The variable ``name`` without surrounding blanks; None when unset or blank."""
    return env.get(name, "").strip() or None

"""Bijective parameter-name maps written as a table of templates.

A template names a key with placeholders: ``{i}`` a block index, ``{j}`` a digit, ``{p}`` the
parameter kind (weight or bias). ``KeyMap.forward`` maps the left-hand names to the right-hand
ones, ``KeyMap.inverse`` back; a key that matches no template raises ``KeyError`` naming it.
"""

from __future__ import annotations

import re

_PLACEHOLDERS = {"i": r"(?P<i>\d+)", "j": r"(?P<j>\d)", "p": r"(?P<p>weight|bias)"}


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w)\}", template)
    regex = "".join(re.escape(part) if n % 2 == 0 else _PLACEHOLDERS[part] for n, part in enumerate(parts))
    return re.compile(f"^{regex}$")


class KeyMap:
    """Rename keys between two layouts by a table of ``(left, right)`` templates."""

    def __init__(self, table: tuple[tuple[str, str], ...]) -> None:
        self.table = table
        self._left = [(_compile(a), b) for a, b in table]
        self._right = [(_compile(b), a) for a, b in table]

    @staticmethod
    def _apply(rules: list[tuple[re.Pattern[str], str]], key: str) -> str:
        for pattern, template in rules:
            m = pattern.match(key)
            if m:
                return template.format(**m.groupdict())
        raise KeyError(key)

    def forward(self, key: str) -> str:
        return self._apply(self._left, key)

    def inverse(self, key: str) -> str:
        return self._apply(self._right, key)

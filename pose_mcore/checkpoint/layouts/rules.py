"""Conversion rules between parameter layouts, written as templates.

A :class:`Rule` turns a group of source tensors into a group of target tensors: a rename (one to
one, unchanged), a split (one fused tensor into parts) or a concatenation (parts into one), or any
function of the group. Templates name keys with placeholders: ``{i}`` a block index, ``{j}`` a
digit, ``{p}`` the parameter kind (weight or bias). A rule matches a source key by its first source
template; the other keys of its group follow from the placeholders. Every rule has an inverse, so
one table serves import and export, and a round trip gives back the same tensors bit for bit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

_PLACEHOLDERS = {"i": r"(?P<i>\d+)", "j": r"(?P<j>\d)", "p": r"(?P<p>weight|bias)"}

Transform = Callable[[list[torch.Tensor], Any], list[torch.Tensor]]


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w)\}", template)
    regex = "".join(re.escape(part) if n % 2 == 0 else _PLACEHOLDERS[part] for n, part in enumerate(parts))
    return re.compile(f"^{regex}$")


def _identity(tensors: list[torch.Tensor], cfg: Any) -> list[torch.Tensor]:
    return tensors


@dataclass(frozen=True)
class Rule:
    """``dst = fn(src, cfg)`` and ``src = inv(dst, cfg)`` for groups of keys given by templates."""

    src: tuple[str, ...]
    dst: tuple[str, ...]
    fn: Transform = _identity
    inv: Transform = _identity
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", _compile(self.src[0]))

    def inverted(self) -> Rule:
        return Rule(self.dst, self.src, self.inv, self.fn)

    def bind(self, key: str) -> tuple[list[str], list[str]] | None:
        """(source keys, target keys) of the group that ``key`` opens, or None."""
        m = self.pattern.match(key)
        if m is None:
            return None
        names = m.groupdict()
        return [t.format(**names) for t in self.src], [t.format(**names) for t in self.dst]


def rename(src: str, dst: str) -> Rule:
    return Rule((src,), (dst,))


def split_equal(src: str, dst: Sequence[str]) -> Rule:
    """One tensor split into equal parts along dim 0 (a fused qkv), and back."""
    n = len(dst)
    return Rule((src,), tuple(dst), lambda t, cfg: list(t[0].chunk(n)), lambda t, cfg: [torch.cat(t)])


def concat(src: Sequence[str], dst: str, sizes: Callable[[Any], list[int]]) -> Rule:
    """Parts concatenated along dim 0 into one tensor, and split back by ``sizes(cfg)``."""
    return Rule(tuple(src), (dst,), lambda t, cfg: [torch.cat(t)], lambda t, cfg: list(t[0].split(sizes(cfg))))


@dataclass
class Plan:
    """Which rule converts which keys; keys no rule places, and keys a matched group lacks."""

    groups: list[tuple[Rule, list[str], list[str]]]
    unplaced: list[str]
    missing: list[str]


def plan(rules: Sequence[Rule], keys: Iterable[str]) -> Plan:
    """Match every key of a state dict against ``rules``."""
    keys = list(keys)
    available = set(keys)
    used: set[str] = set()
    groups, missing = [], []
    for key in keys:
        if key in used:
            continue
        for rule in rules:
            bound = rule.bind(key)
            if bound is None:
                continue
            src, dst = bound
            lacking = [k for k in src if k not in available]
            if lacking:
                missing.extend(lacking)
            else:
                groups.append((rule, src, dst))
                used.update(src)
            break
    unplaced = [k for k in keys if k not in used and k not in missing]
    return Plan(groups, unplaced, sorted(set(missing)))


def apply_rules(rules: Sequence[Rule], state: Mapping[str, torch.Tensor], cfg: Any = None) -> dict[str, torch.Tensor]:
    """Convert an in-memory state dict; raise ``KeyError`` naming keys that cannot be placed."""
    p = plan(rules, state)
    if p.unplaced or p.missing:
        raise KeyError(f"cannot convert: unplaced keys {p.unplaced[:20]}, missing keys {p.missing[:20]}")
    out = {}
    for rule, src, dst in p.groups:
        out.update(zip(dst, rule.fn([state[k] for k in src], cfg), strict=True))
    return out


def invert(rules: Sequence[Rule]) -> list[Rule]:
    return [r.inverted() for r in rules]

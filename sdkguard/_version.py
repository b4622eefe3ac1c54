"""sdkguard's version, and the anthropic versions it supports (light: loaded with sdkguard)."""

from __future__ import annotations

import re

__version__ = "0.1.0"

ANTHROPIC_REQUIREMENT = "anthropic >= 0.93, < 3"
"""The SDK versions sdkguard supports (as in `pyproject.toml`)."""

_CLAUSE = re.compile(r"(>=|<=|==|!=|~=|>|<)\s*([0-9][0-9A-Za-z.*+!-]*)")


def satisfies(version: str, requirement: str) -> bool | None:
    """Whether `version` meets the clauses of `requirement` ("anthropic>=0.93,<3"); None when
    a clause is not understood. Compares release numbers only (pre-releases as their release).
    """
    clauses = requirement.split("anthropic", 1)[-1]
    release = _release(version)
    if release is None:
        return None
    for clause in filter(None, (c.strip() for c in clauses.split(","))):
        match = _CLAUSE.fullmatch(clause)
        if match is None:
            return None
        op, ref = match[1], match[2]
        wildcard = ref.endswith(".*")
        bound = _release(ref[:-2] if wildcard else ref)
        if bound is None:
            return None
        if wildcard and op in ("==", "!="):
            equal = release[: len(bound)] == bound
            if equal != (op == "=="):
                return False
            continue
        width = max(len(release), len(bound))
        mine = release + (0,) * (width - len(release))
        theirs = bound + (0,) * (width - len(bound))
        ok = {
            ">=": mine >= theirs,
            "<=": mine <= theirs,
            ">": mine > theirs,
            "<": mine < theirs,
            "==": mine == theirs,
            "!=": mine != theirs,
            "~=": mine >= theirs and release[: len(bound) - 1] == bound[:-1],
        }[op]
        if not ok:
            return False
    return True


def _release(version: str) -> tuple[int, ...] | None:
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    return tuple(int(part) for part in match[1].split(".")) if match else None

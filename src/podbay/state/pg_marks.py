"""The JSON comments podbay writes on the databases and roles it makes (COMMENT ON ...): what a later process
needs to know of them (a pod's id, template and policy; a spare's source), with a key that tells them from
anything else on an external server."""

from __future__ import annotations

import json
from typing import Any

_MARK = "podbay"


def from_podbay(**fields: object) -> str:
    return json.dumps({_MARK: 1, **fields}, sort_keys=True)


def from_podbay_comment(comment: str | None) -> dict[str, Any] | None:
    """The fields of a comment podbay wrote; None for any other comment (or none)."""
    if not comment:
        return None
    try:
        value = json.loads(comment)
    except ValueError:
        return None
    return value if isinstance(value, dict) and value.get(_MARK) == 1 else None

"""The committed OpenAPI document, `docs/openapi.json`: generated from the app, never written by hand.

    python -m podbay.server.openapi            # rewrite docs/openapi.json (run from the repository root)
    python -m podbay.server.openapi --check    # exit 1 if the committed document differs from the code

tests/unit/test_openapi.py fails when they drift apart, and tests/unit/test_server_schemathesis.py runs
schemathesis over the committed document.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("docs/openapi.json")
REGENERATE = "python -m podbay.server.openapi"


def document() -> dict[str, Any]:
    """The app's OpenAPI document (made without starting it: no platform, no registry)."""
    from podbay.server.app import create_app

    found: dict[str, Any] = create_app().openapi()
    return found


def render(doc: dict[str, Any] | None = None) -> str:
    """Pretty-printed, keys sorted, one trailing newline: stable across runs, readable in a diff."""
    return json.dumps(document() if doc is None else doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    rest = [arg for arg in args if arg != "--check"]
    if len(rest) > 1 or any(arg.startswith("-") for arg in rest):
        print(f"usage: {REGENERATE} [--check] [PATH] (default {DEFAULT_PATH})", file=sys.stderr)
        return 2
    path = Path(rest[0]) if rest else DEFAULT_PATH
    text = render()
    if check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            print(f"{path} is out of date with the code; run `{REGENERATE}` and commit it", file=sys.stderr)
            return 1
        return 0
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

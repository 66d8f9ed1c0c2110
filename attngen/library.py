"""The bundled pattern library (`patterns/*.attn`, shipped inside the wheel)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from attngen.errors import PatternError, did_you_mean


def files() -> dict[str, Path]:
    root = resources.files("attngen.patterns")
    return {p.name[:-5]: Path(str(p)) for p in root.iterdir() if p.name.endswith(".attn")}


def find(name: str) -> Path:
    found = files()
    if name not in found:
        raise PatternError(f"no file `{name}` and no bundled pattern of that name", None,
                           did_you_mean(name, set(found)))
    return found[name]

"""README tells the truth about the command line: its table of defaults equals the parser's."""
from __future__ import annotations

import re
from pathlib import Path

from attngen import cli

README = Path(__file__).resolve().parents[1] / "README.md"
ROW = re.compile(r"^\| `attngen (\w+)` \| `(--[\w-]+)` \| ([^|]+) \|$")


def documented_defaults() -> list[tuple[str, str, str]]:
    return [m.groups() for line in README.read_text(encoding="utf-8").splitlines()
            if (m := ROW.match(line.strip()))]


def parser_default(command: str, option: str):
    subs = next(a for a in cli.build_parser()._actions
                if a.__class__.__name__ == "_SubParsersAction")
    for action in subs.choices[command]._actions:
        if option in action.option_strings:
            return action.default
    raise AssertionError(f"`attngen {command}` has no option {option}")


def as_text(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def test_the_readme_documents_defaults():
    rows = documented_defaults()
    assert len(rows) >= 10, "README's table of defaults is missing or unparsed"
    assert {c for c, _, _ in rows} == {"search", "eval", "demo"}


def test_each_documented_default_is_the_parsers():
    wrong = [f"attngen {c} {o}: README {d.strip()!r}, parser {as_text(parser_default(c, o))!r}"
             for c, o, d in documented_defaults()
             if d.strip() != as_text(parser_default(c, o))]
    assert not wrong, "\n".join(wrong)


def test_the_showcase_pictures_show_their_pattern(capsys):
    """The README's `show` examples run at sizes where the pattern is not plain causal."""
    lines = [line for line in README.read_text(encoding="utf-8").splitlines()
             if line.startswith("$ attngen show") and " --n " in line and ".attn" not in line]
    assert len(lines) >= 3
    for line in lines:
        argv = line[2:].split("#")[0].split()[1:]
        argv = [a for a in argv if not a.endswith(".png") and a != "--png"]
        command = " ".join(argv)
        args = [a.strip('"') for a in re.findall(r'"[^"]*"|\S+', command)]
        assert cli.main(args) == 0, line
        out = capsys.readouterr().out
        density = re.search(r"density\s+([\d.]+)", out)
        assert density and float(density.group(1)) < 0.9, f"{line}: {density}"

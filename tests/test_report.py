"""report.md tables: pattern text with `|` stays in its cell, whole."""
import re

from attngen.profile.evaluate import MethodResult
from attngen.profile.report import _method_table

LONG = ("heads { 0..7: causal; 8..15: causal & (sink(128) | local(4096)); "
        "*: causal & (local(1024) | strided(128)) }")


def test_pattern_cells_escape_bars_and_keep_the_whole_text():
    results = [MethodResult("dense", "causal", {512: 1.0}, ppl=10.0),
               MethodResult("plan | searched", LONG, {512: 0.3}, ppl=10.5)]
    table = _method_table(results)
    rows = [line for line in table.splitlines() if line.startswith("|")]
    cells = [len(re.split(r"(?<!\\)\|", row)) for row in rows]
    assert len(set(cells)) == 1, table  # every row has the header's columns
    assert LONG.replace("|", "\\|") in table and "..." not in table

"""The command line (`attngen show | layout | demo`), called in process through `main`."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch

import attngen
from attngen import library
from attngen.cli import main
from attngen.viz import block_density

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


# -- show ----------------------------------------------------------------------------------
def test_show_small_draws_the_mask(capsys):
    rc, out, err = run(capsys, "show", "causal & (sink(2) | local(3))", "--n", "8")
    assert rc == 0 and not err
    p = attngen.parse("causal & (sink(2) | local(3))")
    assert f"pattern    {p}" in out
    mask = p.mask(8, 8)[0]
    rows = ["".join("#" if a else "." for a in row) for row in mask.tolist()]
    assert "\n".join(rows) in out
    assert f"density    {p.density(8, 8):.4f}" in out
    assert "ranges" in out and "plan for" in out


def test_show_readme_example(capsys):
    rc, out, _ = run(capsys, "show", "causal & (sink(128) | local(4096))", "--n", "32")
    assert rc == 0
    assert "causal & (local(4096) | sink(128))" in out
    assert "#" * 32 in out and "density    1.0000" in out


def test_show_large_draws_blocks_and_counts(capsys):
    rc, out, _ = run(capsys, "show", "streaming", "--name", "streaming_llm", "--n", "4096",
                     "--block", "128")
    assert rc == 0
    p = attngen.load("streaming", "streaming_llm")
    lay = attngen.layout(p, 4096, 4096, block=128)
    partial, full = lay.block_counts()
    assert str(p) in out and "local(2000)" in out
    assert "█" in out and "▒" in out and "·" in out
    assert len([line for line in out.splitlines() if set(line) <= set("█▒·") and line]) == 32
    assert f"density    {lay.density():.4f}" in out
    assert f"{partial} partial + {full} full" in out
    assert f"block density {block_density(lay):.2%}" in out
    assert "ranges" in out


def test_show_too_many_blocks_for_a_picture(capsys):
    rc, out, _ = run(capsys, "show", "causal & local(1024)", "--n", "65536", "--block", "128")
    assert rc == 0 and "too many for the terminal" in out and "█" not in out


def test_show_strategies(capsys):
    rc, out, _ = run(capsys, "show", "sparse_transformer", "--n", "2048")
    assert rc == 0 and "ranges   local(128)" in out
    assert "permutation mod 128 causal & strided(128) - local(128)" in out
    rc, out, _ = run(capsys, "show", "power", "--n", "2048")
    assert rc == 0 and "table" in out
    rc, out, _ = run(capsys, "show", "minference", "--n", "2048")
    assert rc == 0 and "dynamic" in out and "density    " not in out


def test_show_file_with_name_and_mixture_heads(capsys, tmp_path):
    path = tmp_path / "mine.attn"
    path.write_text("def win(w=16) = local(w)\n"
                    "def layer() = heads { 0..1: causal; *: win() }\n")
    rc, out, _ = run(capsys, "show", str(path), "--name", "win", "--n", "256")
    assert rc == 0 and "pattern    local(16)" in out
    rc, out, _ = run(capsys, "show", str(path), "--n", "256")
    assert rc == 0 and "heads=3" in out  # 0..1 and one head for `*`
    assert "heads 0..1:" in out and "head 2:" in out


def test_show_document_uses_illustrative_ids(capsys):
    rc, out, _ = run(capsys, "show", "document", "--n", "1024", "--docs", "2")
    assert rc == 0 and "2 equal documents" in out
    ids = torch.arange(1024) * 2 // 1024
    lay = attngen.layout(attngen.load("document"), 1024, 1024, block=64, doc_ids=ids)
    assert f"density    {lay.density():.4f}" in out


def test_show_png(capsys, tmp_path):
    png = tmp_path / "sub" / "a.png"
    rc, out, _ = run(capsys, "show", "streaming", "--name", "a_shape", "--n", "1024",
                     "--png", str(png))
    assert rc == 0 and str(png) in out
    assert_png(png)


# -- layout --------------------------------------------------------------------------------
def test_layout_stats_and_out_match_to_flex(capsys, tmp_path):
    text = "heads { 0: causal & (sink(64) | local(200)); *: causal & strided(64) }"
    out_file = tmp_path / "lay.pt"
    rc, out, _ = run(capsys, "layout", text, "--n", "1000", "--m", "700", "--block", "64",
                     "--heads", "3", "--out", str(out_file))
    assert rc == 0
    p = attngen.parse(text)
    lay = attngen.layout(p, 700, 1000, block=64, heads=3)
    assert "head 0:" in out and "heads 1..2:" in out
    for i in range(len(lay.nodes)):
        part, full = lay.partial[i].counts, lay.full[i].counts
        total = part + full
        assert (f"{int(total.sum())}   {int(total.min())} / {total.mean():.2f} / "
                f"{int(total.max())}") in out
    saved = torch.load(out_file)
    for name, tensor in lay.to_flex().items():
        assert torch.equal(saved[name], tensor), name
    assert torch.equal(saved["classes"], lay.classes())
    assert saved["pattern"] == str(p) and saved["block"] == (64, 64)


def test_layout_rectangular_block(capsys):
    rc, out, _ = run(capsys, "layout", "causal", "--n", "512", "--block", "128x64")
    assert rc == 0 and "block=128x64" in out and "4 query blocks x 8 kv blocks" in out


# -- demo ----------------------------------------------------------------------------------
def test_demo(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, "demo", "--skip-profiler")  # the profiler: test_profile_cli
    assert rc == 0 and "Traceback" not in err
    for stem in library.files():
        assert f"== {stem}.attn" in out
        assert str(attngen.load(stem)) in out
    assert out.count("plan for") >= len(library.files()) - 1  # document has no plan yet
    assert "ranges" in out and "table" in out and "dynamic" in out
    assert "█" in out
    # the A-shape kernel was generated, run, and agrees with the reference
    err = re.search(r"max \|out - reference\| = ([0-9.e+-]+)", out)
    assert err is not None and float(err.group(1)) <= 1e-4, out[-800:]
    assert "kernel.py" in out
    png = tmp_path / "attngen-demo" / "a_shape.png"
    assert str(png) in out
    assert_png(png)


# -- help and errors -----------------------------------------------------------------------
@pytest.mark.parametrize("argv", [[], ["show"], ["layout"], ["demo"], ["search"], ["eval"]])
def test_help_has_an_example(capsys, argv):
    rc, out, _ = run(capsys, *argv, "--help")
    assert rc == 0 and "example" in out and "attngen" in out


@pytest.mark.parametrize("argv, message", [
    (["show", "loacl(4)"], "<pattern>:1:1: error: unknown pattern `loacl`"),
    (["show", "causal & local(0)"], "<pattern>:1:16: error: local: w = 0"),
    (["show", "streamin"], "did you mean `streaming`?"),
    (["show", "missing.attn"], "no such file: missing.attn"),
    (["show", "causal", "--n", "0"], "--n must be at least 1"),
    (["show", "causal", "--block", "0"], "expected a block size"),
    (["layout", "causal"], "the following arguments are required: --n"),
    (["layout", "longlora", "--n", "64", "--heads", "4"], "head index 7 is out of range"),
    (["layout", "minference", "--n", "64"], "input-dependent"),
    ([], "usage: attngen"),
])
def test_errors_exit_2_without_traceback(capsys, argv, message):
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert message in err
    assert "Traceback" not in err + out


def test_pattern_error_shows_the_caret(capsys):
    rc, _, err = run(capsys, "show", "causal &\n  loacl(4)")
    assert rc == 2
    assert err.splitlines()[:3] == ["<pattern>:2:3: error: unknown pattern `loacl`",
                                    "    loacl(4)", "    ^^^^^"]


@pytest.mark.slow
def test_python_m_attngen_error_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "attngen", "show", "loacl(4)"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error: unknown pattern `loacl`" in result.stderr and "^^^^^" in result.stderr


# -- hardening (issue 16): no traceback for any bad argument or file ---------------------------
@pytest.fixture
def files(tmp_path):
    torch.save([1, 2], tmp_path / "notatorch.pt")
    torch.save({"k": torch.zeros(1, 1, 4, 4)}, tmp_path / "noq.pt")
    (tmp_path / "garbage.pt").write_text("hello")
    (tmp_path / "dir").mkdir()
    return tmp_path


@pytest.mark.parametrize("argv, status, message", [
    (["bench", "--lengths", "64"], 1, "needs a CUDA GPU"),
    (["layout", "causal", "--n", "64", "--out", "{tmp}/dir"], 2, "is a directory"),
    (["layout", "causal", "--n", "64", "--out", "{tmp}/garbage.pt/x.pt"], 1, "garbage.pt"),
    (["compile", "causal", "--device", "cuda"], 1, "no CUDA device"),
    (["compile", "causal", "--device", "tpu"], 2, "--device must be cpu or cuda"),
    (["compile", "causal", "--heads", "0"], 2, "--heads must be at least 1"),
    (["compile", "causal", "--head-dim", "-8"], 2, "--head-dim must be at least 1"),
    (["compile", "causal", "--heads", "4", "--kv-heads", "3"], 2, "not a multiple"),
    (["show", "vertical_slash(4, 4)", "--n", "16", "--inputs", "{tmp}/notatorch.pt"], 2,
     "must be tensors"),
    (["show", "vertical_slash(4, 4)", "--n", "16", "--inputs", "{tmp}/noq.pt"], 2,
     "has keys ['k']"),
    (["show", "vertical_slash(4, 4)", "--n", "16", "--inputs", "{tmp}/garbage.pt"], 2,
     "is not a torch.save file"),
    (["show", "vertical_slash(4, 4)", "--n", "16", "--inputs", "{tmp}/nosuch.pt"], 2,
     "no such file"),
    (["show", "vertical_slash(4, 4)", "--n", "16", "--head-dim", "0"], 2,
     "--head-dim must be at least 1"),
    (["show", "vertical_slash(4, 4)", "--n", "16", "--head-dim", "-3"], 2,
     "--head-dim must be at least 1"),
    (["show", "causal", "--n", "16", "--heads", "4", "--kv-heads", "3"], 2, "not a multiple"),
    (["show", "causal", "--n", "2147483648"], 2, "ATTNGEN_MAX_LENGTH"),
    (["show", "local(4)", "--n", "64", "--heads", "100000000"], 2, "ATTNGEN_MAX_HEADS"),
    (["show", "heads { 0..999999999: local(4); *: causal }"], 2, "pass --heads"),
    (["layout", "causal", "--n", "100000", "--block", "1"], 2, "ATTNGEN_MAX_BLOCKS"),
    (["layout", "causal", "--n", "65536", "--block", "64", "--heads", "256", "--out",
      "{tmp}/big.pt"], 2, "ATTNGEN_MAX_MASK_ELEMENTS"),
    (["show", "where(q // (q - k) == 0)", "--n", "16"], 2, "division by zero"),
    (["show", "{tmp}/missing.attn"], 2, "no such file"),
    (["show", "{tmp}/dir/x.attn"], 2, "no such file"),
    (["eval", "--plan", "{tmp}/noplan.json"], 2, "noplan.json"),
])
def test_bad_arguments_give_a_message_and_a_status(capsys, monkeypatch, files, argv, status,
                                                    message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc, out, err = run(capsys, *[a.replace("{tmp}", str(files)) for a in argv])
    assert (rc, "Traceback" in out + err) == (status, False), err
    assert message in err


@pytest.mark.parametrize("where", [0, 3])
def test_debug_shows_the_traceback(capsys, where):
    argv = ["show", "where(q % (M - N) == 0)", "--n", "8"]
    rc, _, err = run(capsys, *argv[:where], "--debug", *argv[where:])
    assert rc == 2 and "Traceback" in err and "division by zero" in err


def test_unexpected_errors_exit_1_without_traceback(capsys, monkeypatch):
    def broken(*args, **kw):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(attngen, "layout", broken)
    rc, _, err = run(capsys, "layout", "causal", "--n", "8")
    assert rc == 1 and "Traceback" not in err
    assert "RuntimeError: something inside broke" in err and "--debug" in err


def test_density_that_is_too_dear_is_skipped(capsys):
    rc, out, err = run(capsys, "layout", "causal", "--n", "4194304", "--block", "4096")
    assert rc == 0 and "density    not computed: the exact count would evaluate" in out


@pytest.mark.parametrize("target, written", [("dir", "dir/pattern.png"), ("pic", "pic.png"),
                                             ("pic.png", "pic.png")])
def test_png_goes_where_it_says(capsys, tmp_path, target, written):
    (tmp_path / "dir").mkdir()
    rc, out, _ = run(capsys, "show", "causal", "--n", "8", "--png", str(tmp_path / target))
    assert rc == 0 and f"wrote      {tmp_path / written}\n" in out
    assert_png(tmp_path / written)


@pytest.mark.parametrize("command", [["search", "tiny-llama"], ["demo"]])
@pytest.mark.parametrize("density", ["1.5", "0", "-0.2", "abc"])
def test_density_budget_outside_zero_one_is_a_usage_error(command, density, capsys):
    assert main([*command, "--density", density]) == 2
    assert "--density" in capsys.readouterr().err


def test_show_prints_the_useful_work_of_the_plan(capsys):
    # causal at N = 256 with 64-blocks: 10 visited blocks of 4096 pairs, 256·257/2 allowed
    assert main(["show", "causal", "--n", "256", "--block", "64"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if "useful work" in x][0]
    assert line.strip() == "useful work 80.3%: 32896 allowed pairs of the 40960 its blocks compute"
    assert main(["show", "vertical_slash(8, 16)", "--n", "256"]) == 0
    assert "useful work: known at run time" in capsys.readouterr().out

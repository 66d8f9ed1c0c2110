"""Pictures of patterns: ASCII for terminals, PNG (matplotlib, Agg) for files.

    p = attngen.parse("causal & (sink(64) | local(256))")
    print(ascii_mask(p, 16, 16))                                # one character per (q, k)
    print(ascii_blocks(attngen.layout(p, 1024, 1024, block=64)))  # one per block
    save_png(p, 2048, 2048, 64, "a_shape.png")

Element-level pictures come from `pattern.mask`, so they are for small sizes only: the PNG
draws the element mask only while M·N ≤ MAX_PIXELS and the block classes only while
QB·KB ≤ MAX_PIXELS; nothing here materialises a large dense mask.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from attngen.dsl.builders import causal
from attngen.ir.pattern import Pattern
from attngen.lower import BlockLayout, layout

MAX_PIXELS = 1 << 22  # 2048 × 2048: the largest element mask or block grid a PNG draws
MAX_PNG_ROWS = 8  # distinct head patterns drawn in one PNG
BLOCK_CHARS = "·▒█"  # empty, partial, full: indexed by the values of BlockLayout.classes()
ASCII_BLOCK_CHARS = ".+#"  # the same for terminals that cannot print the ones above
COLOURS = ("#ffffff", "#9ecae1", "#08519c")  # empty, partial, full


def heads_text(heads: list[int]) -> str:
    """[0, 1, 2, 5] → "heads 0..2, 5"; [3] → "head 3"."""
    parts, start = [], heads[0]
    for a, b in zip(heads, heads[1:] + [None]):
        if b != a + 1:
            parts.append(str(start) if start == a else f"{start}..{a}")
            start = b
    return ("heads " if len(heads) > 1 else "head ") + ", ".join(parts)


def _grouped(pictures: list[str]) -> str:
    """Each distinct picture once, labelled with its heads when there is more than one head."""
    if len(pictures) == 1:
        return pictures[0]
    groups: dict[str, list[int]] = {}
    for h, pic in enumerate(pictures):
        groups.setdefault(pic, []).append(h)
    return "\n".join(f"{heads_text(hs)}:\n{pic}" for pic, hs in groups.items())


def _draw(table: np.ndarray, chars: str) -> str:
    lut = np.array(list(chars))
    return "\n".join("".join(row) for row in lut[table.astype(np.int64)])


def ascii_mask(pattern: Pattern, M: int, N: int | None = None, heads: int = 1,
               kv_heads: int | None = None, doc_ids=None) -> str:
    """Rows of `#` (allowed) and `.` (masked): one row per query, one column per key.
    Heads with the same mask are drawn once. Meant for N up to a terminal's width."""
    N = M if N is None else N
    mask = pattern.mask(M, N, heads=heads, kv_heads=kv_heads, doc_ids=doc_ids).numpy()
    return _grouped([_draw(m, ".#") for m in mask])


def ascii_blocks(lay: BlockLayout, chars: str = BLOCK_CHARS) -> str:
    """One character per (query block, kv block): `█` full, `▒` partial, `·` empty.
    Heads with the same layout are drawn once."""
    return _grouped([_draw(c, chars) for c in lay.classes().numpy()])


def mask_classes(mask: np.ndarray, BM: int, BN: int) -> np.ndarray:
    """Block classes [QB, KB] of an element mask [M, N]: 0 empty, 1 partial, 2 full (out of
    range elements count as allowed for fullness, as in BlockLayout)."""
    M, N = mask.shape
    QB, KB = -(-M // BM), -(-N // BN)
    padded = np.zeros((QB * BM, KB * BN), dtype=np.int8)
    padded[:M, :N] = mask
    inside = np.zeros_like(padded)
    inside[:M, :N] = 1
    tiles = (QB, BM, KB, BN)
    some = padded.reshape(tiles).any((1, 3))
    every = (padded | (1 - inside)).reshape(tiles).all((1, 3))
    return np.where(every & some, 2, np.where(some, 1, 0))


def causal_blocks(lay: BlockLayout) -> int:
    """Blocks a causal kernel visits on the same grid, over all heads (at least 1): the
    denominator of block density."""
    g = lay.grid
    partial, full = layout(causal, g.M, g.N, block=(g.BM, g.BN)).block_counts()
    return max(1, partial + full) * lay.heads


def block_density(lay: BlockLayout) -> float:
    """Non-empty blocks (partial + full) ÷ the blocks of a causal kernel on the same grid."""
    return sum(lay.block_counts()) / causal_blocks(lay)


def save_png(pattern: Pattern, M: int, N: int | None = None, block: int | tuple[int, int] = 64,
             path: str | Path = "pattern.png", heads: int = 1, kv_heads: int | None = None,
             doc_ids=None) -> Path:
    """Draw the element mask (when M·N ≤ MAX_PIXELS) and the block classes side by side,
    one row per distinct head pattern (at most MAX_PNG_ROWS rows), titled with the pattern,
    its density and its block density. Returns the path written."""
    N = M if N is None else N
    lay = layout(pattern, M, N, block=block, heads=heads, kv_heads=kv_heads, doc_ids=doc_ids)
    g = lay.grid
    rows: dict[int, list[int]] = {}  # distinct head pattern (index into lay.nodes) → heads
    for h, i in enumerate(lay.head_index.tolist()):
        rows.setdefault(i, []).append(h)
    rows = dict(list(rows.items())[:MAX_PNG_ROWS])
    masks = ({i: Pattern(lay.nodes[i]).mask(M, N, doc_ids=doc_ids)[0].numpy() for i in rows}
             if M * N <= MAX_PIXELS else None)
    classes = ({i: lay.pattern_classes(i) for i in rows} if g.QB * g.KB <= MAX_PIXELS
               else None)
    partial, full = lay.block_counts()
    title = "\n".join(textwrap.wrap(str(pattern), 110)[:6])
    title += (f"\nM={M}  N={N}  heads={heads}   density {lay.density():.4f} of causal"
              f"\nblocks {g.BM}x{g.BN}: {partial} partial + {full} full = "
              f"{block_density(lay):.2%} of causal blocks")
    panels = [(f"{heads_text(hs)}: " if heads > 1 else "",
               lay.nodes[i].text if pattern.is_mixture else None,
               None if masks is None else masks[i],
               None if classes is None else classes[i]) for i, hs in rows.items()]
    return save_panels(panels, title, (g.BM, g.BN), path)


def save_panels(rows: list[tuple[str, str | None, np.ndarray | None, np.ndarray | None]],
                title: str, block: tuple[int, int], path: str | Path) -> Path:
    """One figure row per entry (label, note, element mask [M, N] or None, block classes
    [QB, KB] or None): the mask and the blocks side by side."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    panels = [name for name, present in (("mask", rows[0][2] is not None),
                                         ("blocks", rows[0][3] is not None)) if present]
    if "mask" not in panels:
        title += f"   (element mask not drawn: M·N > {MAX_PIXELS})"
    ncols = max(1, len(panels))
    size = (max(8.0, 4.6 * ncols), 4.4 * len(rows) + 1.6)
    fig, axes = plt.subplots(len(rows), ncols, figsize=size,
                             squeeze=False, layout="constrained")
    for r, (label, note, mask, classes) in enumerate(rows):
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            if panel == "mask":
                ax.imshow(mask, cmap=ListedColormap([COLOURS[0], COLOURS[2]]), vmin=0,
                          vmax=1, interpolation="nearest", aspect="auto")
                ax.set(title=f"{label}mask {mask.shape[0]}x{mask.shape[1]}", xlabel="key k",
                       ylabel="query row i")
            else:
                ax.imshow(classes, cmap=ListedColormap(COLOURS), vmin=0, vmax=2,
                          interpolation="nearest", aspect="auto")
                ax.set(title=f"{label}blocks {classes.shape[0]}x{classes.shape[1]} of "
                       f"{block[0]}x{block[1]}", xlabel="kv block", ylabel="query block")
            ax.title.set_fontsize(9)
        if note:  # name each row's own pattern
            axes[r][0].annotate(textwrap.shorten(note, 100), (0, 1.1),
                                xycoords="axes fraction", fontsize=7)
        if not panels:
            axes[r][0].axis("off")
            axes[r][0].text(0.5, 0.5, "too large to draw", ha="center", va="center")
    fig.suptitle(title, fontsize=8)
    fig.legend(handles=[Patch(facecolor=COLOURS[2], label="full / allowed"),
                        Patch(facecolor=COLOURS[1], label="partial"),
                        Patch(facecolor=COLOURS[0], edgecolor="#888888", label="empty / masked")],
               loc="outside lower center", ncol=3, fontsize=8)
    path = png_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def png_path(path: str | Path) -> Path:
    """Where a picture asked for at `path` goes: into a directory as pattern.png, and with a
    .png suffix when it has none (matplotlib would add it silently)."""
    path = Path(path)
    if path.is_dir():
        return path / "pattern.png"
    return path if path.suffix else path.with_name(path.name + ".png")

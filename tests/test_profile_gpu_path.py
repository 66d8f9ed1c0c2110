"""The profiler's long-context path, checked on the CPU: chunked scoring equals the whole
[heads, rows, N] computation it replaced, row-chunk masks equal the patterns' masks and
the estimators', the chunked plan forward equals the integration's masked attention, and
`attngen search` takes --device/--dtype and a named random-weight shape."""
import json
import math
import random

import numpy as np
import pytest
import torch
import transformers

import attngen
from attngen.cli import main
from attngen.integrations import hf
from attngen.integrations.masks import MaskCache, head_mask
from attngen.integrations.plan import ModelPlan, read_plan
from attngen.profile.candidates import candidates
from attngen.profile.data import RandomTokens
from attngen.profile.model import named_model, resolve_device
from attngen.profile.rowmask import RowMask
from attngen.profile.runner import chunked_attention
from attngen.profile.scoring import HeadScorer, static_density
from attngen.runtime.dynamic import allowed

L = 300  # odd sizes: not a multiple of any block or chunk


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    return transformers.LlamaForCausalLM(config).eval()


def _ids(n: int, seed: int = 3) -> list[int]:
    return torch.randint(0, 101, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def unchunked_scores(model, cands, ids, scorer) -> dict[str, np.ndarray]:
    """The computation scoring did before it was chunked: per layer the whole [H, R, N]
    probabilities, each candidate's rows cut from its full mask (integrations.masks), the
    q/k/v recorded by the HF integration."""
    rows, weights = scorer._rows, scorer._weights.float()
    H = model.config.num_attention_heads
    out = {name: np.zeros((len(scorer.modules), H, len(cands), 2))
           for name in ("loss", "loss_sq", "recall")}
    out["density"] = np.zeros((len(scorer.modules), H, len(cands)))
    masks = MaskCache()

    def record(layer, query, key, value):
        module = scorer.modules[layer]
        _, H, M, D = query.shape
        N, group = key.shape[2], H // key.shape[1]
        k, v = key[0].repeat_interleave(group, 0), value[0].repeat_interleave(group, 0)
        scale = module.scaling
        causal = torch.arange(N)[None, :] <= (rows + N - M)[:, None]
        probs = torch.softmax((query[0, :, rows] @ k.transpose(1, 2) * scale)
                              .masked_fill(~causal, -math.inf), dim=-1)
        dense = probs @ v
        w_o = module.o_proj.weight.view(-1, H, D)
        residual = scorer._residual[layer]
        for c, cand in enumerate(cands):
            if cand.dynamic:
                mask = head_mask(cand.pattern.node, query[0], k, masks, scale, rows=rows)
            else:
                mask = torch.as_tensor(cand.pattern.mask(M, N)[0])[rows][None]
            kept = probs * mask
            mass = kept.sum(-1)
            shift = torch.einsum("hrd,ehd->hre", (kept @ v) / mass[..., None] - dense,
                                 w_o).norm(dim=-1)
            out["loss"][layer, :, c] = (shift @ weights / residual).numpy()
            out["loss_sq"][layer, :, c] = (shift.square() @ weights / residual ** 2).numpy()
            out["recall"][layer, :, c] = (mass @ weights).numpy()
            out["density"][layer, :, c] = (mask.sum((1, 2)).double() / causal.sum()).numpy() \
                if cand.dynamic else cand.pattern.density(M, N)

    hf.apply(model, {}, backend="masks", record=record)
    try:
        with torch.no_grad():
            model(torch.tensor([ids]), use_cache=False, logits_to_keep=1)
    finally:
        hf.remove(model)
    return out


def test_chunked_scores_equal_the_unchunked_computation(tiny_model):
    firsts = {}  # one candidate of every family: static, moa (N-dependent), dynamic
    for cand in candidates():
        firsts.setdefault(cand.family, cand)
    cands = tuple(firsts.values())
    ids = _ids(L)
    scorer = HeadScorer(tiny_model, cands, spread_rows=32, answer_rows=4, chunk_rows=13)
    acc = scorer.score_sample(ids)
    reference = unchunked_scores(tiny_model, cands, ids, scorer)
    for name in ("loss", "loss_sq", "recall", "density"):
        assert np.allclose(acc[name], reference[name], atol=1e-5), name


def test_a_chunk_that_does_not_divide_the_rows_gives_the_same_scores(tiny_model):
    cands = tuple(c for c in candidates() if c.text in (
        "causal & (local(128) | sink(64))", "vertical_slash(32, 128)", "block_topk(4, 64)"))
    ids = _ids(L, seed=5)
    whole = HeadScorer(tiny_model, cands, spread_rows=64, answer_rows=8, influence=True)
    chunked = HeadScorer(tiny_model, cands, spread_rows=64, answer_rows=8, influence=True,
                         chunk_rows=9)
    a, b = whole.score_sample(ids), chunked.score_sample(ids)
    assert len(chunked._rows) % 9 != 0 and len(whole._rows) > 9
    for name in ("loss", "loss_sq", "recall", "influence", "density"):
        assert np.allclose(a[name], b[name], atol=1e-5, rtol=1e-5), name
    assert np.abs(a["influence"]).max() > 0  # the influence was computed, not left at 0
    with pytest.raises(ValueError, match="chunk_rows"):
        HeadScorer(tiny_model, cands, chunk_rows=0)


@pytest.mark.parametrize("M,N", [(77, 77), (45, 131)])
def test_row_masks_equal_the_pattern_and_estimator_masks(M, N):
    g = torch.Generator().manual_seed(M)
    q, k = torch.randn(3, M, 16, generator=g), torch.randn(3, N, 16, generator=g)
    rows = torch.tensor([0, 5, M // 2, M - 1])
    cases = [*candidates(), attngen.parse("vertical_slash(8, 16) | local(4)"),
             attngen.parse("block_topk(2, 16) & ~sink(3)")]
    for cand in cases:
        pattern = getattr(cand, "pattern", cand)
        got = RowMask(pattern.node, q, k, 0.25, M, N)(rows + (N - M))
        if pattern.is_dynamic:
            expected = head_mask(pattern.node, q, k, MaskCache(), 0.25, rows=rows)
        else:
            expected = torch.as_tensor(pattern.mask(M, N)[0])[rows][None]
        assert torch.equal(*torch.broadcast_tensors(got, expected)), str(pattern)
    cover = attngen.parse("block_cover(0.5, 16)")  # integrations.masks does not estimate it
    got = RowMask(cover.node, q, k, 0.25, M, N)(rows + (N - M))
    assert torch.equal(got, allowed(cover, q[None], k[None], 0.25)[0][:, rows])


def test_chunked_plan_attention_equals_the_integrations_masked_attention():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, h, 99, 16, generator=g) for h in (4, 2, 2))
    pattern = attngen.parse("heads { 0: vertical_slash(8, 16); 1: block_topk(2, 16); "
                            "*: causal & (local(8) | sink(4)) }")
    expected = hf.masked_attention(q, k, v, pattern.head_nodes(4, 2), MaskCache(), 0.25)
    got = chunked_attention(q, k, v, pattern, 0.25, chunk_elements=4 * 99 * 5)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("M,N", [(129, 129), (50, 200)])
def test_counted_static_density_equals_the_layout(M, N):
    for cand in candidates():
        if not cand.dynamic:
            assert static_density(cand.pattern, M, N, "cpu") == pytest.approx(
                cand.pattern.density(M, N), abs=1e-12), cand.text


def test_named_shapes_and_device_choice():
    model = named_model("tiny-llama:layers=3")
    config = model.config
    assert (config.num_hidden_layers, config.num_attention_heads,
            config.num_key_value_heads, config.head_dim) == (3, 4, 2, 16)
    with pytest.raises(ValueError, match="unknown model shape"):
        named_model("llama9:layers=2")
    with pytest.raises(ValueError, match="layers=N"):
        named_model("tiny-llama:depth=2")
    prompts = RandomTokens(config.vocab_size)
    a, b = (prompts.sample("kv", 77, 0.5, random.Random(1)) for _ in range(2))
    assert a == b and len(a.prompt_ids) == 77 and len(a.answer_ids) == 5
    assert max(a.ids) < config.vocab_size
    assert resolve_device("cpu", None) == (torch.device("cpu"), torch.float32)
    assert resolve_device("cpu", "bf16") == (torch.device("cpu"), torch.bfloat16)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda", None)
        assert resolve_device(None, None)[0].type == "cpu"


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_search_on_a_named_shape_with_explicit_device_and_dtype(tmp_path, capsys, dtype):
    out = tmp_path / "plan.json"
    assert main(["search", "tiny-llama:layers=2", "--device", "cpu", "--dtype", dtype,
                 "--lengths", "128", "256", "--samples", "1", "--density", "0.95",
                 "--families", "dense", "a_shape", "vertical_slash", "--out", str(out)]) == 0
    plan = json.loads(out.read_text())
    assert isinstance(read_plan(out), ModelPlan) and len(plan["layers"]) == 2
    timing = plan["timing"]
    assert timing["device"] == "cpu" and timing["dtype"] == {"fp32": "float32",
                                                            "bf16": "bfloat16"}[dtype]
    for stage in ("calibration_forward_s", "scoring_s", "selection_s", "validation_s"):
        assert timing[stage] >= 0
    assert plan["validation"]["length"] == 192
    assert "timing" in capsys.readouterr().out

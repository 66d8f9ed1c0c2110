"""attngen inside Hugging Face transformers: a tiny random Llama against its own eager attention."""
import pytest
import torch
import transformers

import attngen
from attngen.integrations import hf

VOCAB, LAYERS, HEADS, KV_HEADS = 97, 2, 4, 2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=16,
        max_position_embeddings=256, pad_token_id=0)
    m = transformers.LlamaForCausalLM(config).eval()
    m.set_attn_implementation("eager")
    return m


@pytest.fixture
def tokens():
    return torch.randint(1, VOCAB, (1, 40), generator=torch.Generator().manual_seed(1))


def plan_of(pattern: str, layers=range(LAYERS)) -> dict:
    return {"layers": [{"layer": i, "pattern": pattern} for i in layers]}


def eager_logits(model, tokens, pattern: attngen.Pattern | None = None):
    """The model's own eager attention, with the pattern as an explicit per-head 4D mask."""
    hf.remove(model)
    assert model.config._attn_implementation == "eager"
    mask = None
    if pattern is not None:
        L = tokens.shape[1]
        allowed = pattern.mask(L, L, heads=HEADS, kv_heads=KV_HEADS)[None]
        mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        return model(tokens, attention_mask=mask).logits


def plan_logits(model, tokens, plan):
    hf.apply(model, plan)
    try:
        with torch.no_grad():
            return model(tokens).logits
    finally:
        hf.remove(model)


def test_causal_plan_reproduces_eager_logits(model, tokens):
    ref = eager_logits(model, tokens)
    out = plan_logits(model, tokens, plan_of("causal", layers=[0]))  # layer 1: dense too
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_sparse_plan_matches_eager_with_the_patterns_4d_mask(model, tokens):
    pattern = attngen.parse("heads { 0: local(4); 1: causal & (sink(2) | local(6)); "
                            "*: causal & strided(3) }")
    ref = eager_logits(model, tokens, pattern)
    out = plan_logits(model, tokens, plan_of(str(pattern)))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    dense = eager_logits(model, tokens)
    assert (out - dense).abs().max() > 1e-3  # the mask mattered


def test_logits_differ_exactly_where_the_mask_differs_from_causal(model, tokens):
    window = 8  # rows 0..7 see every earlier key: there local(8) equals causal
    dense = eager_logits(model, tokens)
    out = plan_logits(model, tokens, plan_of(f"local({window})"))
    diff = (out - dense).abs().amax(-1)[0]
    assert diff[:window].max() < 1e-5
    assert (diff[window:] > 1e-4).all()


def test_kv_heads_mixture_routes_gqa_groups(model, tokens):
    pattern = attngen.parse("kv_heads { 0: local(5); *: causal }")
    ref = eager_logits(model, tokens, pattern)
    out = plan_logits(model, tokens, plan_of(str(pattern)))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_cached_generation_equals_recomputing_without_cache(model, tokens):
    """Prefill + cached decoding (M = 1 < N, bottom-right aligned) pick the same tokens as
    running the whole sequence again at every step."""
    hf.apply(model, plan_of("heads { 0..1: causal & (sink(2) | local(7)); *: local(5) }"))
    try:
        with torch.no_grad():
            cached = model.generate(tokens, max_new_tokens=8, do_sample=False)
            seq = tokens
            for _ in range(8):
                nxt = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
                seq = torch.cat([seq, nxt], dim=1)
    finally:
        hf.remove(model)
    assert torch.equal(cached, seq)


def test_padding_mask_is_respected(model):
    """A left-padded row of a batch matches its unpadded run (causal plan): the pad keys
    are masked out through the attention mask HF passes to the attngen function."""
    g = torch.Generator().manual_seed(2)
    short, long = torch.randint(1, VOCAB, (1, 12), generator=g), torch.randint(
        1, VOCAB, (1, 16), generator=g)
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    attention = torch.ones_like(batch)
    attention[0, :4] = 0
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    hf.apply(model, plan_of("causal"))
    try:
        with torch.no_grad():
            both = model(batch, attention_mask=attention, position_ids=positions).logits
            alone = model(short).logits
    finally:
        hf.remove(model)
    torch.testing.assert_close(both[0, 4:], alone[0], atol=1e-5, rtol=0)
    assert torch.isfinite(both).all()


def test_rows_with_no_allowed_key_give_finite_logits(model, tokens):
    out = plan_logits(model, tokens, plan_of("causal - local(1)"))  # row 0 sees nothing
    assert torch.isfinite(out).all()


def test_dynamic_patterns_run_in_generate(model, tokens):
    hf.apply(model, plan_of("heads { 0: vertical_slash(4, 8); 1: block_topk(2, 8); "
                            "*: causal }"))
    try:
        with torch.no_grad():
            out = model.generate(tokens, max_new_tokens=4, do_sample=False)
    finally:
        hf.remove(model)
    assert out.shape == (1, tokens.shape[1] + 4)


def test_remove_restores_the_previous_implementation(model, tokens):
    before = eager_logits(model, tokens)
    hf.apply(model, plan_of("local(3)"))
    assert model.config._attn_implementation == "attngen"
    hf.remove(model)
    assert model.config._attn_implementation == "eager"
    assert not any(hasattr(m, "_attngen_route") for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, before, atol=0, rtol=0)


def test_plan_naming_a_missing_layer_is_an_error(model):
    with pytest.raises(ValueError, match="layers \\[5\\]"):
        hf.apply(model, plan_of("causal", layers=[5]))
    assert model.config._attn_implementation == "eager"

"""hf.apply(..., backend="kernels"): every layer through the generated kernels (the Triton
interpreter here), padded batches in each row's own frame, decode through the decode kernel
— the same logits and tokens as the exact masks path, and never torch's SDPA or the
reference attention."""
import contextlib

import pytest
import torch
import transformers

import attngen.reference
from attngen.integrations import hf, kernel_path
from attngen.integrations.ranges import KeyRanges

VOCAB, HEADS, KV_HEADS = 97, 4, 2
PLAN = {"layers": [
    {"layer": 0, "pattern": "heads { 0..1: causal & (sink(2) | local(6)); "
                            "*: vertical_slash(4, 8) }"},
    {"layer": 1, "pattern": "kv_heads { 0: local(5); *: causal & (local(4) | strided(3)) }"},
]}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=16,
        max_position_embeddings=256, pad_token_id=0)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def padded():
    """Two rows, the second left-padded by 7 tokens."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, VOCAB, (2, 40), generator=g)
    mask = torch.ones_like(ids)
    ids[1, :7], mask[1, :7] = 0, 0
    return ids, mask


@contextlib.contextmanager
def refusing_dense_attention():
    """Fail on any call of torch's SDPA or attngen's reference or masked attention."""
    def refuse(*args, **kwargs):
        raise AssertionError("the kernel path called a dense attention")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.functional, "scaled_dot_product_attention", refuse)
        mp.setattr(attngen.reference, "attention", refuse)
        mp.setattr(hf, "reference_attention", refuse)
        mp.setattr(hf, "masked_attention", refuse)
        yield


def logits(model, ids, mask, backend):
    hf.apply(model, PLAN, backend=backend)
    try:
        with torch.no_grad():
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            return model(ids, attention_mask=mask, position_ids=positions).logits
    finally:
        hf.remove(model)


def generated(model, ids, mask, backend, **kwargs):
    hf.apply(model, PLAN, backend=backend)
    try:
        with torch.no_grad():
            return model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                                  pad_token_id=0, **kwargs)
    finally:
        hf.remove(model)


def test_padded_prefill_equals_the_masks_path(interpreter, model, padded):
    ids, mask = padded
    ref = logits(model, ids, mask, "masks")
    with refusing_dense_attention():
        out = logits(model, ids, mask, "kernels")
    real = mask.bool()
    assert (out[real] - ref[real]).abs().max() < 1e-3
    assert torch.isfinite(out).all()


def test_a_padded_row_gives_what_it_gives_alone(interpreter, model, padded):
    ids, mask = padded
    both = logits(model, ids, mask, "kernels")
    alone = logits(model, ids[1:, 7:], mask[1:, 7:], "kernels")
    assert (both[1, 7:] - alone[0]).abs().max() < 1e-3


def test_generate_picks_the_masks_paths_tokens(interpreter, model, padded):
    ids, mask = padded
    ref = generated(model, ids, mask, "masks")
    with refusing_dense_attention():
        out = generated(model, ids, mask, "kernels")
    assert torch.equal(out, ref)


def test_static_cache_generation_equals_dynamic_cache(interpreter, model, padded):
    ids, mask = padded
    dynamic = generated(model, ids, mask, "kernels")
    static = generated(model, ids, mask, "kernels", cache_implementation="static")
    assert torch.equal(dynamic, static)


def test_decode_steps_read_ranges_on_the_device(interpreter, model, padded, monkeypatch):
    """A decode step never asks the host for the rows' ranges (no synchronisation)."""
    ids, mask = padded
    calls = []
    real = KeyRanges.host_ranges

    def counted(self):
        calls.append(self.q_length)
        return real(self)

    monkeypatch.setattr(KeyRanges, "host_ranges", counted)
    generated(model, ids, mask, "kernels")
    assert calls and all(m > kernel_path.DECODE_MAX_M or m == ids.shape[1] for m in calls)


def test_rows_with_holes_are_refused_on_the_kernel_path(interpreter, model, padded):
    ids, mask = padded
    holed = mask.clone()
    holed[0, 10] = 0
    with pytest.raises(ValueError, match="padding between real tokens"):
        logits(model, ids, holed, "kernels")


def test_unknown_backend_is_an_error(model):
    with pytest.raises(ValueError, match="backend must be one of"):
        hf.apply(model, PLAN, backend="triton")

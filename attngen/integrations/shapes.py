"""Models to time and search on without a download: a local Hugging Face folder, or a
named shape with random weights built on the device.

    spec = parse_spec("llama3-8b:layers=4")                    # Llama-3-8B's shape, 4 layers
    spec = parse_spec("llama3-8b:layers=4,weights=structured")  # the same, LLM-like q·k
    model = build_model(spec, "cuda")

Random weights give near-uniform attention: a dynamic pattern's estimate then picks
scattered keys and diagonals, which no trained model does. `weights=structured` keeps the
random weights and adds a query/key bias per kv group along one random direction (each
layer its own; the group's query heads share their key head's). After the rotary embedding
the bias part of q_i · k_j is Σ_pairs |b_pair|² cos((i − j)·θ_pair): the direction lies in
the lower-frequency half of the rotary pairs, whose angles stay small over long distances,
so this part peaks at i = j and falls nearly monotonically with distance instead of
oscillating. |b|² = 2·head_dim, so the peak adds 2·√head_dim to the scaled logit (22.6 at
head_dim 128) against about ±2 from the random weights: attention concentrates near the
diagonal and a vertical_slash estimate picks the slash lines next to it, as MInference
reports for trained models (docs/benchmarks.md, "structured weights", has the picks).
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

# name → (model type, config fields); rope_theta is moved into rope_parameters by
# transformers 5 (`rope_theta` reads either)
SHAPES: dict[str, tuple[str, dict]] = {
    "llama3-8b": ("llama", dict(
        hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        intermediate_size=14336, vocab_size=128256, rope_theta=500000.0,
        max_position_embeddings=1 << 20, rms_norm_eps=1e-5, num_hidden_layers=32,
        tie_word_embeddings=False)),
    "qwen2.5-7b": ("qwen2", dict(
        hidden_size=3584, num_attention_heads=28, num_key_value_heads=4, head_dim=128,
        intermediate_size=18944, vocab_size=152064, rope_theta=1000000.0,
        max_position_embeddings=1 << 20, rms_norm_eps=1e-6, num_hidden_layers=28,
        tie_word_embeddings=False, use_sliding_window=False)),
    "tiny-llama": ("llama", dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        intermediate_size=128, vocab_size=512, rope_theta=10000.0,
        max_position_embeddings=1 << 20, num_hidden_layers=2, tie_word_embeddings=False)),
    "tiny-qwen2": ("qwen2", dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        intermediate_size=128, vocab_size=512, rope_theta=10000.0,
        max_position_embeddings=1 << 20, num_hidden_layers=2, tie_word_embeddings=False,
        use_sliding_window=False)),
}
WEIGHTS = ("random", "structured")
OPTIONS = "layers=N (N >= 1) and weights=random|structured"


@dataclass
class ModelSpec:
    text: str  # as given
    config: object  # a transformers PretrainedConfig
    folder: Path | None = None  # a local HF model folder (weights from there), else random
    weights: str = "random"  # of a named shape: "random" or "structured" (module doc)

    @property
    def layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def heads(self) -> tuple[int, int, int]:
        """(query heads, kv heads, head dim)."""
        c = self.config
        H = int(c.num_attention_heads)
        Hkv = int(getattr(c, "num_key_value_heads", None) or H)
        D = int(getattr(c, "head_dim", None) or c.hidden_size // H)
        return H, Hkv, D


def rope_theta(config) -> float | None:
    """rope_theta of a config from transformers 4 (an attribute) or 5 (rope_parameters)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    theta = getattr(config, "rope_theta", None)
    return None if theta is None else float(theta)


def _options(text: str, options: str) -> tuple[int | None, str]:
    layers, weights = None, "random"
    for item in filter(None, (o.strip() for o in options.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if key == "layers" and eq and value.isdigit() and int(value) >= 1:
            layers = int(value)
        elif key == "weights" and value in WEIGHTS:
            weights = value
        else:
            raise ValueError(f"model {text!r}: unknown option {item!r} (the options are "
                             f"{OPTIONS}, e.g. llama3-8b:layers=4)")
    return layers, weights


def _named_config(name: str, layers: int | None):
    from transformers import AutoConfig

    kind, fields = SHAPES[name]
    fields = {**fields, **({"num_hidden_layers": layers} if layers else {})}
    config = AutoConfig.for_model(kind, **fields)
    theta = fields["rope_theta"]
    if rope_theta(config) != theta:  # a transformers that wants rope_parameters
        config = AutoConfig.for_model(kind, **{k: v for k, v in fields.items()
                                               if k != "rope_theta"},
                                      rope_parameters={"rope_type": "default",
                                                       "rope_theta": theta})
    if rope_theta(config) != theta:
        raise ValueError(f"{name}: this transformers sets rope_theta "
                         f"{rope_theta(config)}, not {theta}")
    return config


def parse_spec(text: str) -> ModelSpec:
    """SPEC: a local HF model folder or a named shape (SHAPES), optionally followed by
    `:` and options (OPTIONS), e.g. `llama3-8b:layers=4,weights=structured`."""
    from transformers import AutoConfig

    name, _, options = text.partition(":")
    if os.path.isdir(text) and not os.path.isdir(name):  # a folder whose name holds ':'
        name, options = text, ""
    layers, weights = _options(text, options)
    if name in SHAPES:
        config, folder = _named_config(name, layers), None
        if weights == "structured":
            if hasattr(config, "attention_bias"):  # Llama: q, k, v, o get biases
                config.attention_bias = True
    elif os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise ValueError(f"model {name!r} is a folder without config.json (want a "
                             "Hugging Face model folder)")
        if weights != "random":
            raise ValueError(f"model {text!r}: weights=... applies to named shapes; a "
                             "folder has its own weights")
        config, folder = AutoConfig.from_pretrained(name), Path(name)
    else:
        raise ValueError(f"model {text!r}: not a local model folder nor a named shape "
                         f"({', '.join(SHAPES)}; options after ':': {OPTIONS})")
    if layers is not None:
        config.num_hidden_layers = layers
        for attr in ("layer_types",):  # per-layer lists must follow the count
            if isinstance(getattr(config, attr, None), list):
                setattr(config, attr, getattr(config, attr)[:layers])
    return ModelSpec(text, config, folder, weights)


def _dtype_kwarg(fn: Callable) -> str:
    """transformers 5 calls it `dtype`, 4 `torch_dtype`."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return "dtype"
    return "torch_dtype" if "torch_dtype" in params and "dtype" not in params else "dtype"


def build_model(spec: ModelSpec, device, dtype: torch.dtype = torch.bfloat16, seed: int = 0
                ) -> torch.nn.Module:
    """The model in eval mode on `device`: the folder's weights, or random ones made on the
    device itself (initialising on a GPU takes well under a second; on the meta device the
    rotary buffers would be lost), structured when the spec says so."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    if spec.folder is not None:
        kw = {_dtype_kwarg(AutoModelForCausalLM.from_pretrained): dtype}
        model = AutoModelForCausalLM.from_pretrained(spec.folder, config=spec.config, **kw)
        model = model.to(device)
    else:
        kw = {_dtype_kwarg(AutoModelForCausalLM.from_config): dtype}
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(spec.config, **kw)
        if spec.weights == "structured":
            structure(model, spec, seed)
    model.eval()
    return model


@torch.no_grad()
def structure(model: torch.nn.Module, spec: ModelSpec, seed: int = 0) -> None:
    """Sets every attention layer's q and k biases to its kv groups' directions and zeroes
    the v and o biases (module doc)."""
    H, Hkv, D = spec.heads
    g = torch.Generator().manual_seed(seed + 1)
    # rotate_half pairs dimension i with i + D/2 at angle base^(-2i/D): the lower-frequency
    # half of the pairs is i in [D/4, D/2)
    low = torch.zeros(D)
    low[D // 4:D // 2] = low[3 * D // 4:] = 1
    for index, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        if attn.q_proj.bias is None or attn.k_proj.bias is None:
            raise ValueError(f"{spec.text}: layer {index} has no q/k bias to structure")
        direction = torch.randn(Hkv, D, generator=g) * low
        direction *= (2 * D) ** 0.5 / direction.norm(dim=-1, keepdim=True)
        attn.q_proj.bias.copy_(direction.repeat_interleave(H // Hkv, 0).flatten())
        attn.k_proj.bias.copy_(direction.flatten())
        for proj in (attn.v_proj, attn.o_proj):
            if proj.bias is not None:
                proj.bias.zero_()

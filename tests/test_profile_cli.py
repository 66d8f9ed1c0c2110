"""`attngen search` then `attngen eval` end to end on a tiny random Llama saved to disk, with a
small tokenizer trained on the spot (the real default model is too slow for CI)."""
import json
import re

import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from attngen.cli import main
from attngen.integrations.plan import read_plan
from attngen.profile.data import documentation_text

CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([documentation_text("calibration")[:200_000]],
                            trainers.BpeTrainer(vocab_size=400, special_tokens=[
                                "<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                                pad_token="<|endoftext|>")
    fast.chat_template = CHAT
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=fast.vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=2048, eos_token_id=fast.eos_token_id)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def test_search_then_eval(tiny_model_dir, tmp_path, capsys):
    plan_path = tmp_path / "plan.json"
    assert main(["search", str(tiny_model_dir), "--density", "0.7", "--lengths", "256", "512",
                 "--samples", "1", "--families", "dense", "a_shape", "vertical_slash",
                 "--budget-at", "mean", "--floor", "0.8", "--length-weights", "1", "2",
                 "--out", str(plan_path)]) == 0
    plan = json.loads(plan_path.read_text())
    assert plan["density"] <= 0.7
    assert plan["budget"] == {"density": 0.7, "at": "mean", "floor": 0.8}
    assert min(plan["density_per_length"].values()) >= 0.8 * 0.7 - 1e-4
    assert plan["search"]["length_weights"] == [1.0, 2.0]
    assert set(plan["density_per_length"]) == {"256", "512"}
    assert plan["validation"]["length"] == 384
    assert sorted(row["layer"] for row in plan["layers"]) == [0, 1]
    assert all(len(row["heads"]) == 4 for row in plan["layers"])
    read_plan(plan_path)  # every layer pattern parses

    out_dir = tmp_path / "report"
    assert main(["eval", str(tiny_model_dir), "--plan", str(plan_path), "--lengths", "320",
                 "--kv-lengths", "512", "--per-cell", "1", "--kv-per-cell", "1",
                 "--ppl-length", "256", "--ppl-windows", "1", "--task-lengths", "1024",
                 "--tasks", "multikey", "cwe", "--out-dir", str(out_dir)]) == 0
    report = (out_dir / "report.md").read_text()
    for name in ("dense", "plan", "StreamingLLM", "MoA uniform"):
        assert name in report
    assert re.search(r"% \[\d+–\d+\] \| 5 \|", report)  # n = 5 per length: 5 depths, one each
    assert "## Verdict" in report
    assert "## Unseen tasks" in report and "| multikey 1024 | cwe 1024 |" in report
    assert "n=5" in report.split("## Unseen tasks")[1]  # one per depth
    for png in ("passkey_heatmap.png", "kv_heatmap.png", "ppl.png", "plan_map.png"):
        assert (out_dir / png).stat().st_size > 1000
    results = json.loads((out_dir / "results.json").read_text())
    assert [m["name"] for m in results["methods"]][:2] == ["dense", "plan"]
    assert "report" in capsys.readouterr().out
    # perplexity only: no passkey and no kv samples
    assert main(["eval", str(tiny_model_dir), "--plan", str(plan_path), "--per-cell", "0",
                 "--kv-per-cell", "0", "--ppl-length", "256", "--ppl-windows", "1",
                 "--methods", "dense", "plan", "--out-dir", str(tmp_path / "ppl")]) == 0
    methods = json.loads((tmp_path / "ppl" / "results.json").read_text())["methods"]
    assert [m["name"] for m in methods] == ["dense", "plan"]
    assert all(m["ppl"] > 1 and not m["passkey"] and not m["kv"] for m in methods)

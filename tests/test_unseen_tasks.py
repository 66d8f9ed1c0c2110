"""The RULER-style tasks `attngen eval` reports on and the search never calibrates on:
prompts of the asked length that hold their answer, and exact-match scoring."""
import random

import pytest

from attngen.profile.data import UNSEEN_TASKS, Haystack, Sample, answered


class Words:
    """A whitespace tokenizer: one id per word (ids are indices into a growing vocab)."""

    eos_token = "</s>"

    def __init__(self):
        self.vocab: dict[str, int] = {}
        self.words: list[str] = []

    def __call__(self, text, add_special_tokens=False):
        ids = []
        for w in text.split(" "):
            if w not in self.vocab:
                self.vocab[w] = len(self.words)
                self.words.append(w)
            ids.append(self.vocab[w])
        return {"input_ids": ids}

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "<user> " + messages[0]["content"] + " <assistant> "

    def decode(self, ids):
        return " ".join(self.words[i] for i in ids)


@pytest.fixture(scope="module")
def haystack():
    filler = " ".join(f"filler{i % 97}" for i in range(5000))
    return Haystack(filler, Words())


@pytest.mark.parametrize("task", UNSEEN_TASKS)
@pytest.mark.parametrize("length", [400, 777])
def test_prompts_have_the_length_and_hold_the_answer(haystack, task, length):
    sample = haystack.sample(task, length, 0.3, random.Random(length))
    assert len(sample.prompt_ids) == length and sample.kind == task
    text = haystack.tokenizer.decode(sample.prompt_ids)
    for part in sample.answer.split():
        assert part in text, (task, part)
    if task == "cwe":  # the answer is the strictly most frequent word of the list
        listed = [w.split("\n")[0] for w in text.split(". ")[1:]]
        counts = {w: listed.count(w) for w in set(listed)}
        assert counts[sample.answer] > max(c for w, c in counts.items() if w != sample.answer)


def test_vartrack_chain_leads_to_the_answer(haystack):
    sample = haystack.sample("vartrack", 600, 0.2, random.Random(1))
    text = haystack.tokenizer.decode(sample.prompt_ids)
    assigned = dict(line.strip()[4:-1].split(" = ") for line in text.split("\n")
                    if line.strip().startswith("VAR "))
    asked = text.split("value of VAR ")[1].split("?")[0]
    value = asked
    while value in assigned:
        value = assigned[value]
    assert value == sample.answer


@pytest.mark.parametrize("kind, answer, text, ok", [
    ("multikey", "12345", "12345.", True), ("multikey", "12345", "1234 12345", False),
    ("multivalue", "111 222", "222, 111 and 9", True), ("multivalue", "111 222", "111", False),
    ("vartrack", "55555", " 55555", True), ("cwe", "maple", " Maple, surely", True),
    ("cwe", "maple", "the word maple", False)])
def test_exact_match_scoring(kind, answer, text, ok):
    assert answered(text, Sample([], answer, [], [], kind, 0.5)) is ok

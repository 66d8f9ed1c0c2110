"""Offline calibration and evaluation data: retrieval haystacks over natural text.

    text = Haystack.documentation("calibration", tokenizer)   # Python's own docs text
    sample = passkey(text, tokenizer, length=2048, depth=0.5, rng=random.Random(0))
    sample.prompt_ids, sample.answer

The natural text is the reference manual's topics that ship with CPython
(`pydoc_data.topics`, ~460K characters): the topics alternate between a calibration half
and an evaluation half, so evaluation never sees the text the search calibrated on.
`--data FILE…` replaces it with the user's files. Prompts go through the model's chat
template and have exactly `length` tokens: the filler is cut at token level to fit.

- passkey (Mohtashami & Jaggi 2023, as in LongLoRA and InfiniteBench): a five-digit key
  hidden at a relative depth of the filler; the answer is the key.
- kv retrieval (RULER's multi-key needle, InfiniteBench kv_retrieval over natural text):
  `pairs` key → five-digit value sentences at random depths; one key is asked for.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

PLACEHOLDER = "\x00"
PASSKEY_INTRO = ("There is an important piece of information hidden inside a lot of irrelevant "
                 "text. Find it and memorize it. I will quiz you about it afterwards.\n\n")
PASSKEY_NEEDLE = "\n\nThe pass key is {key}. Remember it. {key} is the pass key.\n\n"
PASSKEY_QUESTION = "\n\nWhat is the pass key? Answer with the number only."
PASSKEY_ANSWER = "The pass key is "  # starts the assistant's turn: the key comes next
KV_INTRO = ("The text below contains some key-value records. Remember every record; I will "
            "ask for the value of one key afterwards.\n\n")
KV_NEEDLE = "\n\nRecord: the value of key {key} is {value}.\n\n"
KV_QUESTION = "\n\nWhat is the value of key {key}? Answer with the number only."
KV_ANSWER = "The value of key {key} is "
KV_WORDS = ("amber apple birch cobalt copper coral crimson ember falcon garnet harbor indigo "
            "jasper lemon maple marble meadow nickel olive orchid pebble quartz raven saffron "
            "silver spruce tiger tulip velvet willow").split()


# RULER-style tasks (Hsieh et al. 2024) the search never calibrates on: synthetic, offline,
# scored by exact match like passkey (`answered`)
UNSEEN_TASKS = ("multikey", "multivalue", "vartrack", "cwe")
MK_INTRO = ("Some special magic numbers are hidden inside the text below. Remember them; I "
            "will ask for one of them afterwards.\n\n")
MK_NEEDLE = "\n\nOne of the special magic numbers for {key} is: {value}.\n\n"
MK_QUESTION = ("\n\nWhat is the special magic number for {key}? Answer with the number "
               "only.")
MK_ANSWER = "The special magic number for {key} is "
MV_QUESTION = ("\n\nWhat are all the special magic numbers for {key}? Answer with the numbers "
               "only, separated by spaces.")
MV_ANSWER = "The special magic numbers for {key} are "
VT_INTRO = ("Memorize the variable assignments hidden in the text below; I will ask for the "
            "value of one variable afterwards.\n\n")
VT_QUESTION = "\n\nWhat is the value of VAR {name}? Answer with the number only."
VT_ANSWER = "The value of VAR {name} is "
CWE_INTRO = ("Below is a numbered list of words. Some words appear more often than others; "
             "I will ask which word appears most often.\n\n")
CWE_QUESTION = "\n\nWhich word appears most often in the list above? Answer with the word only."
CWE_ANSWER = "The word that appears most often is"


def answered(text: str, sample: Sample) -> bool:
    """Exact-match scoring of a generated answer: the first number (passkey, kv, multikey,
    vartrack), every expected number among the numbers given (multivalue), or the first
    word (cwe)."""
    if sample.kind == "multivalue":
        return set(sample.answer.split()) <= set(re.findall(r"\d+", text))
    if sample.kind == "cwe":
        found = re.search(r"[A-Za-z]+", text)
        return found is not None and found.group(0).lower() == sample.answer
    return first_number(text) == sample.answer


@dataclass(frozen=True)
class Sample:
    prompt_ids: list[int]  # chat-formatted prompt ending with the assistant's turn
    answer: str  # the expected answer text
    answer_ids: list[int]  # the answer's tokens
    end_ids: list[int]  # the end-of-turn token(s) after the answer
    kind: str  # "passkey" or "kv"
    depth: float  # relative position of the (asked) needle in the filler

    @property
    def ids(self) -> list[int]:
        """Prompt, answer and end of turn: what a calibration forward pass reads."""
        return self.prompt_ids + self.answer_ids + self.end_ids


class Haystack:
    """Filler token ids and the chat template around a user message, for one tokenizer."""

    def __init__(self, text: str, tokenizer):
        self.tokenizer = tokenizer
        self.filler = self.encode(text)
        messages = [{"role": "user", "content": PLACEHOLDER}]
        chat = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
        before, after = chat.split(PLACEHOLDER)
        self.chat_prefix, self.chat_suffix = self.encode(before), self.encode(after)
        end = tokenizer.eos_token or ""
        self.end_of_turn = self.encode(end) if end else []

    @classmethod
    def documentation(cls, split: str, tokenizer) -> Haystack:
        return cls(documentation_text(split), tokenizer)

    @classmethod
    def files(cls, paths: list[str | Path], tokenizer) -> Haystack:
        return cls("\n\n".join(Path(p).read_text(errors="replace") for p in paths), tokenizer)

    def fingerprint(self) -> str:
        """A short hash of the token ids samples are made of (filler and chat template)."""
        import hashlib

        parts = (self.filler, self.chat_prefix, self.chat_suffix)
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def filler_ids(self, count: int, rng: random.Random) -> list[int]:
        if count > len(self.filler):
            raise ValueError(f"the haystack text has {len(self.filler)} tokens; a prompt needs "
                             f"{count}: use a shorter length or more --data")
        start = rng.randrange(len(self.filler) - count + 1)
        return self.filler[start:start + count]

    def prompt(self, intro: str, needles: list[tuple[float, str]], question: str,
               answer_start: str, length: int, rng: random.Random) -> list[int]:
        """Chat prompt of exactly `length` tokens: intro, filler with needles at relative
        depths, question, then the start of the assistant's answer."""
        intro_ids, question_ids = self.encode(intro), self.encode(question)
        answer_ids = self.encode(answer_start)
        needle_ids = [(depth, self.encode(text)) for depth, text in sorted(needles)]
        fixed = (len(self.chat_prefix) + len(intro_ids) + len(question_ids)
                 + len(self.chat_suffix) + len(answer_ids) + sum(len(ids) for _, ids in needle_ids))
        if fixed >= length:
            raise ValueError(f"length {length} is too short: the prompt's fixed parts take "
                             f"{fixed} tokens")
        filler = self.filler_ids(length - fixed, rng)
        body, cut = [], 0
        for depth, ids in needle_ids:
            at = round(depth * len(filler))
            body += filler[cut:at] + ids
            cut = at
        body += filler[cut:]
        return (self.chat_prefix + intro_ids + body + question_ids + self.chat_suffix
                + answer_ids)

    def sample(self, kind: str, length: int, depth: float, rng: random.Random) -> Sample:
        if kind == "passkey":
            key = str(rng.randrange(10000, 100000))
            ids = self.prompt(PASSKEY_INTRO, [(depth, PASSKEY_NEEDLE.format(key=key))],
                              PASSKEY_QUESTION, PASSKEY_ANSWER, length, rng)
            return Sample(ids, key, self.encode(key), self.end_of_turn, kind, depth)
        if kind == "kv":
            return self.kv_sample(length, depth, rng)
        if kind in ("multikey", "multivalue"):
            return self.magic_sample(kind, length, depth, rng)
        if kind == "vartrack":
            return self.vartrack_sample(length, depth, rng)
        if kind == "cwe":
            return self.cwe_sample(length, depth, rng)
        raise ValueError(f"unknown sample kind {kind!r}")

    def _sample(self, kind, intro, needles, question, answer_start, answer, length, depth,
                rng) -> Sample:
        ids = self.prompt(intro, needles, question, answer_start, length, rng)
        return Sample(ids, answer, self.encode(answer), self.end_of_turn, kind, depth)

    def magic_sample(self, kind: str, length: int, depth: float, rng: random.Random,
                     count: int = 4) -> Sample:
        """multikey: `count` needles of one form under different keys, one asked;
        multivalue: `count` values under one key, all asked (RULER's NIAH variants)."""
        keys: list[str] = []
        while len(keys) < count:  # distinct keys
            key = "-".join(rng.sample(KV_WORDS, 2))
            keys += [key] if key not in keys else []
        values = [str(rng.randrange(10000, 100000)) for _ in range(count)]
        if kind == "multivalue":
            keys = [keys[0]] * count
        depths = [depth] + [rng.random() for _ in range(count - 1)]
        needles = [(d, MK_NEEDLE.format(key=k, value=v))
                   for d, k, v in zip(depths, keys, values)]
        if kind == "multikey":
            return self._sample(kind, MK_INTRO, needles, MK_QUESTION.format(key=keys[0]),
                                MK_ANSWER.format(key=keys[0]), values[0], length, depth, rng)
        return self._sample(kind, MK_INTRO, needles, MV_QUESTION.format(key=keys[0]),
                            MV_ANSWER.format(key=keys[0]), " ".join(values), length, depth,
                            rng)

    def vartrack_sample(self, length: int, depth: float, rng: random.Random,
                        hops: int = 4) -> Sample:
        """A chain VAR A = 12345, VAR B = A, …: the last variable's value, `hops` assignments
        spread from `depth` on (RULER's variable tracking), with one distractor chain."""
        names = rng.sample(sorted({w.upper()[:5] for w in KV_WORDS}), 2 * hops)
        value, other = (str(rng.randrange(10000, 100000)) for _ in range(2))
        needles = []
        for chain, start in ((names[:hops], value), (names[hops:], other)):
            at = sorted(depth + (1 - depth) * rng.random() * i / hops for i in range(hops))
            for i, (d, name) in enumerate(zip(at, chain)):
                source = start if i == 0 else chain[i - 1]
                needles.append((d, f"\n\nVAR {name} = {source}.\n\n"))
        last = names[hops - 1]
        return self._sample("vartrack", VT_INTRO, needles, VT_QUESTION.format(name=last),
                            VT_ANSWER.format(name=last), value, length, depth, rng)

    def cwe_sample(self, length: int, depth: float, rng: random.Random) -> Sample:
        """A numbered word list in place of filler: one word 12 times, the others at most
        4 times each, shuffled (RULER's common-word extraction, top 1). `depth` is kept
        for the cell's name only."""
        common, *others = rng.sample(KV_WORDS, 12)
        words = [common] * 12 + [w for w in others for _ in range(rng.randint(2, 4))]
        rng.shuffle(words)
        listing = "".join(f"{i + 1}. {w}\n" for i, w in enumerate(words))
        ids = self.prompt(CWE_INTRO + listing, [], CWE_QUESTION, CWE_ANSWER, length, rng)
        return Sample(ids, common, self.encode(" " + common), self.end_of_turn, "cwe", depth)

    def kv_sample(self, length: int, depth: float, rng: random.Random,
                  pairs: int = 6) -> Sample:
        keys = set()
        while len(keys) < pairs:
            keys.add("-".join(rng.sample(KV_WORDS, 2)))
        keys = sorted(keys)
        values = [str(rng.randrange(10000, 100000)) for _ in keys]
        asked = rng.randrange(pairs)
        depths = [depth if i == asked else rng.random() for i in range(pairs)]
        needles = [(d, KV_NEEDLE.format(key=k, value=v)) for d, k, v in zip(depths, keys, values)]
        ids = self.prompt(KV_INTRO, needles, KV_QUESTION.format(key=keys[asked]),
                          KV_ANSWER.format(key=keys[asked]), length, rng)
        answer = values[asked]
        return Sample(ids, answer, self.encode(answer), self.end_of_turn, "kv", depth)

    def text_windows(self, length: int, count: int) -> list[list[int]]:
        """`count` disjoint windows of `length` filler tokens (perplexity)."""
        if count * length > len(self.filler):
            raise ValueError(f"{count} windows of {length} tokens need {count * length} tokens; "
                             f"the text has {len(self.filler)}")
        return [self.filler[i * length:(i + 1) * length] for i in range(count)]


def documentation_text(split: str) -> str:
    """The reference-manual topics that ship with Python: "calibration" gets the even
    topics (sorted by name), "evaluation" the odd ones."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    chosen = names[0::2] if split == "calibration" else names[1::2]
    if split not in ("calibration", "evaluation"):
        raise ValueError(f"split must be 'calibration' or 'evaluation', got {split!r}")
    return "\n\n".join(re.sub(r"\n{3,}", "\n\n", topics[n]) for n in chosen)


def first_number(text: str) -> str | None:
    """The first run of digits in a generated answer (exact-match scoring)."""
    found = re.search(r"\d+", text)
    return found.group(0) if found else None


class RandomTokens:
    """The tokenizer-free stand-in for a Haystack (named random-weight models, model.py):
    prompts of uniformly random token ids of exactly the asked length, answers of five
    random ids. Only time and memory mean anything on them."""

    ANSWER = 5

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def fingerprint(self) -> str:
        return f"random-tokens-{self.vocab_size}"

    def _ids(self, count: int, rng: random.Random) -> list[int]:
        return [rng.randrange(self.vocab_size) for _ in range(count)]

    def sample(self, kind: str, length: int, depth: float, rng: random.Random) -> Sample:
        if kind not in ("passkey", "kv", *UNSEEN_TASKS):
            raise ValueError(f"unknown sample kind {kind!r}")
        prompt, answer = self._ids(length, rng), self._ids(self.ANSWER, rng)
        return Sample(prompt, " ".join(map(str, answer)), answer, [], kind, depth)

    def text_windows(self, length: int, count: int) -> list[list[int]]:
        rng = random.Random(length)
        return [self._ids(length, rng) for _ in range(count)]

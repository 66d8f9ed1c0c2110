"""Per-head scores of every candidate, measured on the model's own queries and keys.

    scores = HeadScorer(model, candidates).run(samples_by_length)
    scores.loss[l, layer, head, c, rows], scores.recall[...], scores.density[l, layer, head, c]
    scores.mixed("loss", answer_weight)    # the two row sets weighed: [l, layer, head, c]

A dense forward pass runs through the HF integration with a recorder that sees every
layer's post-RoPE queries, keys and values. For a set of query rows R of each sample it
computes the dense attention probabilities P once, and for each candidate mask m:

- recall: the softmax mass the candidate keeps, sum(P · m) per row (MInference's
  criterion);
- output error: the candidate's output o_c = (P · m) V / sum(P · m) (the softmax
  restricted to the kept keys, exactly what sparse attention computes) against the dense
  output o, pushed through that head's slice of the output projection and divided by the
  norm of the residual stream entering the layer: ‖W_o,h (o_c − o)‖ / ‖x‖. That is the
  perturbation the head's choice adds to the model's hidden state, comparable across
  layers and additive over heads (the knapsack's objective);
- with `influence=True`, MoA's gradient influence: the gradient of the loss at each
  head's output, dotted with o_c − o (the first-order change of the loss; see
  `_loss_gradients`). Measured on SmolLM2 it is too noisy to choose by (profiler.md).

R is a spread of rows over the whole sequence (perplexity) plus the last rows of the
sample, where the question and the answer sit (retrieval); the two means are kept apart
(last axis `rows`: spread, answer) and weighed at selection. Densities of static
candidates are exact (from the layout); dynamic candidates are measured on R: allowed ÷
causal pairs of their estimated masks.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from attngen.codegen.torch_predicate import count_allowed
from attngen.integrations import hf
from attngen.ir.pattern import Pattern
from attngen.profile.candidates import Candidate
from attngen.profile.data import Sample
from attngen.profile.rowmask import RowMask
from attngen.profile.runner import running

ROW_SETS = ("spread", "answer")  # last axis of the per-row-set scores
PER_ROW_SET = ("loss", "loss_sq", "recall", "influence")
CHUNK_ELEMENTS = 1 << 26  # heads × rows × keys of one chunk's fp32 tensors


@dataclass
class Scores:
    """Per (length, layer, query head, candidate), averaged over the samples. The loss and
    recall keep the two row sets apart (last axis: spread rows, answer rows) so a search
    can weigh them without scoring again (`mixed`)."""

    lengths: list[int]
    candidates: tuple[Candidate, ...]
    loss: np.ndarray  # [L, layers, heads, C, 2] output error (see the module doc)
    loss_sq: np.ndarray  # [L, layers, heads, C, 2] its square, averaged over rows
    recall: np.ndarray  # [L, layers, heads, C, 2] attention mass kept
    influence: np.ndarray  # [L, layers, heads, C, 2] first-order loss change (0: not run)
    density: np.ndarray  # [L, layers, heads, C] allowed ÷ causal pairs

    def mixed(self, name: str, answer_weight: float) -> np.ndarray:
        """`name` ("loss", "loss_sq", "recall", "influence") as (1 - w)·spread + w·answer rows."""
        values = getattr(self, name)
        return (1 - answer_weight) * values[..., 0] + answer_weight * values[..., 1]


class HeadScorer:
    """Scores on the model's device: the forward pass in the model's dtype, the scores in
    fp32, `chunk_rows` query rows at a time (default: as many as keep one chunk's
    [heads, rows, N] tensors within CHUNK_ELEMENTS)."""

    def __init__(self, model, candidates: tuple[Candidate, ...], spread_rows: int = 128,
                 answer_rows: int = 16, influence: bool = False,
                 chunk_rows: int | None = None):
        if chunk_rows is not None and chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
        self.model = model
        self.candidates = candidates
        self.influence = influence
        self.chunk_rows = chunk_rows
        self.device = next(model.parameters()).device
        self._count_on = str(self.device) if self.device.type == "cuda" else None
        self._grads: dict[int, torch.Tensor] = {}
        self.spread_rows, self.answer_rows = spread_rows, answer_rows
        self.modules = hf.attention_modules(model)
        self._residual: dict[int, torch.Tensor] = {}
        self._row_masks: dict[tuple[str, int, int], torch.Tensor] = {}
        self._acc: dict[str, np.ndarray] = {}
        self.seconds = {"forward": 0.0, "scoring": 0.0}  # scoring: inside the recorder

    def run(self, samples: dict[int, list[Sample]], progress: bool = True) -> Scores:
        lengths = sorted(samples)
        layers, heads = len(self.modules), self.model.config.num_attention_heads
        shape = (len(lengths), layers, heads, len(self.candidates))
        out = {name: np.zeros(shape + (len(ROW_SETS),)) for name in PER_ROW_SET}
        out["density"] = np.zeros(shape)
        total = sum(len(v) for v in samples.values())
        bar = tqdm(total=total, desc="calibrating", unit="sample", disable=not progress)
        for li, length in enumerate(lengths):
            for sample in samples[length]:
                acc = self.score_sample(sample.ids)
                for name in out:
                    out[name][li] += acc[name] / len(samples[length])
                bar.update()
        bar.close()
        return Scores(lengths, self.candidates, **out)

    @torch.no_grad()
    def score_sample(self, ids: list[int]) -> dict[str, np.ndarray]:
        L = len(ids)
        spread = torch.linspace(0, L - 1, min(self.spread_rows, L)).round().long()
        answer = torch.arange(max(0, L - self.answer_rows), L)
        self._rows = torch.unique(torch.cat([spread, answer]))
        self._weights = self._row_weights(spread, answer)
        self._rows = self._rows.to(self.device)
        layers, heads = len(self.modules), self.model.config.num_attention_heads
        shape = (layers, heads, len(self.candidates))
        self._acc = {name: np.zeros(shape + (len(ROW_SETS),)) for name in PER_ROW_SET}
        self._acc["density"] = np.zeros(shape)
        if self.influence:
            self._grads = self._loss_gradients(ids, len(answer))
        hooks = [self._layer_of(m).register_forward_pre_hook(self._residual_hook(i),
                                                             with_kwargs=True)
                 for i, m in self.modules.items()]
        start, scored = self._now(), self.seconds["scoring"]
        try:
            with running(self.model, record=self._timed_record):
                self.model(torch.tensor([ids], device=self.device), use_cache=False,
                           logits_to_keep=1)
        finally:
            for h in hooks:
                h.remove()
        self.seconds["forward"] += self._now() - start - (self.seconds["scoring"] - scored)
        return self._acc

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _timed_record(self, layer: int, query, key, value) -> None:
        start = self._now()
        self._record(layer, query, key, value)
        self.seconds["scoring"] += self._now() - start

    def _row_weights(self, spread: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
        """[R, 2]: the weights of the spread mean and of the answer mean over self._rows."""
        w = torch.zeros(len(self._rows), len(ROW_SETS), dtype=torch.float64)
        w[torch.isin(self._rows, spread), 0] = 1 / len(spread)
        w[torch.isin(self._rows, answer), 1] = 1 / len(answer)
        return w

    def _loss_gradients(self, ids: list[int], answer: int) -> dict[int, torch.Tensor]:
        """Layer → [2, H, R, D]: gradients, at the rows R, of each head's attention output
        (the input of o_proj) for two losses: the mean next-token loss over the sequence,
        and over its last `answer` tokens. One forward and backward pass with the model's
        own attention (MoA's gradient influence, per output row instead of per
        attention-matrix entry: o_c - o is the whole change a candidate makes to a row).

        `_influence_weights` [R, 2] turn row sums into estimates over the whole sequence:
        spread rows stand for L / len(spread) rows each."""
        L, rows = len(ids), self._rows
        inputs: dict[int, torch.Tensor] = {}
        hooks = [m.o_proj.register_forward_pre_hook(
                 lambda mod, args, i=i: inputs.__setitem__(i, args[0]))
                 for i, m in self.modules.items()]
        target = torch.tensor(ids[1:], device=self.device)
        try:
            with torch.enable_grad():
                logits = self.model(torch.tensor([ids], device=self.device),
                                    use_cache=False).logits[0, :-1]
                nll = torch.nn.functional.cross_entropy(logits.float(), target,
                                                        reduction="none")
                order = sorted(inputs)
                losses = (nll.mean(), nll[-answer:].mean())
                grads = [torch.autograd.grad(loss, [inputs[i] for i in order],
                                             retain_graph=k == 0)
                         for k, loss in enumerate(losses)]
        finally:
            for h in hooks:
                h.remove()
        heads = self.model.config.num_attention_heads
        weights = self._weights.clone()  # means over the spread and the answer rows
        spread, is_answer = weights[:, 0] > 0, weights[:, 1] > 0
        weights[:, 0] *= L  # sums over all L rows: a spread row stands for L / n rows
        others = int((spread & ~is_answer).sum())  # the answer loss: answer rows once each
        weights[:, 1] = torch.where(is_answer, 1.0, spread * (L - answer) / max(1, others))
        self._influence_weights = weights.float().to(self.device)
        out = {}
        for position, layer in enumerate(order):
            out[layer] = torch.stack([grads[k][position][0, rows].view(len(rows), heads, -1)
                                      .transpose(0, 1).float() for k in range(2)])
        return out

    def _layer_of(self, attention_module):
        """The decoder layer holding an attention module (its input is the residual)."""
        for layer in self.model.modules():
            if getattr(layer, "self_attn", None) is attention_module:
                return layer
        raise ValueError("no decoder layer with this attention as `self_attn`")

    def _residual_hook(self, layer: int):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            self._residual[layer] = x[0, self._rows].float().norm(dim=-1).mean()
        return hook

    def _chunk(self, heads: int, N: int) -> int:
        if self.chunk_rows is not None:
            return self.chunk_rows
        return max(1, CHUNK_ELEMENTS // (heads * N))

    def _record(self, layer: int, query, key, value) -> None:
        """Every candidate's scores on this layer, a chunk of the rows R at a time: the
        dense probabilities [H, chunk, N] and each candidate's mask rows, never [N, N]."""
        module = self.modules[layer]
        rows, weights = self._rows, self._weights.float().to(self.device)
        _, H, M, D = query.shape
        N, group = key.shape[2], H // key.shape[1]
        q = query[0].float()
        k = key[0].float().repeat_interleave(group, 0)  # [H, N, D]
        v = value[0].float().repeat_interleave(group, 0)
        scale = getattr(module, "scaling", 1 / math.sqrt(D))
        positions = rows + (N - M)
        w_o = module.o_proj.weight.float().view(-1, H, D)  # [hidden, H, D]
        C = len(self.candidates)
        sums = {name: torch.zeros(C, H, len(ROW_SETS), device=self.device)
                for name in PER_ROW_SET}
        count = torch.zeros(C, H, dtype=torch.float64, device=self.device)
        dynamic = {c: RowMask(cand.pattern.node, query[0], k, scale, M, N)
                   for c, cand in enumerate(self.candidates) if cand.dynamic}
        step = self._chunk(H, N)
        for r0 in range(0, len(rows), step):
            chunk = slice(r0, r0 + step)
            pos, w = positions[chunk], weights[chunk]
            causal = torch.arange(N, device=self.device)[None, :] <= pos[:, None]  # [r, N]
            probs = torch.softmax((q[:, rows[chunk]] @ k.transpose(1, 2) * scale)
                                  .masked_fill(~causal, -math.inf), dim=-1)  # [H, r, N]
            dense_out = probs @ v
            for c, cand in enumerate(self.candidates):
                mask = (dynamic[c](pos) if cand.dynamic
                        else self._static_rows(cand, M, N)[:, chunk])  # [1 or H, r, N]
                kept = probs * mask
                mass = kept.sum(-1)  # [H, r]
                change = (kept @ v) / mass.clamp(min=1e-30)[..., None] - dense_out
                shift = torch.einsum("hrd,ehd->hre", change, w_o).norm(dim=-1)  # [H, r]
                sums["loss"][c] += shift @ w
                sums["loss_sq"][c] += shift.square() @ w
                sums["recall"][c] += mass @ w
                if self.influence:  # [2, H, r]: each loss's gradient · the output change
                    grad = torch.einsum("hrd,shrd->shr", change, self._grads[layer][:, :, chunk])
                    sums["influence"][c] += (grad @ self._influence_weights[chunk]
                                             ).diagonal(dim1=0, dim2=2)
                if cand.dynamic:
                    count[c] += mask.sum((1, 2)).double()
        residual = self._residual[layer]
        causal_count = (positions + 1).clamp(min=0, max=N).double().sum()
        for name, divisor in (("loss", residual), ("loss_sq", residual.square()),
                              ("recall", 1), ("influence", 1)):
            self._acc[name][layer] = (sums[name] / divisor).transpose(0, 1).cpu().numpy()
        for c, cand in enumerate(self.candidates):
            self._acc["density"][layer, :, c] = (
                (count[c] / causal_count).cpu().numpy() if cand.dynamic
                else static_density(cand.pattern, M, N, self._count_on))

    def _static_rows(self, cand: Candidate, M: int, N: int) -> torch.Tensor:
        """bool [1, R, N], cached per length (the rows depend on it only)."""
        key = (cand.text, M, N)
        if key not in self._row_masks:
            positions = self._rows + (N - M)
            self._row_masks[key] = RowMask(cand.pattern.node, None, None, 1.0, M, N)(positions)
        return self._row_masks[key]


@functools.cache
def static_density(pattern: Pattern, M: int, N: int, device: str | None = None) -> float:
    """Allowed ÷ causal pairs, exact (cached: every layer asks): from the block layout, or
    with `device` by counting the predicate a chunk of rows at a time there (the layout of
    a pattern with many partial blocks takes seconds at 32K tokens; a GPU counts at once)."""
    if device is None or pattern.is_mixture:
        return pattern.density(M, N)
    allowed = count_allowed(pattern.node, M, N, torch.device(device))
    causal = sum(min(N, max(0, i + N - M + 1)) for i in range(M)) if M != N else N * (N + 1) // 2
    return allowed / causal


def save_scores(scores: Scores, path, key: dict) -> None:
    """Write `scores` to `path` (.npz) with `key`: what they were computed from (model,
    calibration lengths, samples, seed, candidates), so a later search with other budgets
    or objectives can reuse them (`load_scores`)."""
    import json

    arrays = {name: getattr(scores, name) for name in (*PER_ROW_SET, "density")}
    np.savez_compressed(path, key=json.dumps(key, sort_keys=True), **arrays)


def load_scores(path, candidates: tuple[Candidate, ...], key: dict) -> Scores | None:
    """The scores saved at `path` if they were computed from exactly `key`, else None."""
    import json
    from pathlib import Path

    if not Path(path).exists():
        return None
    with np.load(path) as saved:
        if str(saved["key"]) != json.dumps(key, sort_keys=True):
            return None
        arrays = {name: saved[name] for name in (*PER_ROW_SET, "density")}
    return Scores(list(key["lengths"]), candidates, **arrays)

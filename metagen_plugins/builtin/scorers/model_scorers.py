"""Scorers backed by local transformers checkpoints: outcome and process reward models, and two
generative verifiers: an LLM judge, and a causal LM's likelihood of each step."""

from __future__ import annotations

import math
from typing import Callable, Literal, Sequence

from metagen_hooks import Candidate

from metagen_hooks.run import aggregate_steps

from .gather import Gathered


def _classifier(path: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ...errors import HostError
    from ...models import resolve

    path = resolve(path, what="the reward model")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise HostError(f"could not load a sequence-classification reward model from {path!r}: {exc}") from None
    return model, tokenizer


def _causal_lm(path: str, what: str):
    """A causal LM and its tokenizer from a local checkpoint or a model name (``what`` names it in
    errors); the model is shared with every other user of the same checkpoint."""
    from ...models import load_model_cached, load_tokenizer, resolve

    return load_model_cached(path, what=what), load_tokenizer(resolve(path, what=what))


def _reward(model, tokenizer, texts: list[str], batch_size: int) -> list[float]:
    """P(good) for each text: sigmoid of a single logit, or softmax's last class of several."""
    import torch

    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = model(**enc).logits.float()
        probs = logits.sigmoid()[:, 0] if logits.shape[-1] == 1 else logits.softmax(-1)[:, -1]
        out += probs.tolist()
    return out


class OutcomeRewardModel:
    """An outcome reward model (Cobbe et al., 2021): a sequence classifier, loaded from a local
    checkpoint, scoring prompt + whole candidate by its probability of being right."""

    def __init__(self, path: str, batch_size: int = 32) -> None:
        self.model, self.tokenizer = _classifier(path)
        self.batch_size = batch_size
        # Prompts scored at the same time (the runner's workers) share forward passes.
        self._reward = Gathered(lambda texts: _reward(self.model, self.tokenizer, texts, self.batch_size))

    def score(self, prompt: str, candidates: Sequence[Candidate]) -> list[float]:
        return self._reward([prompt + c.text for c in candidates])


class StepRewards:
    """What a process reward model does with its classifier, wherever the classifier runs: score
    every step prefix of a candidate (steps end at ``delimiter``) with ``self._reward`` (texts ->
    P(good)) and aggregate a candidate's step scores by ``last``, ``min`` or ``prod``."""

    delimiter: str
    aggregate: str
    _reward: Callable[[list[str]], list[float]]

    def _prefixes(self, text: str) -> list[str]:
        pieces = text.split(self.delimiter)
        prefixes = [self.delimiter.join(pieces[: i + 1]) + (self.delimiter if i < len(pieces) - 1 else "")
                    for i in range(len(pieces))]
        return [p for p in prefixes if p.strip()] or [text]

    def score_steps(self, prompt: str, candidates: Sequence[Candidate]) -> list[list[float]]:
        spans, texts = [], []
        for c in candidates:
            prefixes = self._prefixes(c.text)
            spans.append(len(prefixes))
            texts += [prompt + p for p in prefixes]
        flat = self._reward(texts)
        out, start = [], 0
        for n in spans:
            out.append(flat[start:start + n])
            start += n
        return out

    def score(self, prompt: str, candidates: Sequence[Candidate]) -> list[float]:
        return [aggregate_steps(s, self.aggregate) for s in self.score_steps(prompt, candidates)]


class ProcessRewardModel(StepRewards):
    """A process reward model (Lightman et al., 2023; Uesato et al., 2022): the classifier scores
    every step prefix (steps end at ``delimiter``); a candidate's score aggregates its step
    scores by ``last``, ``min`` or ``prod``."""

    def __init__(self, path: str, delimiter: str = ". ", aggregate: Literal["last", "min", "prod"] = "min",
                 batch_size: int = 64) -> None:
        self.model, self.tokenizer = _classifier(path)
        self.delimiter, self.aggregate, self.batch_size = delimiter, aggregate, batch_size
        # Prompts scored at the same time (the runner's workers) share forward passes.
        self._reward = Gathered(lambda texts: _reward(self.model, self.tokenizer, texts, self.batch_size))


class LLMJudge:
    """LLM-as-judge (a generative verifier; Zheng et al., 2023; Zhang et al., 2024): fill
    ``template`` ({prompt}, {answer}) and read the judge's probability of ``yes`` against ``no``
    as its next token. The judge is ``judge`` (a local model) or, by default, the host's model."""

    def __init__(self, template: str = "{prompt}{answer}\nIs this answer correct? Answer Yes or No: ",
                 yes: str = "Yes", no: str = "No", judge: str | None = None, model=None, tokenizer=None) -> None:
        try:
            template.format(prompt="", answer="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"template may use only {{prompt}} and {{answer}}: {exc}") from None
        if judge is not None:
            model, tokenizer = _causal_lm(judge, "the judge")
        if model is None or tokenizer is None:
            raise ValueError("llm_judge needs a judge: set judge = \"/path/to/model\" or run on the "
                             "transformers host, whose model judges")
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.yes, self.no = self._token(yes), self._token(no)
        # Prompts judged at the same time (the runner's workers) share forward passes.
        self._judged = Gathered(self._judge)

    def _token(self, word: str) -> int:
        ids = self.tokenizer(word, add_special_tokens=False).input_ids
        if not ids:
            raise ValueError(f"{word!r} is no token of the judge's tokenizer")
        return ids[0]

    def score(self, prompt: str, candidates: Sequence[Candidate]) -> list[float]:
        return self._judged([self.template.format(prompt=prompt, answer=c.text) for c in candidates])

    def _judge(self, texts: list[str], batch_size: int = 16) -> list[float]:
        """P(yes) against no after each text: left-padded batches (positions counted from each
        row's first real token, as generate() does), the last position's logits."""
        import torch

        encoded = [self.tokenizer(text).input_ids for text in texts]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = []
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            length = max(len(ids) for ids in chunk)
            ids = torch.tensor([[pad] * (length - len(row)) + row for row in chunk])
            mask = torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in chunk])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                logits = self.model(ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()
            out += torch.stack([logits[:, self.yes], logits[:, self.no]], -1).softmax(-1)[:, 0].tolist()
        return out


class StepLikelihood:
    """A generative process verifier: a causal language model (``path``: a local checkpoint or a
    model name) reads prompt + candidate, and each step (steps end at ``delimiter``) scores the
    verifier's probability of that step's tokens given everything before them; a candidate's
    score aggregates its step scores by ``min`` (default), ``last`` or ``prod`` (the whole text's
    probability).

    A verifier trained on right solutions puts little probability on a wrong claim (``37+48=86``)
    wherever it stands in the text, which is what selection needs; a sequence classifier trained
    on the policy's own samples can instead learn only which problems are hard (see
    docs/real-model.md). The verifier is a model of its own, not the policy: the policy's
    likelihood of its own samples prefers its own mistakes."""

    def __init__(self, path: str, delimiter: str = ". ", aggregate: Literal["last", "min", "prod"] = "min",
                 batch_size: int = 32) -> None:
        if not delimiter:
            raise ValueError("step_likelihood: delimiter must not be empty (it is what ends a step, e.g. \". \")")
        self.model, self.tokenizer = _causal_lm(path, "the step_likelihood verifier")
        if not self.tokenizer.is_fast:
            raise ValueError(f"step_likelihood: the verifier {path!r} has no fast tokenizer, which the "
                             "scorer needs to place tokens in steps (character offsets)")
        self.delimiter, self.aggregate, self.batch_size = delimiter, aggregate, batch_size
        # Prompts scored at the same time (the runner's workers) share forward passes.
        self._steps = Gathered(self._step_probabilities)

    def score_steps(self, prompt: str, candidates: Sequence[Candidate]) -> list[list[float]]:
        return self._steps([(prompt, c.text) for c in candidates])

    def score(self, prompt: str, candidates: Sequence[Candidate]) -> list[float]:
        return [aggregate_steps(s, self.aggregate) for s in self.score_steps(prompt, candidates)]

    def _spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the steps of ``text``; a step keeps its delimiter."""
        spans, start = [], 0
        while start < len(text):
            end = text.find(self.delimiter, start)
            end = len(text) if end < 0 else end + len(self.delimiter)
            spans.append((start, end))
            start = end
        return spans

    def _step_probabilities(self, items: list[tuple[str, str]]) -> list[list[float]]:
        """Per item, the probability of each step that holds at least one token of its own.
        Rows are right-padded, so every real token sees the positions and context it would alone."""
        import torch

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = []
        for first in range(0, len(items), self.batch_size):
            chunk = items[first:first + self.batch_size]
            encoded = [self.tokenizer(prompt + text, return_offsets_mapping=True) for prompt, text in chunk]
            length = max(len(e.input_ids) for e in encoded)
            ids = torch.tensor([e.input_ids + [pad] * (length - len(e.input_ids)) for e in encoded])
            mask = torch.tensor([[1] * len(e.input_ids) + [0] * (length - len(e.input_ids)) for e in encoded])
            with torch.no_grad():
                logprobs = self.model(ids, attention_mask=mask).logits.float().log_softmax(-1)
            # token_logprobs[row][i - 1] = log P(token i | tokens before it)
            token_logprobs = logprobs[:, :-1].gather(-1, ids[:, 1:, None])[..., 0].tolist()
            for row, ((prompt, text), e) in enumerate(zip(chunk, encoded)):
                sums = {}
                spans = self._spans(text)
                for i in range(1, len(e.input_ids)):
                    begin = e.offset_mapping[i][0] - len(prompt)
                    if begin < 0 or e.offset_mapping[i][1] <= e.offset_mapping[i][0]:
                        continue  # a prompt token, or a special token the tokenizer added
                    step = next(k for k, (a, b) in enumerate(spans) if a <= begin < b)
                    sums[step] = sums.get(step, 0.0) + token_logprobs[row][i - 1]
                out.append([math.exp(sums[k]) for k in sorted(sums)])
        return out


def register_all(register) -> None:
    register("outcome_reward_model", OutcomeRewardModel, reads_logprobs=False)
    register("process_reward_model", ProcessRewardModel, caller=("aggregate",), reads_logprobs=False)
    register("llm_judge", LLMJudge, reads_logprobs=False)
    register("step_likelihood", StepLikelihood, caller=("aggregate",), reads_logprobs=False)

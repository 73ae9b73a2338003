"""Training the demo process reward model (demo-arith-prm) so that it ranks the candidates of one
problem, which is what best-of-N and step search ask of it.

The earlier verifier was trained on each step prefix as its own example with one label (binary
cross-entropy): it learned which *problems* the main model gets wrong (pooled AUC ~0.8) but not
which *samples* of a problem are wrong (within-problem AUC ~0.5), so best-of-16 with it fell below
a random sample. Three changes, each aimed at the within-problem ranking:

- **Groups of one problem.** Every batch holds a few problems with several solutions each: the
  main model's own samples, the reference solution, and reference solutions with one step's
  result corrupted (off by a few units or tens, or its digits swapped; later steps stay
  consistent with the wrong value, as the model's own slips do). Right and wrong solutions of
  one problem then differ only in their arithmetic.
- **A ranking loss within a problem**: a pairwise logistic loss between a right and a wrong
  prefix of the same problem at the same step, added to the per-step cross-entropy (which keeps
  the scores usable as probabilities for `min`/`last` aggregation and thresholds).
- **Every step of a solution in one pass**: a causal classifier's score at the last token of a
  step is its score for that prefix, so one forward pass supervises every step end (the label:
  all steps so far right; at the end, also the right answer), several times the labelled
  prefixes per CPU second of scoring each prefix separately.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

from .task import STEP_DELIMITER, Problem, check_steps, is_correct, parse_question, problems, split_steps

SLIPS = (1, 2, 3, 9, 10, 11, 20)
"""How far a corrupted step's result lands from the right one (either sign)."""


def corrupt(problem: Problem, rng: random.Random) -> str:
    """The reference solution with one step's result wrong; later steps build on the wrong value."""
    wrong_at = rng.randrange(len(problem.operators))
    value, steps = problem.operands[0], []
    for k, (op, x) in enumerate(zip(problem.operators, problem.operands[1:])):
        result = value + x if op == "+" else value - x
        if k == wrong_at:
            digits = str(result)
            if rng.random() < 0.75 or len(digits) < 2 or digits[::-1] == digits:
                slipped = result + rng.choice(SLIPS) * rng.choice((1, -1))
            else:
                slipped = int(digits[::-1])  # swapped digits
            result = slipped if slipped >= 0 else result + 1
        steps.append(f"{value}{op}{x}={result}")
        value = result
    return " " + "".join(s + STEP_DELIMITER for s in steps) + f"#### {value}"


def labelled_steps(tokenizer, prompt: str, text: str) -> tuple[list[int], list[tuple[int, float, int]], list]:
    """Token ids of prompt + text; for each step end and the end, (position of its last token,
    label, step index; -1 for the end); and per text token, (position, label). A step's label is
    1 while every step so far is right; the end's also needs the right final answer; a token's is
    1 while the text so far is a prefix of the (unique) right solution, so the first wrong digit
    is labelled where it is written."""
    ids = tokenizer(prompt + text).input_ids
    verdicts = check_steps(prompt, text)
    pieces = text.split(STEP_DELIMITER)
    marks = []
    for k in range(len(split_steps(text))):
        prefix = prompt + STEP_DELIMITER.join(pieces[:k + 1]) + STEP_DELIMITER
        end = len(tokenizer(prefix).input_ids)
        if end < len(ids):
            marks.append((end - 1, float(all(verdicts[:k + 1])), k))
    marks.append((len(ids) - 1, float(is_correct(prompt, text) and all(verdicts)), -1))
    reference = parse_question(prompt).solution
    first = len(ids) - len(text)  # one token per character
    tokens = [(first + t, float(text[:t + 1] == reference[:t + 1])) for t in range(len(text) - 1)]
    return ids, marks, tokens


def verifier_model(init: Path):
    """The main model's layers plus one more, as a sequence classifier. The added layer starts
    as the identity (its output projections are zero) and sees the main model's last hidden
    state at every position, where the next token's prediction is: comparing the written digit
    with the predicted one is then one attention to the previous position, where with the main
    model's layers alone it would have to compute the arithmetic again one position later."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM, LlamaForSequenceClassification

    config = AutoConfig.from_pretrained(init)
    config.num_hidden_layers += 1
    config.num_labels, config.pad_token_id = 1, 0
    model = LlamaForSequenceClassification(config)
    state = LlamaForCausalLM.from_pretrained(init).state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k.startswith("model.")}, strict=False)
    added = model.model.layers[-1]
    with torch.no_grad():
        added.self_attn.o_proj.weight.zero_()
        added.mlp.down_proj.weight.zero_()
    return model


def verifier_groups(model, tokenizer, count: int, seed: int, exclude: set[str], samples: int = 4,
                    corrupted: int = 3) -> list[list[tuple[list[int], list]]]:
    """Per training problem: the main model's ``samples`` samples (T = 0.8), the reference solution
    and ``corrupted`` corrupted ones, each as :func:`labelled_steps`."""
    import torch

    items = problems(count, seed + 7, exclude)
    torch.manual_seed(seed)
    sampled: dict[str, list[str]] = {}
    for i in range(0, len(items), 100):
        chunk = [p for p in items[i:i + 100] for _ in range(samples)]
        inputs = tokenizer([p.prompt for p in chunk], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=48, do_sample=True, temperature=0.8, top_k=0,
                                 pad_token_id=0)
        texts = tokenizer.batch_decode(out[:, inputs.input_ids.shape[1]:], skip_special_tokens=True)
        for p, text in zip(chunk, texts):
            sampled.setdefault(p.prompt, []).append(text)
    rng = random.Random(seed)
    return [[labelled_steps(tokenizer, p.prompt, t)
             for t in sampled[p.prompt] + [p.solution] + [corrupt(p, rng) for _ in range(corrupted)]]
            for p in items]


def train_verifier(groups, steps: int, seed: int, init: Path, problems_per_batch: int = 16,
                   solutions_per_problem: int = 4, lr: float = 1e-3, ranking_weight: float = 1.0):
    """A sequence classifier (one logit) started from the main model's weights (``init``), as
    reward models start from their policy, trained on :func:`verifier_groups` with per-step
    cross-entropy plus the within-problem ranking loss. Returns it in eval mode."""
    import torch
    from torch.nn.functional import binary_cross_entropy_with_logits, softplus

    torch.manual_seed(seed)
    model = verifier_model(init)
    added = {id(p) for p in [*model.model.layers[-1].parameters(), *model.score.parameters()]}
    # The main model's layers fine-tune at a fifth of the rate: they already compute the digits.
    optimizer = torch.optim.AdamW([
        {"params": [p for p in model.parameters() if id(p) in added], "scale": 1.0},
        {"params": [p for p in model.parameters() if id(p) not in added], "scale": 0.2}], lr=lr, weight_decay=0.01)
    rng = random.Random(seed)
    start = time.perf_counter()
    for step in range(steps):
        rows = []
        for g in rng.sample(range(len(groups)), problems_per_batch):
            picked = rng.sample(range(len(groups[g])), min(solutions_per_problem, len(groups[g])))
            rows += [(g, *groups[g][j]) for j in picked]
        width = max(len(r[1]) for r in rows)
        ids = torch.tensor([r[1] + [0] * (width - len(r[1])) for r in rows])
        mask = torch.tensor([[1] * len(r[1]) + [0] * (width - len(r[1])) for r in rows])
        marks = [(i, r[0], *m) for i, r in enumerate(rows) for m in r[2]]
        row, group, position, label, depth = (torch.tensor(col) for col in zip(*marks))
        tokens = [(i, *t) for i, r in enumerate(rows) for t in r[3]]
        token_row, token_position, token_label = (torch.tensor(col) for col in zip(*tokens))
        for param_group in optimizer.param_groups:
            param_group["lr"] = param_group["scale"] * lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        scores = model.score(model.model(input_ids=ids, attention_mask=mask).last_hidden_state)[..., 0]
        logits = scores[row, position]
        loss = (binary_cross_entropy_with_logits(logits, label)
                + binary_cross_entropy_with_logits(scores[token_row, token_position], token_label))
        pairs = (group[:, None] == group[None, :]) & (depth[:, None] == depth[None, :]) & (label[:, None] > label[None, :])
        if ranking_weight and pairs.any():
            loss = loss + ranking_weight * softplus(logits[None, :] - logits[:, None])[pairs].mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  step {step:4d}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f} s", flush=True)
    return model.eval()

"""Train the demo models, deterministically from a seed, in minutes on a 2-core CPU.

    python -m metagen_plugins.demo.train [--out DIR] [--stages main,draft,prm]

Writes ``DIR/demo-arith`` (a 4-layer Llama, ~1.8M parameters), ``DIR/demo-arith-draft``
(1 layer, same tokenizer, for speculative decoding), ``DIR/demo-arith-verifier`` and
``DIR/demo-arith-prm`` as ordinary ``from_pretrained`` checkpoints with a character-level
tokenizer, and prints greedy accuracy on the held-out problems. The main model stops early on
purpose (``--stop-at``): greedy accuracy stays moderate, leaving headroom for test-time compute.

The two verifiers:

- ``demo-arith-verifier``, the one that helps: the main network trained on from its checkpoint to
  the end of its schedule, used by the ``step_likelihood`` scorer (its probability of each step).
  It knows more arithmetic than the policy it checks, as a verifier must: checking ``37+48=85``
  takes the same skill as writing it.
- ``demo-arith-prm``, kept as a sequence classifier for reward-model plumbing (in process and
  served by vLLM): started from the main model and trained on its own samples cut at every step,
  labelled by the exact step checker. It learns which problems are hard, not whether a step's
  digits are right, and selects below a random sample (docs/real-model.md).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time
from pathlib import Path

from .task import CHARACTERS, is_correct, problems, random_problem

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
HELD_OUT_SEED, HELD_OUT_SIZE = 1234, 200
CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"


def held_out() -> list:
    return problems(HELD_OUT_SIZE, HELD_OUT_SEED)


def make_tokenizer():
    """Character-level tokenizer; prompts start with ``<s>``; left padding for batches."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL + list(CHARACTERS))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>", padding_side="left")


def model_config(vocab: int, layers: int, hidden: int, heads: int, ffn: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=heads, head_dim=hidden // heads,
                       max_position_embeddings=128, tie_word_embeddings=True, bos_token_id=1,
                       eos_token_id=2, pad_token_id=0)


def batch(tokenizer, items):
    """Right-padded token rows ``<s> prompt solution </s>`` with the loss on the solution only."""
    import torch

    rows, labels = [], []
    for p in items:
        prompt = tokenizer(p.prompt).input_ids
        solution = tokenizer(p.solution, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        rows.append(prompt + solution)
        labels.append([-100] * len(prompt) + solution)
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    target = torch.tensor([l + [-100] * (width - len(l)) for l in labels])
    return ids, mask, target


def train(config, tokenizer, steps: int, seed: int, exclude: set[str], lr: float = 1e-3, size: int = 64,
          evaluate=None, stop_at: int | None = None, resume: tuple[Path, int] | None = None,
          bf16: bool = True):
    """AdamW with a cosine schedule over ``steps``; training ends at ``stop_at`` (default: the
    end of the schedule). ``resume = (checkpoint, step)`` goes on from a checkpoint saved at
    ``step`` of the same schedule (with a fresh optimizer) instead of starting from ``config``.
    ``bf16`` trains under bfloat16 autocast, which is fast only on CPUs with bfloat16 arithmetic
    (about 10x slower than float32 on one without). Returns the model in eval mode."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config) if resume is None else LlamaForCausalLM.from_pretrained(resume[0]).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rng = random.Random(seed)
    start = time.perf_counter()
    for step in range(resume[1] if resume else 0, min(steps, stop_at or steps)):
        items = []
        while len(items) < size:
            p = random_problem(rng)
            if p.question not in exclude:
                items.append(p)
        ids, mask, target = batch(tokenizer, items)
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, attention_mask=mask, labels=target).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  step {step:4d}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f} s", flush=True)
        if evaluate is not None and step % 300 == 299:
            print(f"  step {step:4d}  held-out greedy accuracy {greedy_accuracy(model.eval(), tokenizer, evaluate):.1%}",
                  flush=True)
            model.train()
    return model.eval()


def greedy_accuracy(model, tokenizer, items) -> float:
    import torch

    correct = 0
    for i in range(0, len(items), 100):
        chunk = items[i:i + 100]
        inputs = tokenizer([p.prompt for p in chunk], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=48, do_sample=False, pad_token_id=0)
        texts = tokenizer.batch_decode(out[:, inputs.input_ids.shape[1]:], skip_special_tokens=True)
        correct += sum(is_correct(p.prompt, t) for p, t in zip(chunk, texts))
    return correct / len(items)


def verifier_examples(model, tokenizer, count: int, seed: int, exclude: set[str]):
    """The main model's own samples (T = 0.8) cut at every step, each prefix labelled by the
    exact checker: 1 while every step so far is right (and, for a whole solution, the answer)."""
    import torch

    from .task import check_steps, is_correct, split_steps

    items = [p for p in problems(count, seed + 7, exclude)]
    torch.manual_seed(seed)
    texts, labels = [], []
    for i in range(0, len(items), 100):
        chunk = [p for p in items[i:i + 100] for _ in range(4)]
        inputs = tokenizer([p.prompt for p in chunk], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=48, do_sample=True, temperature=0.8, top_k=0,
                                 pad_token_id=0)
        for p, text in zip(chunk, tokenizer.batch_decode(out[:, inputs.input_ids.shape[1]:],
                                                        skip_special_tokens=True)):
            verdicts = check_steps(p.prompt, text)
            pieces = text.split(". ")
            for k in range(len(split_steps(text))):
                texts.append(p.prompt + ". ".join(pieces[:k + 1]) + ". ")
                labels.append(float(all(verdicts[:k + 1])))
            texts.append(p.prompt + text)
            labels.append(float(is_correct(p.prompt, text) and all(verdicts)))
    return texts, labels


def train_verifier(texts, labels, tokenizer, steps: int, seed: int, init: Path, size: int = 64):
    """A sequence classifier (one logit) on step prefixes: the demo process reward model. It
    starts from the main model's weights (``init``), as reward models start from their policy:
    a classifier trained from scratch at this size learns the problems' difficulty, not whether
    their arithmetic is right."""
    import torch
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    model = LlamaForSequenceClassification.from_pretrained(init, num_labels=1, pad_token_id=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    rng = random.Random(seed)
    order = list(range(len(texts)))
    start = time.perf_counter()
    for step in range(steps):
        pick = [order[rng.randrange(len(order))] for _ in range(size)]
        enc = tokenizer([texts[i] for i in pick], return_tensors="pt", padding=True)
        target = torch.tensor([labels[i] for i in pick])
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        logits = model(**enc).logits[:, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  step {step:4d}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f} s", flush=True)
    return model.eval()


def save(model, tokenizer, path: Path) -> None:
    import json

    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # loadable by older transformers too
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(CHECKPOINTS))
    parser.add_argument("--steps", type=int, default=1000, help="length of the main model's cosine schedule")
    parser.add_argument("--stop-at", type=int, default=600,
                        help="stop the main model here: accuracy rises steeply (7%% at 300, 42%% at 600, "
                             "80%% at 900 of this schedule), and test-time compute needs headroom")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine decay, AdamW)")
    parser.add_argument("--draft-steps", type=int, default=600)
    parser.add_argument("--verifier-steps", type=int, default=1200, help="demo-arith-prm's training steps")
    parser.add_argument("--verifier-seed", type=int, default=1,
                        help="demo-arith-verifier's data seed (it goes on from demo-arith to --steps in float32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", default="main,draft,verifier,prm",
                        help="which models to train (verifier and prm start from the saved main model in --out)")
    parser.add_argument("--heads", type=int, default=6, help="attention heads of the main model (hidden 192)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spin-waiting is ruinous on a busy 2-core box
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    tokenizer = make_tokenizer()
    evaluation = held_out()
    exclude = {p.question for p in evaluation}
    out = Path(args.out)
    stages = set(args.stages.split(","))
    for name, shape, steps in (("demo-arith", (4, 192, args.heads, 512), args.steps),
                               ("demo-arith-draft", (1, 128, 2, 256), args.draft_steps)):
        if (name == "demo-arith" and "main" not in stages) or (name == "demo-arith-draft" and "draft" not in stages):
            continue
        print(f"training {name}: layers, hidden, heads, ffn = {shape}; {steps} steps", flush=True)
        main = name == "demo-arith"
        model = train(model_config(len(tokenizer), *shape), tokenizer, steps, args.seed, exclude, lr=args.lr,
                      evaluate=evaluation if main else None, stop_at=args.stop_at if main else None)
        accuracy = greedy_accuracy(model, tokenizer, evaluation)
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {params / 1e6:.2f}M parameters, greedy accuracy {accuracy:.1%} on "
              f"{len(evaluation)} held-out problems", flush=True)
        save(model, tokenizer, out / name)
    if "verifier" in stages:
        # bfloat16 autocast is ~10x slower than float32 on a CPU without bfloat16 arithmetic.
        print(f"training demo-arith-verifier: demo-arith from step {args.stop_at} to {args.steps} of its schedule",
              flush=True)
        verifier = train(model_config(len(tokenizer), 4, 192, args.heads, 512), tokenizer, args.steps,
                         args.verifier_seed, exclude, lr=args.lr, resume=(out / "demo-arith", args.stop_at), bf16=False)
        print(f"demo-arith-verifier: greedy accuracy {greedy_accuracy(verifier, tokenizer, evaluation):.1%} on "
              f"{len(evaluation)} held-out problems (it verifies; the policy is demo-arith)", flush=True)
        save(verifier, tokenizer, out / "demo-arith-verifier")
    if "prm" not in stages:
        return
    from transformers import LlamaForCausalLM

    print(f"training demo-arith-prm on the main model's own samples; {args.verifier_steps} steps", flush=True)
    main_model = LlamaForCausalLM.from_pretrained(out / "demo-arith").eval()
    texts, labels = verifier_examples(main_model, tokenizer, 1500, args.seed, exclude)
    print(f"  {len(texts)} step prefixes, {sum(labels) / len(labels):.1%} labelled right", flush=True)
    verifier = train_verifier(texts, labels, tokenizer, args.verifier_steps, args.seed, init=out / "demo-arith")
    save(verifier, tokenizer, out / "demo-arith-prm")


if __name__ == "__main__":
    main()

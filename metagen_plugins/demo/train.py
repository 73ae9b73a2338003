"""Train the demo models, deterministically from a seed, in minutes on a 2-core CPU.

    python -m metagen_plugins.demo.train [--out DIR] [--steps N] [--draft-steps N]

Writes ``DIR/demo-arith`` (a 4-layer Llama, ~1.8M parameters, head_dim 64 so vLLM's CPU
attention accepts it) and ``DIR/demo-arith-draft`` (1 layer, same tokenizer) as ordinary
``from_pretrained`` checkpoints with a character-level tokenizer, and prints greedy accuracy on
the held-out problems. Training is stopped early on purpose: greedy accuracy stays moderate,
leaving headroom for test-time compute.
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


def train(config, tokenizer, steps: int, seed: int, exclude: set[str], lr: float = 3e-3, size: int = 64):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    rng = random.Random(seed)
    start = time.perf_counter()
    for step in range(steps):
        items = []
        while len(items) < size:
            p = random_problem(rng)
            if p.question not in exclude:
                items.append(p)
        ids, mask, target = batch(tokenizer, items)
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=mask, labels=target).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  step {step:4d}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f} s", flush=True)
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
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--draft-steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heads", type=int, default=6, help="attention heads of the main model (hidden 192)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spin-waiting is ruinous on a busy 2-core box
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    tokenizer = make_tokenizer()
    evaluation = held_out()
    exclude = {p.question for p in evaluation}
    out = Path(args.out)
    for name, shape, steps in (("demo-arith", (4, 192, args.heads, 512), args.steps),
                               ("demo-arith-draft", (1, 128, 2, 256), args.draft_steps)):
        print(f"training {name}: layers, hidden, heads, ffn = {shape}; {steps} steps", flush=True)
        model = train(model_config(len(tokenizer), *shape), tokenizer, steps, args.seed, exclude)
        accuracy = greedy_accuracy(model, tokenizer, evaluation)
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {params / 1e6:.2f}M parameters, greedy accuracy {accuracy:.1%} on "
              f"{len(evaluation)} held-out problems", flush=True)
        save(model, tokenizer, out / name)


if __name__ == "__main__":
    main()

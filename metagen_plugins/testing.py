"""Tiny local models for tests, benchmarks and plugin authors' own tests (no hub access needed).

``tiny_model_dir(path)`` writes a random-weight Llama and a character-level tokenizer to a
directory that ``from_pretrained`` loads like any checkpoint.
"""

from __future__ import annotations

from pathlib import Path

CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789 .,:;!?=+-*/#\n{}[]\"'_()")
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]


def tiny_tokenizer():
    """A character-level ``PreTrainedTokenizerFast`` (special tokens first, then CHARS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL + CHARS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        unk_token="<unk>", padding_side="left",
    )


def tiny_model(vocab_size: int, *, layers: int = 2, hidden: int = 64, heads: int = 4,
               kv_heads: int | None = None, seed: int = 0, max_positions: int = 2048):
    """A random-weight ``LlamaForCausalLM``; the same seed gives the same weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
        max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def tiny_model_dir(path: str | Path, **model_kwargs) -> Path:
    """Save a tiny model and its tokenizer to ``path`` (created) and return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer()
    tiny_model(len(tokenizer), **model_kwargs).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

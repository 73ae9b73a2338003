"""Token-level logits processors that transformers already implements.

Each factory returns transformers' own class, so in-process metagen applies exactly what
``generate()`` would; each serving engine maps the same parameters onto its request parameters in
its own package (``metagen_plugins/engines/<engine>/realisations.py``). transformers (the
library) is imported only when a processor is built.
"""

from __future__ import annotations


def temperature(temperature: float):
    """Divide logits by ``temperature`` (Ackley et al., 1985): <1 sharpens, >1 flattens."""
    from transformers.generation.logits_process import TemperatureLogitsWarper

    return TemperatureLogitsWarper(temperature)


def top_k(top_k: int, min_tokens_to_keep: int = 1):
    """Keep the ``top_k`` most likely tokens (Fan et al., 2018)."""
    from transformers.generation.logits_process import TopKLogitsWarper

    return TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=min_tokens_to_keep)


def top_p(top_p: float, min_tokens_to_keep: int = 1):
    """Nucleus sampling: keep the smallest set of tokens with mass >= ``top_p`` (Holtzman et al., 2020)."""
    from transformers.generation.logits_process import TopPLogitsWarper

    return TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=min_tokens_to_keep)


def min_p(min_p: float, min_tokens_to_keep: int = 1):
    """Keep tokens whose probability is >= ``min_p`` x the top token's (Nguyen et al., 2024)."""
    from transformers.generation.logits_process import MinPLogitsWarper

    return MinPLogitsWarper(min_p=min_p, min_tokens_to_keep=min_tokens_to_keep)


def typical(mass: float = 0.9, min_tokens_to_keep: int = 1):
    """Locally typical sampling (Meister et al., 2023): keep tokens whose surprise is close to
    the distribution's entropy, up to ``mass``."""
    from transformers.generation.logits_process import TypicalLogitsWarper

    return TypicalLogitsWarper(mass=mass, min_tokens_to_keep=min_tokens_to_keep)


def epsilon(epsilon: float, min_tokens_to_keep: int = 1):
    """Epsilon sampling (Hewitt et al., 2022): drop tokens with probability below ``epsilon``."""
    from transformers.generation.logits_process import EpsilonLogitsWarper

    return EpsilonLogitsWarper(epsilon=epsilon, min_tokens_to_keep=min_tokens_to_keep)


def eta(epsilon: float, min_tokens_to_keep: int = 1):
    """Eta sampling (Hewitt et al., 2022): an entropy-dependent cutoff
    ``min(epsilon, sqrt(epsilon) * exp(-entropy))``."""
    from transformers.generation.logits_process import EtaLogitsWarper

    return EtaLogitsWarper(epsilon=epsilon, min_tokens_to_keep=min_tokens_to_keep)


def repetition_penalty(penalty: float):
    """Divide positive (multiply negative) logits of tokens already present (Keskar et al., 2019)."""
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    return RepetitionPenaltyLogitsProcessor(penalty=penalty)


def no_repeat_ngram(ngram_size: int):
    """Forbid any n-gram of ``ngram_size`` tokens from occurring twice."""
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

    return NoRepeatNGramLogitsProcessor(ngram_size)


def logit_bias(bias: dict[str, float]):
    """Add a bias to single tokens' logits, keyed by token id (as TOML keys are strings: {"42" = -5.0})."""
    from transformers.generation.logits_process import SequenceBiasLogitsProcessor

    try:
        pairs = [[[int(token)], float(value)] for token, value in bias.items()]
    except ValueError:
        raise ValueError(f"bias keys must be token ids such as '42', got {list(bias)!r}") from None
    return SequenceBiasLogitsProcessor(sequence_bias=pairs)


def sequence_bias(bias: list[list]):
    """Add a bias to the last token of token sequences: ``[[[id, id, ...], bias], ...]``."""
    from transformers.generation.logits_process import SequenceBiasLogitsProcessor

    return SequenceBiasLogitsProcessor(sequence_bias=bias)


def bad_words(bad_words_ids: list[list[int]]):
    """Ban token sequences: the last token of each is masked when the rest was just generated."""
    from transformers.generation.logits_process import NoBadWordsLogitsProcessor

    return NoBadWordsLogitsProcessor(bad_words_ids=bad_words_ids)


def watermark(greenlist_ratio: float = 0.25, bias: float = 2.0, hashing_key: int = 15485863,
              seeding_scheme: str = "lefthash", context_width: int = 1, model=None):
    """Watermark the text (Kirchenbauer et al., 2023): add ``bias`` to a pseudo-random "green list"
    of ``greenlist_ratio`` of the vocabulary, seeded by the previous token(s), so a detector that
    knows the key can tell generated text. transformers' WatermarkLogitsProcessor (a serving
    engine may realise it as a switch of its own, with ratio and bias set at launch)."""
    from transformers.generation.logits_process import WatermarkLogitsProcessor

    if not 0.0 < greenlist_ratio < 1.0:
        raise ValueError(f"greenlist_ratio must be in (0, 1), got {greenlist_ratio}")
    return WatermarkLogitsProcessor(vocab_size=model.config.vocab_size, device=model.device,
                                    greenlist_ratio=greenlist_ratio, bias=bias, hashing_key=hashing_key,
                                    seeding_scheme=seeding_scheme, context_width=context_width)


def register_all(register) -> None:
    # How each runs on a serving engine is the engine's (metagen_plugins/engines/<engine>/realisations.py).
    register("temperature", temperature, caller=("temperature",), sampling=True)
    register("top_k", top_k, caller=("top_k", "min_tokens_to_keep"), sampling=True)
    register("top_p", top_p, caller=("top_p", "min_tokens_to_keep"), sampling=True)
    register("min_p", min_p, caller=("min_p", "min_tokens_to_keep"), sampling=True)
    register("typical", typical, caller=("mass", "min_tokens_to_keep"), sampling=True)
    register("epsilon", epsilon, caller=("epsilon", "min_tokens_to_keep"), sampling=True)
    register("eta", eta, caller=("epsilon", "min_tokens_to_keep"), sampling=True)
    register("repetition_penalty", repetition_penalty, caller=("penalty",))
    register("no_repeat_ngram", no_repeat_ngram, caller=("ngram_size",), constraint=True)
    register("logit_bias", logit_bias, caller=("bias",))
    register("sequence_bias", sequence_bias)
    register("bad_words", bad_words, constraint=True)
    register("watermark", watermark)

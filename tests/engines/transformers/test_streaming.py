"""What the runner may hand the transformers host's generators besides a budget: the text of
plain decoding streamed live (``on_text``), and a conversation the prompt continues."""

from __future__ import annotations

import threading

import pytest

import metagen_plugins
from metagen_hooks import Budget
from metagen_plugins.errors import ConfigError, HostError
from metagen_plugins.engines.transformers.host import TransformersHost
from metagen_plugins.runner import Runner

# A minimal chat template (the tiny test tokenizer has none): role tags and an assistant cue.
TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def host(tiny, **settings) -> TransformersHost:
    model, tok = tiny
    registry = metagen_plugins.get_registry()
    config = metagen_plugins.validate({"host": settings, "generation": {"max_new_tokens": 12}}, registry)
    return TransformersHost(config, registry, model=model, tokenizer=tok)


@pytest.mark.parametrize("batching", [True, False])
@pytest.mark.parametrize("sampled", [False, True])
def test_streamed_text_adds_up_to_the_candidates_text(tiny, batching, sampled):
    """The pieces streamed while decoding, one per token (the last token's with the one before
    it ends), add up to the candidate's text: in the batched loop beside another prompt's request
    and on the generate() path, greedy and sampled with a seed; a second request of the same
    generator streams nothing."""
    h = host(tiny, batching=batching)
    config = metagen_plugins.validate({"processors": [{"name": "temperature", "temperature": 1.5}] if sampled else [],
                                       "generation": {"seed": 4, "max_new_tokens": 12}}, h.registry)
    streamed: list[str] = []
    other: list = []
    neighbour = threading.Thread(target=lambda: other.extend(
        h.generator(Budget()).sample(["lorem ipsum dolor"], n=3, max_new_tokens=12)))
    neighbour.start()
    generator = h.generator(Budget(), config, on_text=streamed.append)
    [[candidate]] = generator.sample(["the quick brown fox"], n=1)
    neighbour.join()
    assert candidate.token_ids and "".join(streamed) == candidate.text
    assert len(streamed) > 1 and all(len(piece) == 1 for piece in streamed)  # live: a piece per
    # token (the tiny tokenizer has a character per token; special tokens have none)
    generator.sample(["the quick brown fox"], n=1)
    assert "".join(streamed) == candidate.text  # only the first one-sample request streams
    assert len(other[0]) == 3
    h.close()


def test_a_request_of_several_samples_does_not_stream(tiny):
    h = host(tiny)
    streamed: list[str] = []
    h.generator(Budget(), on_text=streamed.append).sample(["the quick brown fox"], n=2)
    assert streamed == []
    h.close()


def test_a_stream_callback_that_raises_stops_its_request_alone(tiny):
    """What a server does when its client goes away: the callback raises, that request fails
    with the callback's error and leaves the batch; a request decoding beside it finishes."""
    h = host(tiny)

    class Gone(Exception):
        pass

    def hang_up(text):
        raise Gone("client went away")

    other: list = []
    neighbour = threading.Thread(target=lambda: other.extend(
        h.generator(Budget()).sample(["lorem ipsum dolor"], n=2, max_new_tokens=12)))
    neighbour.start()
    with pytest.raises(Gone, match="client went away"):
        h.generator(Budget(), on_text=hang_up).sample(["the quick brown fox"], n=1)
    neighbour.join()
    assert len(other[0]) == 2 and all(c.token_ids for c in other[0])
    h.close()


def test_a_conversation_is_formatted_with_the_chat_template(tiny):
    """Earlier turns come before the prompt (the last user message) in the chat template; the
    tokens the model sees are the template's, and the candidate's prompt stays the question."""
    model, tok = tiny
    tok = type(tok).from_pretrained(tok.name_or_path)  # a copy: the session's tokenizer stays as it is
    tok.chat_template = TEMPLATE
    h = host((model, tok))
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
                    {"role": "assistant", "content": "hi"}]
    generator = h.generator(Budget(), conversation=conversation)
    text = "<system>Be brief.\n<user>hello\n<assistant>hi\n<user>the quick brown fox\n<assistant>"
    assert h.format("the quick brown fox", conversation) == text
    assert generator.prompt_tokens("the quick brown fox") == tok(text, add_special_tokens=False).input_ids
    [[candidate]] = generator.sample(["the quick brown fox"], n=1)
    assert candidate.prompt == "the quick brown fox"
    assert h.format("the quick brown fox") == "<user>the quick brown fox\n<assistant>"  # no conversation
    h.close()


def test_a_conversation_without_a_chat_template_is_refused(tiny):
    h = host(tiny, chat_template=False)
    with pytest.raises(HostError, match="chat template, which is off here"):
        h.generator(Budget(), conversation=[{"role": "system", "content": "x"}]).sample(["hi"], n=1)
    h.close()


def test_the_runner_hands_conversation_and_stream_to_the_host_and_refuses_what_a_host_cannot_do(tiny):
    model, tok = tiny
    tok = type(tok).from_pretrained(tok.name_or_path)
    tok.chat_template = TEMPLATE
    runner = Runner({"generation": {"max_new_tokens": 8}}, model=model, tokenizer=tok, concurrency=2)
    streamed: list[str] = []
    result = runner.submit("the quick brown fox", conversation=[{"role": "system", "content": "Be brief."}],
                           on_text=streamed.append).result()
    assert runner.streams and "".join(streamed) == result.best.text
    plain = runner.submit("the quick brown fox").result()
    spent = [r.budget.prompt_tokens_computed + r.budget.prompt_tokens_reused for r in (result, plain)]
    assert spent[0] == spent[1] + len(tok("<system>Be brief.\n", add_special_tokens=False).input_ids)
    runner.close()
    remote = Runner({"host": {"name": "vllm", "url": "http://127.0.0.1:9", "model": "m"}})
    assert remote.streams  # the vLLM host streams its server's chunks (tests/engines/test_vllm_host.py)
    with pytest.raises(ConfigError, match="the vllm host applies no chat template here, so it cannot format a conversation"):
        remote.submit("hi", conversation=[{"role": "system", "content": "x"}])
    remote.close()

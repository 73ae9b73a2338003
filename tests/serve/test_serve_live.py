"""metagen serve: plain decoding streamed token by token while it decodes, a client that leaves
mid-stream stopping the decoding, and chat conversations of several messages formatted with the
model's chat template (the official ``openai`` client on loopback)."""

from __future__ import annotations

import http.client
import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("openai")

import openai

from metagen_plugins.runner import Runner
from metagen_plugins.serve import build_app
from serve_helpers import LoopbackServer

PROMPT = "Q: 37+48-19=? A:"
TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")
PROFILES = """
[profiles.greedy.host]
model = "demo-arith"
[profiles.greedy.generation]
max_new_tokens = 32

[profiles.sampled.host]
model = "demo-arith"
[profiles.sampled.generation]
max_new_tokens = 32
seed = 3
[[profiles.sampled.processors]]
name = "temperature"
temperature = 0.9

[profiles.vote.host]
model = "demo-arith"
[profiles.vote.generation]
max_new_tokens = 32
seed = 0
[[profiles.vote.processors]]
name = "temperature"
temperature = 0.8
[profiles.vote.strategy]
name = "self_consistency"
n = 4
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "profiles.toml"
    path.write_text(PROFILES)
    with LoopbackServer(build_app(path)) as running:
        yield running


@pytest.mark.parametrize("profile", ["greedy", "sampled"])
def test_plain_decoding_streams_token_by_token_and_adds_up_to_the_answer(server, profile):
    """The streamed pieces (one per decoded token, not one at the end) join into exactly the
    non-streamed answer; the finish chunk carries metagen's extension, then usage."""
    client = server.client()
    whole = client.chat.completions.create(model=profile, messages=[{"role": "user", "content": PROMPT}])
    chunks = list(client.chat.completions.create(model=profile, messages=[{"role": "user", "content": PROMPT}],
                                                 stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == whole.choices[0].message.content
    assert len(pieces) >= min(3, len(whole.choices[0].message.content))  # live: piece by piece
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-2].model_extra["metagen"]["strategy"] == "generate"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    text = client.completions.create(model=profile, prompt=PROMPT)
    streamed = list(client.completions.create(model=profile, prompt=PROMPT, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == text.choices[0].text
    assert len([c for c in streamed if c.choices[0].text]) > 1


def test_a_search_strategy_streams_its_chosen_answer_once_chosen(server):
    client = server.client()
    whole = client.completions.create(model="vote", prompt=PROMPT)
    streamed = list(client.completions.create(model="vote", prompt=PROMPT, stream=True))
    assert [c.choices[0].text for c in streamed if c.choices[0].text] == [whole.choices[0].text]
    assert streamed[-1].model_extra["metagen"]["num_candidates"] == 4


def test_a_client_that_leaves_mid_stream_stops_the_decoding(tmp_path, tiny):
    """The client reads the first piece and hangs up: the host stops that request at its next
    token (its run ends with the client-gone error, long before max_new_tokens)."""
    model, tok = tiny
    path = tmp_path / "long.toml"
    # EOS (id 2) banned: only the client leaving can end it before 400 tokens
    path.write_text('[generation]\nmax_new_tokens = 400\n[[processors]]\nname = "logit_bias"\n'
                    'bias = {"2" = -1000.0}\n')
    app = build_app(path, objects={"model": model, "tokenizer": tok})
    server = app.state.server
    futures = []
    start = server.start
    server.start = lambda *a, **k: futures.append(start(*a, **k)) or futures[-1]
    with LoopbackServer(app) as running:
        connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
        connection.request("POST", "/v1/completions", body=json.dumps({"model": "long", "prompt": "the quick",
                                                                        "stream": True}),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200
        assert response.read(6) == b"data: "  # the first piece arrived
        connection.close()
        error = futures[0].exception(timeout=60)
    assert type(error).__name__ == "StreamClosed"
    assert server.metrics.cancelled.labels("long", "streaming")._value.get() == 1


def test_a_conversation_is_formatted_with_the_chat_template_and_equals_the_runner(tmp_path, tiny):
    """System, earlier user and assistant turns reach the model through its chat template; the
    answer equals the Runner given the same conversation; bad conversations are 400s."""
    model, tok = tiny
    tok = type(tok).from_pretrained(tok.name_or_path)
    tok.chat_template = TEMPLATE
    path = tmp_path / "chat.toml"
    path.write_text('[generation]\nmax_new_tokens = 12\n')
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"}, {"role": "user", "content": "the quick brown fox"}]
    runner = Runner(str(path), model=model, tokenizer=tok)
    expected = runner.submit("the quick brown fox", conversation=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"}]).result()
    alone = runner.submit("the quick brown fox").result()
    runner.close()
    with LoopbackServer(build_app(path, objects={"model": model, "tokenizer": tok})) as running:
        client = running.client()
        answer = client.chat.completions.create(model="chat", messages=messages)
        assert answer.choices[0].message.content == expected.best.text
        assert answer.usage.prompt_tokens == alone.budget.prompt_tokens_computed + alone.budget.prompt_tokens_reused \
            + len(tok("<system>Be brief.\n<user>hello\n<assistant>hi\n", add_special_tokens=False).input_ids)
        developer = client.chat.completions.create(model="chat", messages=[
            {"role": "developer", "content": "Be brief."}, {"role": "user", "content": "the quick brown fox"}])
        system = client.chat.completions.create(model="chat", messages=[
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "the quick brown fox"}])
        assert developer.choices[0].message.content == system.choices[0].message.content
        with pytest.raises(openai.BadRequestError, match="the last message must be the user's question"):
            client.chat.completions.create(model="chat", messages=messages[:3])
        with pytest.raises(openai.BadRequestError, match=r"messages\[1\]: tool messages are not supported"):
            client.chat.completions.create(model="chat", messages=[
                messages[0], {"role": "tool", "content": "42", "tool_call_id": "t"}, messages[-1]])


def test_a_conversation_on_a_host_without_a_chat_template_is_400(tmp_path):
    path = tmp_path / "remote.toml"
    path.write_text('[host]\nname = "vllm"\nurl = "http://127.0.0.1:9"\nmodel = "m"\n')
    with LoopbackServer(build_app(path)) as running:
        with pytest.raises(openai.BadRequestError, match="the vllm host applies no chat template here, so it cannot format a conversation") as caught:
            running.client().chat.completions.create(model="remote", messages=[
                {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
        assert caught.value.body["param"] == "messages"


def test_a_streamed_search_can_report_progress_that_standard_clients_ignore(server, monkeypatch):
    """metagen.progress: SSE comments with what the run has spent so far, while it searches; the
    openai client skips them and gets the same answer; a raw reader sees them."""
    from metagen_plugins.serve import streaming

    monkeypatch.setattr(streaming, "PROGRESS_EVERY", 0.01)
    client = server.client()
    whole = client.completions.create(model="vote", prompt=PROMPT)
    streamed = list(client.completions.create(model="vote", prompt=PROMPT, stream=True,
                                              extra_body={"metagen": {"progress": True}}))
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request("POST", "/v1/completions", body=json.dumps({
        "model": "vote", "prompt": "Q: 12+34-5=? A:", "stream": True, "metagen": {"progress": True}}),
        headers={"Content-Type": "application/json"})
    lines = connection.getresponse().read().decode().splitlines()
    progress = [json.loads(line.split("progress ", 1)[1]) for line in lines if line.startswith(": metagen progress")]
    assert progress and set(progress[-1]) >= {"samples", "tokens_generated", "flops"}
    assert lines[-2] == "data: [DONE]" or lines[-1] == "data: [DONE]"
    with pytest.raises(openai.BadRequestError, match="metagen.progress must be true or false"):
        client.completions.create(model="vote", prompt=PROMPT, stream=True, extra_body={"metagen": {"progress": 1}})

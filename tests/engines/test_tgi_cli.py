"""`metagen tgi launcher-args` and `metagen tgi check`."""

import shlex

import pytest

from metagen_plugins.cli import main
from tgi_server import TGIServer

BASE = """
[host]
name = "tgi"
url = "http://127.0.0.1:8081"
model_id = "meta-llama/Llama-3.1-8B-Instruct"
"""


def write(tmp_path, text):
    path = tmp_path / "tgi.toml"
    path.write_text(text)
    return str(path)


def test_launcher_args_for_a_configuration(tmp_path, capsys):
    path = write(tmp_path, BASE + """speculate = 3
kv_cache = "fp8_e5m2"
quantize = "awq"
best_of = 4
top_n_tokens = 8

[generation]
do_sample = true

[[processors]]
name = "watermark"
greenlist_ratio = 0.5
bias = 1.5

[[stopping]]
name = "stop_strings"
stop = ["a", "b", "c", "d", "e", "f"]
""")
    assert main(["tgi", "launcher-args", "--config", path]) == 0
    launcher, _, _, docker = capsys.readouterr().out.strip().splitlines()
    args = ["--model-id", "meta-llama/Llama-3.1-8B-Instruct", "--speculate", "3", "--kv-cache-dtype", "fp8_e5m2",
            "--quantize", "awq", "--max-best-of", "4", "--max-stop-sequences", "6", "--max-top-n-tokens", "8",
            "--watermark-gamma", "0.5", "--watermark-delta", "1.5"]
    assert shlex.split(launcher) == ["text-generation-launcher", *args]
    assert shlex.split(docker) == ["docker", "run", "--gpus", "all", "--shm-size", "1g", "-p", "8081:80", "-v",
                                   "$PWD/data:/data", "ghcr.io/huggingface/text-generation-inference:latest", *args]


def test_launcher_args_with_tgis_defaults_name_only_the_model(tmp_path, capsys):
    assert main(["tgi", "launcher-args", "--config", write(tmp_path, BASE)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "text-generation-launcher --model-id meta-llama/Llama-3.1-8B-Instruct"


@pytest.mark.parametrize("extra,message", [
    ('draft_model = "meta-llama/Llama-3.2-1B"', "TGI has no separate draft model.*Medusa or MLP-speculator heads.*"
                                                "n-gram.*use the vLLM host"),
    ('quantize = "int3"', "not a TGI --quantize method; TGI accepts awq, compressed-tensors, eetq, exl2, gptq, "
                          "marlin, bitsandbytes, bitsandbytes-nf4, bitsandbytes-fp4, fp8"),
    ('kv_cache = "fp16"', "not a TGI --kv-cache-dtype; TGI accepts fp8_e4m3fn or fp8_e5m2"),
])
def test_launcher_args_rejects_what_tgi_cannot_launch(tmp_path, capsys, extra, message):
    import re

    assert main(["tgi", "launcher-args", "--config", write(tmp_path, BASE + extra + "\n")]) == 2
    assert re.search(message, capsys.readouterr().err.replace("\n", " "))


def test_launcher_args_needs_a_model_id_and_a_tgi_config(tmp_path, capsys):
    assert main(["tgi", "launcher-args", "--config", write(tmp_path, '[host]\nname = "tgi"\n')]) == 2
    assert "set [host] model_id" in capsys.readouterr().err
    assert main(["tgi", "launcher-args", "--config", write(tmp_path, '[host]\nname = "vllm"\n')]) == 2
    assert "metagen tgi needs name = \"tgi\"" in capsys.readouterr().err


def test_check_reports_limits_and_configured_components(tmp_path, capsys):
    with TGIServer(info={"model_id": "meta-llama/Llama-3.1-8B-Instruct", "max_concurrent_requests": 4}) as server:
        path = write(tmp_path, BASE.replace("http://127.0.0.1:8081", server.url) + """concurrency = 8
best_of = 2
speculate = 2

[generation]
do_sample = true
max_new_tokens = 64

[[processors]]
name = "top_p"
top_p = 0.9

[[processors]]
name = "grammar"
regex = "\\\\d+"

[[stopping]]
name = "stop_strings"
stop = ["a", "b", "c", "d", "e"]
""")
        code = main(["tgi", "check", server.url, "--config", path])
        out = capsys.readouterr().out
        assert server.contract_errors == []
    assert code == 1  # concurrency exceeds what the deployment accepts
    lines = dict(line.split(":", 1) for line in out.strip().splitlines())
    assert lines["ok    health"].strip() == "GET /health answered 200"
    assert lines["note  max_stop_sequences"].strip() == "4"
    assert lines["note  max_best_of"].strip() == "2"
    assert lines["ok    best_of"].strip() == "2 (server max_best_of 2)"
    assert lines["ok    top_p"].strip() == "supported as request parameters"
    assert lines["ok    grammar"].strip() == "supported as request parameters"
    assert "the rest are enforced client-side" in lines["ok    stop_strings"]
    assert "a launcher setting /info does not report" in lines["note  speculate"]
    assert "exceeds max_concurrent_requests 4" in lines["FAIL  concurrency"]


def test_check_an_unhealthy_deployment_and_an_unreachable_one(capsys):
    with TGIServer() as server:
        server.healthy = False
        assert main(["tgi", "check", server.url]) == 1
        assert "FAIL  health: GET /health did not answer 200" in capsys.readouterr().out
    assert main(["tgi", "check", "http://127.0.0.1:9"]) == 2
    assert "cannot read http://127.0.0.1:9/info: connection" in capsys.readouterr().err


def test_check_suggests_raising_limits_the_server_allows(tmp_path, capsys):
    with TGIServer(info={"max_stop_sequences": 8}) as server:
        path = write(tmp_path, BASE.replace("http://127.0.0.1:8081", server.url))
        assert main(["tgi", "check", server.url, "--config", path]) == 1  # the model_id differs
        out = capsys.readouterr().out
    assert "note  max_stop_sequences: the server allows 8; set [host] max_stop_sequences = 8" in out
    assert "FAIL  model_id: configured 'meta-llama/Llama-3.1-8B-Instruct', the server serves 'metagen/demo-arith'" in out

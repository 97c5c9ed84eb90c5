"""open_clip behind one small interface: normalised image and text embeddings, loaded once.

Text queries take a fast path: CLIP's text tower is causal and pools at the end-of-text token,
so tokens after it cannot change the embedding. Running the transformer only up to the last
end-of-text position of the batch gives the same vector for a fraction of the 77-token cost.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from search.config import ClipSettings

log = logging.getLogger("fashion.search")
PROBE_TEXT = "a photo of a garment"
# 77 tokens never span more characters than this; cutting first keeps the tokenizer's BPE
# from chewing through a 100 KB query only to drop all but the start.
MAX_QUERY_CHARS = 2000  # its embedding fingerprints the weights (see Index checks)


def _clip_text(text: str) -> str:
    return " ".join(text.split())[:MAX_QUERY_CHARS]  # the tokenizer collapses whitespace too


def register_model_configs(directory: str | None) -> None:
    if directory:
        import open_clip

        open_clip.add_model_config(Path(directory))


class ClipEmbedder:
    def __init__(self, settings: ClipSettings):
        import open_clip

        register_model_configs(settings.extra_config_dir)
        torch.set_num_threads(max(1, settings.threads))
        pretrained = settings.pretrained or None
        if pretrained is None:
            torch.manual_seed(settings.seed)  # random weights must be the same in every process
            log.warning("CLIP_PRETRAINED is empty: random %s weights (seed %d); scores are meaningless",
                        settings.model, settings.seed)
        model, _, preprocess = open_clip.create_model_and_transforms(
            settings.model, pretrained=pretrained, cache_dir=settings.cache_dir, device="cpu"
        )
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(settings.model, cache_dir=settings.cache_dir)
        self.model_name = settings.model
        self.pretrained = settings.pretrained
        self.seed = settings.seed
        self._fast_text = (
            getattr(model, "text_pool_type", None) == "argmax"
            and getattr(model, "attn_mask", None) is not None
            and hasattr(model, "token_embedding")
        )

    @property
    def identity(self) -> dict:
        """What an index must have been built with to be searchable by this embedder."""
        return {
            "model": self.model_name,
            "pretrained": self.pretrained,
            "seed": self.seed if not self.pretrained else None,
            "probe": self.probe_fingerprint(),
        }

    def probe_fingerprint(self) -> str:
        vector = self.encode_texts([PROBE_TEXT])[0]
        return hashlib.sha256(np.round(vector, 3).astype(np.float32).tobytes()).hexdigest()[:16]

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        batch = torch.stack([self.preprocess(im) for im in images])
        features = self.model.encode_image(batch)
        return torch.nn.functional.normalize(features, dim=-1).numpy().astype(np.float32)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        # long text is truncated to the model's context by the tokenizer
        tokens = self.tokenizer([_clip_text(text) for text in texts])
        features = self._encode_tokens_fast(tokens) if self._fast_text else self.model.encode_text(tokens)
        return torch.nn.functional.normalize(features, dim=-1).numpy().astype(np.float32)

    @torch.inference_mode()
    def encode_texts_full(self, texts: Sequence[str]) -> np.ndarray:
        """The reference path (all 77 positions), kept for tests and benchmarks."""
        features = self.model.encode_text(self.tokenizer([_clip_text(text) for text in texts]))
        return torch.nn.functional.normalize(features, dim=-1).numpy().astype(np.float32)

    def _encode_tokens_fast(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        eot = tokens.argmax(dim=-1)  # the end-of-text token has the highest id
        length = int(eot.max()) + 1
        tokens = tokens[:, :length]
        cast_dtype = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast_dtype)
        x = x + m.positional_embedding[:length].to(cast_dtype)
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0]), eot]
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
        return x

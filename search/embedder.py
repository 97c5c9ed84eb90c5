"""open_clip behind one small interface: normalised image and text embeddings, loaded once.

Text queries take a fast path:
- CLIP's text tower is causal and pools at the end-of-text token, so tokens after it cannot
  change the embedding. Running the transformer only up to the last end-of-text position of the
  batch gives the same vector (max abs diff ~1e-7) for a fraction of the 77-token cost.
- For one short query the tower is bound by reading its weights from memory (151 MB in fp32
  for ViT-B-32), so by default a bfloat16 copy of the text tower is used where the CPU computes
  bf16 natively: half the bytes, cosine to the fp32 embedding >= 0.9999 (bench/search_latency.py).
  Image embeddings (the index) stay fp32.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from search.config import ClipSettings
from search.tokenizer import PROBE_TEXT, clip_query_text
from shared.images import threaded_map
from shared.sessions import torch_device, torch_threads

log = logging.getLogger("fashion.search")


def register_model_configs(directory: str | None) -> None:
    if directory:
        import open_clip

        open_clip.add_model_config(Path(directory))


def bf16_is_native() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass
class TextTower:
    """The modules of a CLIP text tower, in one precision."""

    token_embedding: torch.nn.Module
    positional_embedding: torch.Tensor
    transformer: torch.nn.Module
    ln_final: torch.nn.Module
    text_projection: torch.Tensor | torch.nn.Module | None
    attn_mask: torch.Tensor
    dtype: torch.dtype

    @classmethod
    def of(cls, model) -> "TextTower":
        return cls(model.token_embedding, model.positional_embedding, model.transformer, model.ln_final,
                   model.text_projection, model.attn_mask, model.transformer.get_cast_dtype())

    def to(self, dtype: torch.dtype) -> "TextTower":
        def conv(module):
            return copy.deepcopy(module).to(dtype)
        projection = self.text_projection
        if projection is not None:
            projection = conv(projection) if isinstance(projection, torch.nn.Module) else projection.detach().to(dtype)
        return TextTower(conv(self.token_embedding), self.positional_embedding.detach().to(dtype),
                         conv(self.transformer), conv(self.ln_final), projection, self.attn_mask.to(dtype), dtype)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Same maths as open_clip's CLIP.encode_text, over the tokens up to the last end-of-text."""
        length = int(tokens.argmax(dim=-1).max()) + 1  # the end-of-text token has the highest id
        return self.run(tokens[:, :length])

    def run(self, tokens: torch.Tensor) -> torch.Tensor:
        """encode_text over tokens already cut after the batch's last end-of-text. No value of
        `tokens` decides the control flow, so a trace of this runs at any length (search.export)."""
        length = tokens.shape[1]
        x = self.token_embedding(tokens).to(self.dtype)
        x = x + self.positional_embedding[:length].to(self.dtype)
        x = self.transformer(x, attn_mask=self.attn_mask[:length, :length])
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
        if isinstance(self.text_projection, torch.nn.Linear):
            x = self.text_projection(x)
        elif self.text_projection is not None:
            x = x @ self.text_projection
        return x.float()


class ClipEmbedder:
    def __init__(self, settings: ClipSettings, *, text_only: bool = False):
        """`text_only` (the search service) frees the image tower once loaded: queries never use it."""
        import open_clip

        register_model_configs(settings.extra_config_dir)
        torch_threads(settings.threads)
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
        self.fp32_text = None
        if (getattr(model, "text_pool_type", None) == "argmax" and getattr(model, "attn_mask", None) is not None
                and hasattr(model, "token_embedding")):
            self.fp32_text = TextTower.of(model)
        self.query_text = self.fp32_text
        if settings.text_precision not in ("auto", "bf16", "fp32", "int8"):
            raise ValueError(f"CLIP_TEXT_PRECISION={settings.text_precision!r}: choose auto, fp32, bf16 or int8")
        # int8 is the ONNX encoder's (the service refuses it on torch); the builder and the
        # evaluation, which run torch for the images, take the default query path then.
        if self.fp32_text is not None and settings.text_precision in ("auto", "bf16", "int8"):
            if bf16_is_native():
                self.query_text = self.fp32_text.to(torch.bfloat16)
            else:
                log.info("this CPU has no native bf16: text queries run in fp32")
        self._identity = None
        self.device = "cpu"
        if text_only:
            self.model.visual = None
        else:
            self.device = torch_device(settings.device)
            if self.device == "cuda":
                # Only the image tower moves: the text tower (the identity probe, queries) stays
                # fp32 on the CPU, so an index built on a GPU is served and checked like any other.
                self.model.visual.to(self.device, dtype=torch.float16)
            log.info("CLIP image tower on %s%s", self.device, " (fp16)" if self.device == "cuda" else "")

    @property
    def text_precision(self) -> str:
        return "bf16" if self.query_text is not None and self.query_text.dtype == torch.bfloat16 else "fp32"

    def describe(self) -> str:
        return f"torch {self.text_precision}"

    @property
    def identity(self) -> dict:
        """What an index must have been built with to be searchable by this embedder. The probe
        (an fp32 text embedding) catches other weights behind the same names; compare it by cosine."""
        if self._identity is None:
            probe = self.encode_texts_full([PROBE_TEXT])[0]
            self._identity = {
                "model": self.model_name,
                "pretrained": self.pretrained,
                "seed": self.seed if not self.pretrained else None,
                "probe": [round(float(v), 6) for v in probe],
            }
        return self._identity

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if self.model.visual is None:
            raise RuntimeError("this embedder was loaded text-only")
        if self.device == "cuda":
            # A GPU embeds thousands of images a second; one core preprocesses ~300.
            batch = torch.stack(threaded_map(self.preprocess, images))
            batch = batch.to(self.device, dtype=torch.float16, non_blocking=True)
        else:
            batch = torch.stack([self.preprocess(im) for im in images])
        features = self.model.encode_image(batch).float()
        return torch.nn.functional.normalize(features, dim=-1).cpu().numpy().astype(np.float32)

    def query_tokens(self, text: str) -> np.ndarray:
        """The token ids the text tower actually sees for `text`: truncated to the context, and
        cut after the end-of-text token where the tower is causal (nothing after it counts).
        At most 77 ids, so they bound the query cache's keys whatever clients send."""
        tokens = self.tokenizer([clip_query_text(text)])[0]
        if self.query_text is not None:
            tokens = tokens[: int(tokens.argmax()) + 1]
        return tokens.numpy().astype(np.int32)

    @torch.inference_mode()
    def encode_query_tokens(self, ids: np.ndarray) -> np.ndarray:
        """The normalised embedding of one query from `query_tokens` ids."""
        tokens = torch.from_numpy(ids.astype(np.int64))[None]
        if self.query_text is not None:
            features = self.query_text.encode(tokens)
        else:
            features = self.model.encode_text(tokens)
        return torch.nn.functional.normalize(features, dim=-1)[0].numpy().astype(np.float32)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], *, tower: TextTower | None = None) -> np.ndarray:
        """Query embeddings (long text is truncated to the model's context by the tokenizer)."""
        tokens = self.tokenizer([clip_query_text(text) for text in texts])
        tower = tower or self.query_text
        features = tower.encode(tokens) if tower is not None else self.model.encode_text(tokens)
        return torch.nn.functional.normalize(features, dim=-1).numpy().astype(np.float32)

    @torch.inference_mode()
    def encode_texts_full(self, texts: Sequence[str]) -> np.ndarray:
        """The reference path (open_clip's encode_text over all 77 positions, fp32)."""
        features = self.model.encode_text(self.tokenizer([clip_query_text(text) for text in texts]))
        return torch.nn.functional.normalize(features, dim=-1).numpy().astype(np.float32)

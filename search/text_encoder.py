"""Query text -> normalised CLIP embedding on onnxruntime: what the search service runs instead of
torch when the index has a text-encoder export (written by `python -m search.export`).

Nothing here imports torch or open_clip. The class offers what the Searcher and the index checks
use of ClipEmbedder: `query_tokens`, `encode_query_tokens`, `encode_texts`, `identity`.

The two text towers register here in shared.sessions.TEXT_TOWERS ("onnx": this export, "torch":
open_clip), and which one answers, in which precision, is shared.sessions.TEXT_TOWER_ROUTES'
choice from SEARCH_TEXT_ENCODER and CLIP_TEXT_PRECISION (`open_text_encoder`). The graphs run on
the "onnxruntime-cpu" engine with the query towers' options (shared.sessions.query_options).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from search.tokenizer import PROBE_TEXT, ClipTokenizer, clip_query_text
from shared.sessions import ENGINES, TEXT_TOWER_ROUTES, TEXT_TOWERS, choose, query_options

log = logging.getLogger("fashion.search")
EXPORT_DIRNAME = "text-encoder"  # inside the index folder, beside meta.json
EXPORT_META = "export.json"
EXPORT_FORMAT = 1
PRECISIONS = ("fp32", "int8")  # the graphs an export may hold
ENCODERS = ("auto", "onnx", "torch")  # SEARCH_TEXT_ENCODER
# A graph must give its own recorded probe embedding back: anything less means the file is not
# the one the export measured (replaced, truncated, another model's).
SELF_PROBE_MIN_COSINE = 0.999


class ExportError(Exception):
    """A text-encoder export that is missing, unreadable or does not fit; the text says why."""


def read_export_meta(directory: Path) -> dict:
    path = Path(directory) / EXPORT_META
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"no text-encoder export at {directory} ({EXPORT_META} is missing); "
                          "write one with `python -m search.export --index INDEX`") from None
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path} is unreadable: {exc}") from None
    if meta.get("format_version") != EXPORT_FORMAT:
        raise ExportError(f"{path} has format {meta.get('format_version')!r}, this service reads "
                          f"{EXPORT_FORMAT}; export again with `python -m search.export`")
    return meta


class OnnxTextEncoder:
    """One exported text tower in one precision, in an onnxruntime session; loaded once per worker."""

    def __init__(self, directory: str | Path, *, precision: str = "fp32", threads: int = 1, meta: dict | None = None):
        directory = Path(directory)
        self.meta = meta if meta is not None else read_export_meta(directory)
        if precision not in self.meta["files"]:
            raise ExportError(f"the text-encoder export at {directory} has no {precision} graph (it has "
                              f"{', '.join(self.meta['files'])}); export it, or choose another CLIP_TEXT_PRECISION")
        self.precision = precision
        self.model_name = self.meta["identity"]["model"]
        self.tokenizer = ClipTokenizer.load(directory / "tokenizer.json", self.meta["context_length"])
        graph = directory / self.meta["files"][precision]
        try:  # queries run on the CPU, one at a time: the identity probe is a CPU fp32 one
            self.runner = ENGINES.get("onnxruntime-cpu")().open(str(graph), query_options(threads))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ExportError(f"{graph} cannot be loaded: {exc}") from None
        recorded = self.meta.get("probes", {}).get(precision)
        if recorded is not None:
            probe = self.encode_texts([PROBE_TEXT])[0]
            recorded = np.asarray(recorded, np.float32)
            if probe.shape != recorded.shape or float(probe @ recorded) < SELF_PROBE_MIN_COSINE:
                raise ExportError(f"{graph} does not give the embedding its {EXPORT_META} recorded; "
                                  "the folder is mixed up: export again")

    @property
    def identity(self) -> dict:
        """The CLIP identity the export was made from (torch fp32 probe): the index must match it."""
        return self.meta["identity"]

    @property
    def text_precision(self) -> str:
        return self.precision

    def describe(self) -> str:
        return f"onnx {self.precision}"

    def query_tokens(self, text: str) -> np.ndarray:
        """The ids the tower sees for `text`, cut after the end-of-text token (nothing after it
        counts): at most 77, the query cache's key, the same as ClipEmbedder.query_tokens."""
        tokens = self.tokenizer(clip_query_text(text))
        return tokens[: int(tokens.argmax()) + 1].astype(np.int32)

    def encode_query_tokens(self, ids: np.ndarray) -> np.ndarray:
        return self._run(ids.astype(np.int64)[None])[0]

    def encode_texts(self, texts) -> np.ndarray:
        tokens = np.stack([self.tokenizer(clip_query_text(text)) for text in texts])
        return self._run(tokens[:, : int(tokens.argmax(axis=1).max()) + 1])

    def _run(self, tokens: np.ndarray) -> np.ndarray:
        return self.runner(tokens)  # the graph's one input, "tokens"


def export_dir(config, index_dir: str | Path | None = None) -> Path:
    """Where the text-encoder export of an index is read: SEARCH_TEXT_ENCODER_DIR, or the index's own.
    Resolved once: the path is a symlink an export flips to its new version (search/indexing/export.py),
    so every file is read from the one version it named now."""
    return Path(os.path.realpath(config.text_encoder_dir or Path(index_dir or config.index_dir) / EXPORT_DIRNAME))


def open_text_encoder(clip, mode: str, directory: Path, *, torch_encoder=None, keep_image_tower: bool = False):
    """The service's query encoder: the ONNX export at `directory`, or open_clip on torch.
    `auto` takes the export when there is one. `torch_encoder`, an already loaded ClipEmbedder
    of the same settings (search.evaluate has one), serves the torch case instead of a new one;
    `keep_image_tower` keeps a new one's image tower (photo queries then use it too).
    Raises ExportError with the reason otherwise, ValueError for a CLIP_TEXT_PRECISION no tower has."""
    if mode not in ENCODERS:
        raise ExportError(f"SEARCH_TEXT_ENCODER={mode!r}; choose one of {', '.join(ENCODERS)}")
    auto = mode == "auto"
    if auto:
        mode = "onnx" if (directory / EXPORT_META).exists() else "torch"
    tower, precision = choose(TEXT_TOWER_ROUTES, conflict=ExportError, logger=log,
                              SEARCH_TEXT_ENCODER=mode, CLIP_TEXT_PRECISION=clip.text_precision)
    return TEXT_TOWERS.get(tower)(clip, directory, precision, torch_encoder=torch_encoder,
                                  keep_image_tower=keep_image_tower, auto=auto)


@TEXT_TOWERS.register("onnx")
def open_onnx_text_tower(clip, directory: Path, precision: str, **_) -> OnnxTextEncoder:
    """The export's graph of `precision`, once the export is known to be of CLIP_MODEL/CLIP_PRETRAINED."""
    meta = read_export_meta(directory)
    built = meta["identity"]
    wanted = {"model": clip.model, "pretrained": clip.pretrained or None}
    if {"model": built.get("model"), "pretrained": built.get("pretrained") or None} != wanted:
        raise ExportError(f"the text-encoder export at {directory} is of {built.get('model')}/"
                          f"{built.get('pretrained') or 'random weights'}, but CLIP_MODEL/CLIP_PRETRAINED say "
                          f"{clip.model}/{clip.pretrained or 'random weights'}; export again or fix the settings")
    encoder = OnnxTextEncoder(directory, precision=precision, threads=clip.threads, meta=meta)
    log.info("text encoder: onnxruntime %s from %s", encoder.precision, directory)
    return encoder


@TEXT_TOWERS.register("torch")
def open_torch_text_tower(clip, directory: Path, precision: str, *, torch_encoder=None,
                          keep_image_tower: bool = False, auto: bool = False):
    """open_clip's text tower (ClipEmbedder: bf16 where CLIP_TEXT_PRECISION and the CPU allow it)."""
    encoder = torch_encoder
    if encoder is None:
        try:
            from search.embedder import ClipEmbedder
        except ImportError as exc:
            raise ExportError(f"no text-encoder export at {directory} and torch/open_clip are not installed "
                              f"({exc}); write one with `python -m search.export --index INDEX`") from None
        encoder = ClipEmbedder(clip, text_only=not keep_image_tower)
    log.info("text encoder: torch %s%s", encoder.text_precision,
             f" (no ONNX export at {directory})" if auto else "")
    return encoder

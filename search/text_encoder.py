"""Query text -> normalised CLIP embedding on onnxruntime: what the search service runs instead of
torch when the index has a text-encoder export (written by `python -m search.export`).

Nothing here imports torch or open_clip. The class offers what the Searcher and the index checks
use of ClipEmbedder: `query_tokens`, `encode_query_tokens`, `encode_texts`, `identity`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from search.tokenizer import PROBE_TEXT, ClipTokenizer, clip_query_text

log = logging.getLogger("fashion.search")
EXPORT_DIRNAME = "text-encoder"  # inside the index folder, beside meta.json
EXPORT_META = "export.json"
EXPORT_FORMAT = 1
PRECISIONS = ("fp32", "int8")
ENCODERS = ("auto", "onnx", "torch")
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


def query_session_options(threads: int):
    """onnxruntime options of the query towers (text, and image: search/image_encoder.py):
    several gunicorn workers share the cores, so each session gets a fixed, small thread budget,
    and idle threads must not spin between queries."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxTextEncoder:
    """One exported text tower in one precision, in an onnxruntime session; loaded once per worker."""

    def __init__(self, directory: str | Path, *, precision: str = "fp32", threads: int = 1, meta: dict | None = None):
        import onnxruntime as ort

        directory = Path(directory)
        self.meta = meta if meta is not None else read_export_meta(directory)
        if precision not in self.meta["files"]:
            raise ExportError(f"the text-encoder export at {directory} has no {precision} graph (it has "
                              f"{', '.join(self.meta['files'])}); export it, or choose another CLIP_TEXT_PRECISION")
        self.precision = precision
        self.model_name = self.meta["identity"]["model"]
        self.tokenizer = ClipTokenizer.load(directory / "tokenizer.json", self.meta["context_length"])
        options = query_session_options(threads)
        graph = directory / self.meta["files"][precision]
        try:
            self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
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
        return self.session.run(None, {"tokens": tokens})[0].astype(np.float32, copy=False)


def export_dir(config, index_dir: str | Path | None = None) -> Path:
    """Where the text-encoder export of an index is read: SEARCH_TEXT_ENCODER_DIR, or the index's own."""
    return Path(config.text_encoder_dir or Path(index_dir or config.index_dir) / EXPORT_DIRNAME)


def open_text_encoder(clip, mode: str, directory: Path, *, torch_encoder=None, keep_image_tower: bool = False):
    """The service's query encoder: the ONNX export at `directory`, or open_clip on torch.
    `auto` takes the export when there is one. `torch_encoder`, an already loaded ClipEmbedder
    of the same settings (search.evaluate has one), serves the torch case instead of a new one;
    `keep_image_tower` keeps a new one's image tower (photo queries then use it too).
    Raises ExportError with the reason otherwise."""
    if mode not in ENCODERS:
        raise ExportError(f"SEARCH_TEXT_ENCODER={mode!r}; choose one of {', '.join(ENCODERS)}")
    precision = clip.text_precision
    if mode == "onnx" or (mode == "auto" and (directory / EXPORT_META).exists()):
        meta = read_export_meta(directory)
        built = meta["identity"]
        wanted = {"model": clip.model, "pretrained": clip.pretrained or None}
        if {"model": built.get("model"), "pretrained": built.get("pretrained") or None} != wanted:
            raise ExportError(f"the text-encoder export at {directory} is of {built.get('model')}/"
                              f"{built.get('pretrained') or 'random weights'}, but CLIP_MODEL/CLIP_PRETRAINED say "
                              f"{clip.model}/{clip.pretrained or 'random weights'}; export again or fix the settings")
        if precision == "bf16":
            log.warning("CLIP_TEXT_PRECISION=bf16 applies to the torch encoder; the ONNX encoder runs fp32")
        encoder = OnnxTextEncoder(directory, precision="int8" if precision == "int8" else "fp32",
                                  threads=clip.threads, meta=meta)
        log.info("text encoder: onnxruntime %s from %s", encoder.precision, directory)
        return encoder
    if precision == "int8":
        raise ExportError("CLIP_TEXT_PRECISION=int8 needs the ONNX text encoder: export one with "
                          "`python -m search.export --index INDEX`")
    encoder = torch_encoder
    if encoder is None:
        try:
            from search.embedder import ClipEmbedder
        except ImportError as exc:
            raise ExportError(f"no text-encoder export at {directory} and torch/open_clip are not installed "
                              f"({exc}); write one with `python -m search.export --index INDEX`") from None
        encoder = ClipEmbedder(clip, text_only=not keep_image_tower)
    log.info("text encoder: torch %s%s", encoder.text_precision,
             f" (no ONNX export at {directory})" if mode == "auto" else "")
    return encoder

"""open_clip's CLIP tokenizer without torch: the same token ids, for serving queries.

open_clip's `SimpleTokenizer` (clean="lower") does three things, and this does each the same way:
1. Clean: ftfy, HTML unescaping twice, whitespace collapsed, lower case (the same functions,
   copied, since open_clip's module imports torch).
2. Split into words with open_clip's regex, run by the same `regex` module with the same flags.
   The special-token strings are alternatives of that regex, so a query that types
   `<end_of_text>` gets the special id wherever open_clip gives it.
3. Byte-level BPE over each word, with `</w>` marking a word's end: Hugging Face `tokenizers`,
   from open_clip's own vocabulary file (`from_open_clip_vocab`, at export time) or the
   `tokenizer.json` the export saved (serving).

tests/test_lean.py checks the ids against open_clip's on thousands of varied strings.
"""
from __future__ import annotations

import gzip
import html
from pathlib import Path

import ftfy
import numpy as np
import regex
from tokenizers import Tokenizer, models, pre_tokenizers

PROBE_TEXT = "a photo of a garment"  # its embedding fingerprints the weights (see Index checks)
# 77 tokens never span more characters than this; cutting first keeps the tokenizer's BPE
# from chewing through a 100 KB query only to drop all but the start.
MAX_QUERY_CHARS = 2000
SPECIAL_TOKENS = ("<start_of_text>", "<end_of_text>")
WORDS = regex.compile(
    "|".join(SPECIAL_TOKENS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
# open_clip reads this many merges from its vocabulary file (the first line is a header).
MERGES = 49152 - 256 - 2


def clip_query_text(text: str) -> str:
    """A query as both text encoders take it: whitespace collapsed (the tokenizer does that too), capped."""
    return " ".join(text.split())[:MAX_QUERY_CHARS]


def clean(text: str) -> str:
    """open_clip's `_clean_lower`: basic_clean, then whitespace_clean, then lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, in open_clip's order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, map(chr, cs), strict=True))


class ClipTokenizer:
    """Text -> the context_length token ids open_clip's tokenizer gives (int64, zero-padded)."""

    def __init__(self, bpe: Tokenizer, context_length: int = 77):
        self.bpe = bpe
        self.context_length = context_length
        self.special_ids = {token: bpe.token_to_id(token) for token in SPECIAL_TOKENS}
        if None in self.special_ids.values():
            raise ValueError("the tokenizer's vocabulary lacks CLIP's special tokens")
        self.sot_id = self.special_ids["<start_of_text>"]
        self.eot_id = self.special_ids["<end_of_text>"]

    @classmethod
    def from_open_clip_vocab(cls, bpe_path: str | Path, context_length: int = 77) -> ClipTokenizer:
        """Build from open_clip's `bpe_simple_vocab_16e6.txt.gz`, with its vocabulary order (ids)."""
        lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")[1:MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        symbols = list(bytes_to_unicode().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + list(SPECIAL_TOKENS)
        model = models.BPE({token: i for i, token in enumerate(vocab)}, merges, end_of_word_suffix="</w>")
        bpe = Tokenizer(model)
        # Words arrive split already (step 2); this only maps their UTF-8 bytes to BPE symbols.
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        return cls(bpe, context_length)

    @classmethod
    def load(cls, path: str | Path, context_length: int = 77) -> ClipTokenizer:
        return cls(Tokenizer.from_file(str(path)), context_length)

    def save(self, path: str | Path) -> None:
        self.bpe.save(str(path))

    def encode(self, text: str) -> list[int]:
        """The BPE ids of `text`, without start/end tokens and without truncation."""
        ids: list[int] = []
        words: list[str] = []
        for word in WORDS.findall(clean(text)):
            special = self.special_ids.get(word)
            if special is None:
                words.append(word)
                continue
            ids += self._bpe(words)
            ids.append(special)
            words = []
        return ids + self._bpe(words)

    def _bpe(self, words: list[str]) -> list[int]:
        if not words:
            return []
        return self.bpe.encode(words, is_pretokenized=True, add_special_tokens=False).ids

    def __call__(self, text: str) -> np.ndarray:
        tokens = [self.sot_id, *self.encode(text), self.eot_id]
        if len(tokens) > self.context_length:
            tokens = tokens[: self.context_length]
            tokens[-1] = self.eot_id
        ids = np.zeros(self.context_length, np.int64)
        ids[: len(tokens)] = tokens
        return ids

"""BM25 over product text (name, category, brand, description): the lexical half of a text query's score.

Why bm25s and Snowball: bench/lexical.py measured the candidates on the 21 judged queries over the
sample catalog's 32 names (names only, ties averaged over random orders). The share-of-words name
match the service had (NameIndex, in search/index_format.py before BM25) has MRR 0.545 (R@1
0.287, R@5 0.532); BM25 with the English Snowball stemmer has MRR 0.563 (R@1 0.319, R@5 0.568),
bm25s (PyStemmer) and tantivy (en_stem) alike; without a stemmer, or with the Turkish one on these
English names, BM25 has 0.543. At 100,000 synthetic names bm25s built in 1.8 s (tantivy 0.8 s)
and answered in 0.9 ms p50 (tantivy 0.7 ms). bm25s was taken because it needs only numpy and its
result is a plain CSC matrix, saved as .npy beside the other index arrays and memory-mapped; this
module imports bm25s only to build (the weights), never to serve: queries need PyStemmer only.

Analysis (`Analyzer.tokens`, the same for product text and queries):
1. Unicode NFC, so a decomposed accent stays inside its word.
2. Lowercasing for the language (`lowercase`): Turkish maps İ -> i and I -> ı; English and "none"
   map both I and İ to i (never the i plus combining dot that str.lower() makes of İ).
3. Words: runs of letters and digits (with their combining marks); punctuation, hyphens and
   spaces split them. One-character words are dropped, and for English a small stop-word list
   (STOPWORDS_EN, Lucene's English set, the one bm25s has).
4. Stemming with PyStemmer's Snowball stemmer of the language and folding
   (shared.garment_vocabulary.fold: İ/ı -> i, casefold, NFKD without combining marks), so
   "elbise", "ELBİSE" and "elbıse" meet, and so do "café" and "cafe". The order depends on the
   language:
   - Turkish: stem, then fold. The Turkish stemmer reads Turkish letters (ı, ğ, ş, ö, ü, ç drive
     its vowel harmony and suffixes). It strips one suffix layer per call, and also takes a
     singular's last vowel for a case ending ("elbise" -> "elbis", "elbiseler" -> "elbise"), so
     it is applied again until the word stops changing (at most TURKISH_ROUNDS times), never
     keeping a stem of under MIN_STEM letters ("mini" stays "mini", not "m"): singular and plural
     meet ("elbis"), and so do "pantolon"/"pantolonlar", "takım"/"takımlar".
   - English (and "none", which does not stem): fold, then stem. The English stemmer counts
     accented letters as consonants, so stemming first would part "crêpes" ("crêpe") from
     "crepes" ("crepe") and "résumés" from "resumes"; folding first makes every spelling that
     folds alike one term.
   Terms are cached per word (functools.lru_cache): queries and product texts repeat words.

Layout (`LexicalIndex.arrays`, every name starting with PREFIX, all plain .npy, no pickle):
    lexical.terms.utf8, lexical.terms.offsets   the vocabulary (analysed terms), sorted, as one
                                                UTF-8 blob + int64 offsets (StringTable): a term is
                                                found by binary search
    lexical.indptr   [terms + 1] int64   term t's postings are [indptr[t], indptr[t + 1])
    lexical.docs     [postings] int32    product rows, ascending within each term
    lexical.scores   [postings] float32  the BM25 weight of the term in that product (> 0)
    lexical.params   [2] float64         k1, b
    lexical.language [n] uint8           the analyser's language, UTF-8
That is the products x terms BM25 matrix in CSC form (one column per term), as bm25s computes
it (method "lucene": idf = ln(1 + (N - df + 0.5) / (df + 0.5)), tf / (tf + k1 (1 - b + b dl /
avgdl))). A query's score of a product is the sum over the query's terms of that column, summed
here with numpy from the memory-mapped arrays: no bm25s call and no Python object per product.
"""
from __future__ import annotations

import functools
import threading
import unicodedata
from collections.abc import Sequence

import numpy as np
import regex

from search.string_table import StringTable
from shared.garment_vocabulary import fold

LANGUAGES = ("english", "turkish", "none")  # "none": no stemming
MIN_STEM = 3  # a Turkish stem shorter than this is not taken (the word before it is kept)
TURKISH_ROUNDS = 4  # most stemmer passes per Turkish word
# Lucene's English stop words (bm25s.stopwords.STOPWORDS_EN; a test checks they agree).
STOPWORDS_EN = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no",
    "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this",
    "to", "was", "will", "with",
))
_WORD = regex.compile(r"[\p{L}\p{N}][\p{L}\p{N}\p{M}]*")
_SNOWBALL = {"english": "english", "turkish": "turkish"}
_stemmers = threading.local()  # PyStemmer's stemmers are not thread-safe: one per thread (gthread)


def _check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; one of {', '.join(LANGUAGES)}")
    return language


def lowercase(text: str, language: str = "english") -> str:
    """Lowercase for the language: Turkish İ -> i, I -> ı; otherwise both I and İ -> i."""
    if _check_language(language) == "turkish":
        return text.replace("İ", "i").replace("I", "ı").lower()
    return text.replace("İ", "i").lower()


def _stem(word: str, language: str) -> str:
    stemmers = _stemmers.__dict__
    if language not in stemmers:
        import Stemmer  # PyStemmer

        stemmers[language] = Stemmer.Stemmer(_SNOWBALL[language])
    return stemmers[language].stemWord(word)


@functools.lru_cache(maxsize=65536)
def _term(word: str, language: str) -> str:
    """One lowercased word as indexed: stemmed and folded in the language's order; "" for an
    English stop word."""
    if language == "turkish":
        for _ in range(TURKISH_ROUNDS):
            stem = _stem(word, language)
            if stem == word or len(stem) < MIN_STEM:
                break
            word = stem
        return fold(word)
    word = fold(word)
    if language == "english" and word in STOPWORDS_EN:
        return ""
    return _stem(word, language) if language in _SNOWBALL else word


class Analyzer:
    """Text -> BM25 terms for one language (see the module docstring for the steps)."""

    def __init__(self, language: str = "english"):
        self.language = _check_language(language)

    def tokens(self, text: str) -> list[str]:
        """The terms of `text` in order, repeats kept (BM25 counts them)."""
        words = _WORD.findall(lowercase(unicodedata.normalize("NFC", text), self.language))
        return [term for term in (_term(word, self.language) for word in words if len(word) > 1) if term]


class LexicalIndex:
    """BM25 scores of products for a query, from the arrays `arrays()` made (memory-mapped)."""

    PREFIX = "lexical."
    KEYS = ("terms.utf8", "terms.offsets", "indptr", "docs", "scores", "params", "language")
    # A query whose postings reach 1/DENSE_SHARE of the products is summed per product
    # (bincount over all rows) rather than sorted (np.unique): the same sums, in the same order.
    DENSE_SHARE = 8

    @staticmethod
    def arrays(texts: Sequence[str], language: str = "english", *, k1: float = 1.5,
               b: float = 0.75) -> dict[str, np.ndarray]:
        """Build from one text per product (row order = product order). Returns numpy arrays to
        save as .npy (memory-mappable, no pickle), every key starting with PREFIX: the sorted
        vocabulary (UTF-8 blob + int64 offsets), k1 and b, the language, and the precomputed BM25
        weights in CSC form per term (int64 indptr [terms + 1], int32 product rows ascending
        within a term, float32 weights). A text may be empty: that product never matches."""
        analyzer = Analyzer(language)
        documents = [analyzer.tokens(text) for text in texts]
        vocabulary = sorted({term for terms in documents for term in terms})
        ids = {term: i for i, term in enumerate(vocabulary)}
        if vocabulary:
            import bm25s  # only for building; serving needs numpy and PyStemmer only

            retriever = bm25s.BM25(k1=k1, b=b, method="lucene", backend="numpy", csc_backend="numpy")
            retriever.index(([[ids[t] for t in terms] for terms in documents], ids), create_empty_token=False,
                            show_progress=False)
            computed = retriever.scores
            indptr = np.asarray(computed["indptr"], np.int64)
            docs = np.asarray(computed["indices"], np.int32)
            scores = np.asarray(computed["data"], np.float32)
            if len(indptr) != len(vocabulary) + 1 or indptr[-1] != len(docs) or computed["num_docs"] != len(texts):
                raise RuntimeError("bm25s returned a score matrix of another shape")  # another bm25s version
            terms_of = np.repeat(np.arange(len(vocabulary)), np.diff(indptr))
            order = np.lexsort((docs, terms_of))  # rows ascending within each term
            docs, scores = docs[order], scores[order]
        else:  # no product has a word: an index that matches nothing
            indptr, docs, scores = np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)
        blob, offsets = StringTable.arrays(vocabulary)
        p = LexicalIndex.PREFIX
        return {f"{p}terms.utf8": blob, f"{p}terms.offsets": offsets, f"{p}indptr": indptr,
                f"{p}docs": docs, f"{p}scores": scores, f"{p}params": np.array([k1, b], np.float64),
                f"{p}language": np.frombuffer(language.encode("utf-8"), np.uint8).copy()}

    def __init__(self, arrays: dict[str, np.ndarray], n_products: int, language: str = "english"):
        """`arrays`: what arrays() returned, or np.load(mmap_mode="r") views of it (not copied).
        ValueError when they are inconsistent or were built for another language."""
        p = self.PREFIX
        self.analyzer = Analyzer(language)
        self.language, self.n_products = language, int(n_products)
        self.terms = StringTable(arrays[f"{p}terms.utf8"], arrays[f"{p}terms.offsets"])
        self.indptr, self.docs, self.weights = arrays[f"{p}indptr"], arrays[f"{p}docs"], arrays[f"{p}scores"]
        params = arrays[f"{p}params"]
        built = bytes(arrays[f"{p}language"]).decode("utf-8")
        if built != language:
            raise ValueError(f"lexical index was built for language {built!r}, not {language!r}")
        ok = (self.indptr.dtype == np.int64 and self.docs.dtype == np.int32 and self.weights.dtype == np.float32
              and self.indptr.shape == (len(self.terms) + 1,) and int(self.indptr[0]) == 0
              and int(self.indptr[-1]) == len(self.docs) == len(self.weights) and params.shape == (2,))
        if not ok:
            raise ValueError("lexical arrays disagree (shapes or types)")
        self.k1, self.b = float(params[0]), float(params[1])

    def _term_counts(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the query's terms in the vocabulary (those it has) and how often each occurs."""
        rows = [self.terms.find(term) for term in self.analyzer.tokens(text)]
        known = np.array([row for row in rows if row is not None], np.int64)
        return np.unique(known, return_counts=True)

    def matches(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Products with a BM25 score > 0 for the query: rows (int64, ascending) and scores
        (float32). A product's score is the sum, over the query's terms, of the term's weight in
        it multiplied by how often the term occurs in the query (as bm25s's get_scores counts a
        repeated token): "red red dress" weighs red twice. Empty or unknown text: no rows."""
        terms, counts = self._term_counts(text)
        if not len(terms):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        spans = [(int(self.indptr[t]), int(self.indptr[t + 1]), np.float32(c))
                 for t, c in zip(terms, counts, strict=True)]
        if len(spans) == 1:  # one term: its postings are already sorted and unique
            s, e, c = spans[0]
            return self.docs[s:e].astype(np.int64), (self.weights[s:e] * c).astype(np.float32)
        docs = np.concatenate([self.docs[s:e] for s, e, _ in spans])
        weights = np.concatenate([self.weights[s:e] * c for s, e, c in spans])
        if len(docs) * self.DENSE_SHARE >= self.n_products:  # many postings: a sum per product beats a sort
            dense = np.bincount(docs, weights=weights, minlength=self.n_products)
            rows = np.flatnonzero(dense)
            return rows.astype(np.int64), dense[rows].astype(np.float32)
        rows, inverse = np.unique(docs, return_inverse=True)
        return rows.astype(np.int64), np.bincount(inverse, weights=weights, minlength=len(rows)).astype(np.float32)

    def scores(self, text: str) -> np.ndarray:
        """Dense float32 [n_products] BM25 scores (0 where no term matches)."""
        out = np.zeros(self.n_products, np.float32)
        rows, values = self.matches(text)
        out[rows] = values
        return out

    def describe(self) -> dict:
        return {"engine": "bm25s", "language": self.language, "terms": len(self.terms), "k1": self.k1, "b": self.b}

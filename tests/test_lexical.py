"""search/lexical.py: the BM25 engine over product text, its analysis (English and Turkish
Snowball stemming, Turkish I/i, accent folding) and its memory-mappable arrays."""
from __future__ import annotations

import numpy as np
import pytest

from search.lexical import LANGUAGES, STOPWORDS_EN, Analyzer, LexicalIndex, lowercase

NAMES = [
    "Black Point Collar Cotton Tunic",
    "Gray Crew Neck Tunic",
    "Mink Tunic Allday",
    "Maroon Cotton Crew Neck Blouses",
    "Floral Crew Neck Tunic",
    "Point Collar Stripe Black Sweat Shirt",
    "Navy Blue Tunic",
    "Sea Green Tunic",
]


def index_of(texts, language="english", **params) -> LexicalIndex:
    return LexicalIndex(LexicalIndex.arrays(texts, language, **params), len(texts), language)


def best(index: LexicalIndex, query: str) -> int:
    return int(np.argmax(index.scores(query)))


def test_rare_word_outweighs_common_one():
    index = index_of(NAMES)
    assert sum("tunic" in n.lower() for n in NAMES) > len(NAMES) / 2
    mink = NAMES.index("Mink Tunic Allday")
    assert index.scores("mink")[mink] > index.scores("tunic")[mink] > 0
    assert best(index, "tunic mink") == mink
    # The rare word alone beats the common word alone everywhere it is the only match.
    assert index.scores("mink").max() > index.scores("tunic").max()


def test_matching_product_beats_others_and_only_matches_score():
    index = index_of(NAMES)
    scores = index.scores("cotton blouses")
    rows, values = index.matches("cotton blouses")
    assert set(rows.tolist()) == {i for i, n in enumerate(NAMES) if "Cotton" in n or "Blouses" in n}
    assert (values > 0).all() and (np.delete(scores, rows) == 0).all()
    assert best(index, "cotton blouses") == NAMES.index("Maroon Cotton Crew Neck Blouses")


@pytest.mark.parametrize("query", ["tunic", "black tunic", "crew neck", "point collar point", "mink", "zzz", ""])
def test_matches_agree_with_scores(query):
    index = index_of(NAMES)
    rows, values = index.matches(query)
    scores = index.scores(query)
    assert rows.dtype == np.int64 and values.dtype == np.float32 and scores.dtype == np.float32
    assert scores.shape == (len(NAMES),)
    assert (np.diff(rows) > 0).all()
    assert np.array_equal(rows, np.flatnonzero(scores))
    assert np.array_equal(values, scores[rows])


def test_sparse_and_dense_sums_agree():
    rng = np.random.default_rng(0)
    words = ["tunic", "dress", "mink", "cotton", "navy", "blue", "crew", "neck", "floral", "shirt"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(0, 6)))) for _ in range(300)]
    sparse, dense = index_of(texts), index_of(texts)
    sparse.DENSE_SHARE, dense.DENSE_SHARE = 0, 10**9  # never / always summed per product
    for query in ["tunic", "mink dress", "navy blue crew neck", "cotton cotton shirt zzz"]:
        for got, want in zip(sparse.matches(query), dense.matches(query), strict=True):
            assert np.array_equal(got, want), query


def test_scores_agree_with_bm25s_get_scores():
    import bm25s

    texts = NAMES + ["tunic tunic tunic dress", "", "a long description of a cotton crew neck tunic dress"]
    analyzer = Analyzer("english")
    reference = bm25s.BM25(k1=1.2, b=0.6, method="lucene")
    reference.index([analyzer.tokens(t) for t in texts], show_progress=False)
    index = index_of(texts, k1=1.2, b=0.6)
    for query in ["tunic", "cotton crew neck tunic", "dresses", "black black tunic", "mink zzz tunic"]:
        expected = reference.get_scores(analyzer.tokens(query))
        np.testing.assert_allclose(index.scores(query), expected, rtol=1e-5, atol=1e-7)
    assert index.describe() == {"engine": "bm25s", "language": "english", "terms": len(reference.vocab_dict) - 1,
                                "k1": 1.2, "b": 0.6}  # bm25s adds its empty token


def test_repeated_query_term_counts_per_occurrence():
    index = index_of(NAMES)
    np.testing.assert_allclose(index.scores("tunic tunic"), 2 * index.scores("tunic"), rtol=1e-6)


def test_english_stemming_and_stop_words():
    index = index_of(["Red Dress", "Denim Jacket", "The Wool Coat"])
    assert best(index, "dresses") == 0 and index.matches("dresses")[0].tolist() == [0]
    assert index.matches("jackets")[0].tolist() == [1]
    assert index.matches("the")[0].size == 0  # a stop word, though product 2 has it
    assert np.array_equal(index.scores("the red dress of a"), index.scores("red dress"))
    assert Analyzer("english").tokens("The jackets of the dresses") == ["jacket", "dress"]
    assert Analyzer("none").tokens("The jackets") == ["the", "jackets"]  # no stems, no stop words


def test_stop_words_are_bm25s_english_list():
    from bm25s.stopwords import STOPWORDS_EN as BM25S_EN

    assert STOPWORDS_EN == frozenset(BM25S_EN)


def test_words_split_on_punctuation_and_drop_one_letter():
    assert Analyzer("none").tokens("t-shirt, crew/neck (size 38) x") == ["shirt", "crew", "neck", "size", "38"]


def test_turkish_case_plural_and_dotless_i():
    turkish = Analyzer("turkish")
    assert turkish.tokens("ELBİSE") == turkish.tokens("elbise") == turkish.tokens("elbiseler") \
        == turkish.tokens("elbıse")
    assert turkish.tokens("pantolon") == turkish.tokens("pantolonlar")
    assert lowercase("IŞIK", "turkish") == "ışık" and turkish.tokens("IŞIK") == ["isik"]
    assert lowercase("İstanbul", "turkish") == lowercase("İstanbul", "english") == "istanbul"
    for language in LANGUAGES:
        assert Analyzer(language).tokens("İstanbul") == ["istanbul"]
        assert "\u0307" not in "".join(Analyzer(language).tokens("İSTANBUL İİ KIŞ"))
    index = index_of(["Siyah ELBİSE", "Beyaz gömlek", "Mavi pantolon"], "turkish")
    for query in ("elbise", "elbiseler", "ELBISE", "elbıse"):
        assert index.matches(query)[0].tolist() == [0], query
    assert index.matches("gomlek")[0].tolist() == [1] and index.matches("GÖMLEKLER")[0].tolist() == [1]
    assert index.matches("pantolonlar")[0].tolist() == [2]


def test_turkish_stem_keeps_three_letters():
    # Snowball alone cuts "mini" to "m" and "uzun" to "uz"; a stem under 3 letters is not taken.
    assert Analyzer("turkish").tokens("mini uzun") == ["mini", "uzun"]


def test_accents_fold_in_english():
    index = index_of(["Café au lait tunic", "Crêpes blouse", "Plain shirt"])
    assert index.matches("cafe")[0].tolist() == [0]
    assert index.matches("CAFÉ")[0].tolist() == [0]
    assert index.matches("cafe\u0301")[0].tolist() == [0]  # decomposed é: NFC first
    assert index.matches("crepes")[0].tolist() == [1] and index.matches("crepe")[0].tolist() == [1]
    assert Analyzer("english").tokens("gömlek") == Analyzer("english").tokens("gomlek")


def test_arrays_round_trip_memory_mapped(tmp_path):
    texts = NAMES + ["", "Kadın ELBİSE gömlek"]
    arrays = LexicalIndex.arrays(texts, "turkish", k1=1.3, b=0.7)
    assert all(key.startswith(LexicalIndex.PREFIX) for key in arrays)
    assert all(a.dtype != object and isinstance(a, np.ndarray) for a in arrays.values())
    for key, array in arrays.items():
        np.save(tmp_path / f"{key}.npy", array, allow_pickle=False)
    loaded = {key: np.load(tmp_path / f"{key}.npy", mmap_mode="r", allow_pickle=False) for key in arrays}
    mapped = LexicalIndex(loaded, len(texts), "turkish")
    built = LexicalIndex(arrays, len(texts), "turkish")
    assert mapped.docs is loaded["lexical.docs"] and mapped.weights is loaded["lexical.scores"]  # not copied
    for query in ["tunic", "elbiseler gomlek", "crew neck", "zzz", ""]:
        assert np.array_equal(mapped.scores(query), built.scores(query))
        for got, want in zip(mapped.matches(query), built.matches(query), strict=True):
            assert np.array_equal(got, want)
    assert mapped.describe() == {"engine": "bm25s", "language": "turkish", "terms": built.describe()["terms"],
                                 "k1": 1.3, "b": 0.7}


def test_layout():
    p = LexicalIndex.PREFIX
    assert LexicalIndex.arrays(["b a", "c b"], "none")[f"{p}terms.offsets"].tolist() == [0]  # 1-letter words
    arrays = LexicalIndex.arrays(["bb aa", "cc bb"], "none")
    assert bytes(arrays[f"{p}terms.utf8"]).decode() == "aabbcc" and arrays[f"{p}terms.offsets"].tolist() == [0, 2, 4, 6]
    assert arrays[f"{p}indptr"].dtype == np.int64 and arrays[f"{p}indptr"].tolist() == [0, 1, 3, 4]
    assert arrays[f"{p}docs"].dtype == np.int32 and arrays[f"{p}docs"].tolist() == [0, 0, 1, 1]
    assert arrays[f"{p}scores"].dtype == np.float32 and (arrays[f"{p}scores"] > 0).all()


def test_unknown_language():
    with pytest.raises(ValueError, match="klingon"):
        Analyzer("klingon")
    with pytest.raises(ValueError):
        LexicalIndex.arrays(["a dress"], "klingon")
    with pytest.raises(ValueError):
        lowercase("Dress", "klingon")
    arrays = LexicalIndex.arrays(["red dress"], "turkish")
    with pytest.raises(ValueError, match="turkish"):
        LexicalIndex(arrays, 1, "english")  # built for another analysis


def test_products_without_text_never_match():
    texts = ["", "red dress", "   ", "-- 1 --", "dress"]
    index = index_of(texts)
    rows, _ = index.matches("red dress 1")
    assert rows.tolist() == [1, 4]
    empty = index_of(["", "  "])
    assert empty.describe()["terms"] == 0
    assert empty.matches("dress")[0].size == 0 and not empty.scores("dress").any()
    assert index_of([]).scores("dress").shape == (0,)

"""Product text -> the cloth model's garment classes, with the garment words kept as data.

The cloth model (rembg u2net_cloth_seg) labels clothes upper, lower or full (a full-body garment such
as a dress). A photo often shows more than the product (a tunic worn over jeans), so the product's own
text -- catalog folder name, feed title or category -- decides the classes to keep. The words live in
garment_vocabulary.json; this module only matches them.

Matching rules (the JSON's "rules" says the same):
1. Folding, for vocabulary and text alike: Turkish İ and ı -> i, casefold, NFKD without combining
   marks. TUNİK, TUNIK, tunık -> tunik; gömlek -> gomlek; túnica -> tunica.
2. Tokens are runs of letters (ids, digits, hyphens, punctuation separate them); words of several
   tokens ("sweat shirt", "kot pantolon") match tokens in a row. Only 10,000 characters are read.
3. At a position the longest entry wins over its parts, and an exact match over a stripped one.
4. A token is also tried with a language's suffixes stripped ("ies>y": strip ies, add y), then with
   that language's final consonant softening reversed (etegi -> eteg -> etek); the result matches
   only that language's words and keeps at least 3 letters.
5. Languages with "compounds" (German, Dutch): an otherwise unmatched token ending in one of their
   words, with at least 3 letters before it, matches the longest such word (sommerkleid -> kleid).
6. "not_garments" phrases ("gömlek yaka" = shirt collar) hide their tokens and name no garment.
7. The LAST garment named wins: product names put the head noun last ("stripe black sweat shirt");
   a text naming none keeps every class (source "all").
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

GARMENT_CLASSES = ("upper", "lower", "full")  # the cloth model's garment classes, in this order
VOCABULARY_FILE = Path(__file__).with_name("garment_vocabulary.json")
MAX_TEXT_CHARS = 10_000  # titles are short; a pasted description must stay cheap
MIN_STEM = 3  # shorter stems and compound prefixes match by chance
_LETTER_RUN = re.compile(r"[^\W\d_]+")


def fold(text: str) -> str:
    """Case- and accent-free form; İ/ı first, since "İ".lower() is "i" plus a combining dot."""
    text = text.replace("İ", "i").replace("ı", "i").casefold()
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _tokens(text: str) -> list[tuple[str, str]]:
    """(as written, folded) for each run of letters; NFC first so decomposed accents stay inside."""
    return [(run, fold(run)) for run in _LETTER_RUN.findall(unicodedata.normalize("NFC", text))]


@dataclass(frozen=True)
class GarmentChoice:
    classes: tuple[str, ...]  # non-empty, ordered as GARMENT_CLASSES
    source: str  # "product": the text named a garment | "all": it named none (all classes kept)
    garment: str | None = None  # the garment entry that decided; None when source == "all"
    matched: tuple[str, ...] = ()  # the deciding words as written in the text, e.g. ("tunikler",)

    def as_dict(self) -> dict:
        return {"classes": list(self.classes), "source": self.source, "garment": self.garment,
                "matched": list(self.matched)}


class VocabularyError(ValueError):
    """A malformed vocabulary: the message names the file and the entry."""


@dataclass(frozen=True)
class _Language:
    name: str
    suffixes: tuple[tuple[str, str], ...]  # (strip, add), longest strip first
    softening: tuple[tuple[str, str], ...]  # (softened last letter, original)
    compounds: bool


@dataclass(frozen=True)
class _Entry:
    garment: str | None  # None: a not_garments phrase
    languages: frozenset[str]


@functools.lru_cache(maxsize=16384)
def _stems(token: str, language: _Language) -> tuple[str, ...]:
    stems = []
    for strip, add in language.suffixes:
        if token.endswith(strip) and len(token) - len(strip) + len(add) >= MIN_STEM:
            stem = token[: len(token) - len(strip)] + add
            stems.append(stem)
            stems += [stem[:-1] + hard for soft, hard in language.softening if stem.endswith(soft)]
    return tuple(stems)


class Vocabulary:
    """Garment words by language, each mapped to the cloth classes its garment keeps."""

    def __init__(self, languages, garment_classes, entries, path, sha256, version):
        self.path, self.sha256, self.version = path, sha256, version
        self._languages: dict[str, _Language] = languages
        self._garment_classes: dict[str, tuple[str, ...]] = garment_classes
        self._entries: dict[tuple[str, ...], _Entry] = entries
        self._by_first: dict[str, list[tuple[tuple[str, ...], _Entry]]] = {}
        for key, entry in sorted(entries.items(), key=lambda item: -len(item[0])):
            self._by_first.setdefault(key[0], []).append((key, entry))
        self._compound_heads = {code: {key[0]: e for key, e in entries.items()  # single garment words
                                       if len(key) == 1 and code in e.languages and e.garment}
                                for code, lang in languages.items() if lang.compounds}

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Vocabulary":
        raw = (path := Path(path) if path is not None else VOCABULARY_FILE).read_bytes()
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise VocabularyError(f"{path}: not UTF-8 JSON: {error}") from None
        vocabulary = cls.from_dict(data, path)
        vocabulary.sha256 = hashlib.sha256(raw).hexdigest()
        return vocabulary

    @classmethod
    def from_dict(cls, data: dict, path=None) -> "Vocabulary":
        where = str(path) if path is not None else "<vocabulary dict>"

        def need(condition, entry: str, problem: str) -> None:
            if not condition:
                raise VocabularyError(f"{where}: {entry}: {problem}")

        def strings(value, allow_empty=False) -> bool:
            return isinstance(value, list) and (allow_empty or bool(value)) and all(isinstance(v, str) for v in value)

        need(isinstance(data, dict), "(top level)", "must be a JSON object")
        need(isinstance(data.get("version"), int), "version", "must be an integer")
        classes = data.get("classes")
        need(strings(classes) and set(classes) <= set(GARMENT_CLASSES), "classes",
             f"must list some of {list(GARMENT_CLASSES)}, got {classes!r}")
        need(isinstance(data.get("languages"), dict) and data["languages"], "languages", "must be a non-empty object")
        languages: dict[str, _Language] = {}
        for code, spec in data["languages"].items():
            entry = f"languages.{code}"
            need(isinstance(spec, dict) and isinstance(spec.get("name"), str) and spec["name"], entry,
                 "must be an object with a name")
            rules, softening = spec.get("suffixes", []), spec.get("final_consonant_softening", {})
            need(strings(rules, allow_empty=True), f"{entry}.suffixes", "must be a list of strings")
            suffixes = [tuple(fold(part) for part in rule.partition(">")[::2]) for rule in rules]
            for rule, (strip, add) in zip(rules, suffixes):
                need(strip.isalpha() and (add.isalpha() or not add), f"{entry}.suffixes",
                     f"{rule!r} is not 'strip' or 'strip>add' in letters")
            need(isinstance(softening, dict) and all(isinstance(k, str) and isinstance(v, str) and
                                                     len(fold(k)) == len(fold(v)) == 1 for k, v in softening.items()),
                 f"{entry}.final_consonant_softening", "must map single letters to single letters")
            languages[code] = _Language(spec["name"], tuple(sorted(set(suffixes), key=lambda s: -len(s[0]))),
                                        tuple((fold(k), fold(v)) for k, v in softening.items()),
                                        bool(spec.get("compounds", False)))

        entries: dict[tuple[str, ...], _Entry] = {}

        def add_words(entry: str, garment: str | None, code: str, words) -> None:
            need(code in languages, entry, f"unknown language {code!r} (not in languages)")
            need(strings(words), f"{entry}.{code}", "must be a non-empty list of strings")
            for word in words:
                key = tuple(folded for _, folded in _tokens(word))
                need(key and (len(key) > 1 or len(key[0]) >= MIN_STEM), f"{entry}.{code}",
                     f"{word!r} needs at least {MIN_STEM} letters")
                known = entries.get(key)
                need(not known or known.garment == garment, f"{entry}.{code}",
                     f"{word!r} is already a word of {known and (known.garment or 'not_garments')}")
                entries[key] = _Entry(garment, (known.languages if known else frozenset()) | {code})

        need(isinstance(data.get("garments"), dict) and data["garments"], "garments", "must be a non-empty object")
        garment_classes: dict[str, tuple[str, ...]] = {}
        for garment, spec in data["garments"].items():
            entry = f"garments.{garment}"
            need(isinstance(spec, dict), entry, "must be an object")
            wanted = spec.get("classes")
            need(strings(wanted) and set(wanted) <= set(classes), f"{entry}.classes",
                 f"must list some of {classes}, got {wanted!r}")
            garment_classes[garment] = tuple(c for c in GARMENT_CLASSES if c in wanted)
            codes = [key for key in spec if key not in ("classes", "doc")]
            need(codes, entry, "lists no words")
            for code in codes:
                add_words(entry, garment, code, spec[code])
        need(isinstance(data.get("not_garments", {}), dict), "not_garments", "must be an object")
        for code, words in data.get("not_garments", {}).items():
            if code != "doc":
                add_words("not_garments", None, code, words)
        canonical = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return cls(languages, garment_classes, entries, Path(path) if path is not None else None,
                   hashlib.sha256(canonical.encode("utf-8")).hexdigest(), data["version"])

    def _forms(self, token: str) -> dict[str, frozenset[str] | None]:
        """The token itself (None: any language) and its stems with the languages that made them."""
        forms: dict[str, frozenset[str] | None] = {token: None}
        for code, language in self._languages.items():
            for stem in _stems(token, language):
                if stem not in forms or forms[stem] is not None:
                    forms[stem] = (forms.get(stem) or frozenset()) | {code}
        return forms

    def _match_at(self, forms: list[dict], i: int) -> tuple[_Entry, int] | None:
        best = None  # ((tokens, exact tokens), entry)
        for first in forms[i]:
            for key, entry in self._by_first.get(first, ()):
                if i + len(key) > len(forms):
                    continue
                found = [forms[i + j].get(word, False) for j, word in enumerate(key)]
                if all(f is None or (f and f & entry.languages) for f in found):
                    score = (len(key), sum(f is None for f in found))
                    if best is None or score > best[0]:
                        best = (score, entry)
        if best:
            return best[1], best[0][0]
        for code, heads in self._compound_heads.items():
            for form in (t for t, langs in forms[i].items() if langs is None or code in langs):
                # the first hit, with the shortest prefix, is the longest head word
                start = next((k for k in range(MIN_STEM, len(form)) if form[k:] in heads), None)
                if start is not None and (best is None or len(form) - start > best[0]):
                    best = (len(form) - start, heads[form[start:]])
        return (best[1], 1) if best else None

    def choose(self, text: str) -> GarmentChoice:
        tokens = _tokens(text[:MAX_TEXT_CHARS])
        forms = [self._forms(folded) for _, folded in tokens]
        decided, i = None, 0
        while i < len(tokens):
            entry, length = self._match_at(forms, i) or (None, 1)
            if entry and entry.garment:  # later garments overrule earlier ones
                decided = (entry.garment, tuple(written for written, _ in tokens[i:i + length]))
            i += length
        if decided is None:
            return GarmentChoice(GARMENT_CLASSES, "all")
        return GarmentChoice(self._garment_classes[decided[0]], "product", decided[0], decided[1])

    def stats(self) -> dict:
        """Counts of distinct folded garment words; a word listed under two languages counts once in "words"."""
        words = [e for e in self._entries.values() if e.garment is not None]
        return {"languages": {code: lang.name for code, lang in self._languages.items()}, "words": len(words),
                "words_per_class": {c: sum(c in self._garment_classes[e.garment] for e in words)
                                    for c in GARMENT_CLASSES},
                "words_per_language": {code: sum(code in e.languages for e in words) for code in self._languages},
                "garments": len(self._garment_classes)}


@functools.cache
def default_vocabulary() -> Vocabulary:
    return Vocabulary.load()


def choose_classes(text: str, vocabulary: Vocabulary | None = None) -> GarmentChoice:
    return (vocabulary or default_vocabulary()).choose(text)


def catalog_table(vocabulary: Vocabulary, catalog: Path) -> str:
    """A markdown table of the choice for each product folder (its name is the product text)."""
    rows = ["| product | classes | source | garment | matched words |", "|---|---|---|---|---|"]
    for folder in sorted(p for p in catalog.iterdir() if p.is_dir()):
        choice = vocabulary.choose(folder.name)
        cells = (folder.name, ", ".join(choice.classes), choice.source, choice.garment or "",
                 " ".join(choice.matched))
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("python -m shared.garment_vocabulary", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="product names, titles or categories")
    parser.add_argument("--catalog", type=Path, metavar="DIR", help="a table for each product folder in DIR")
    parser.add_argument("--stats", action="store_true", help="print the vocabulary's counts as JSON")
    parser.add_argument("--vocabulary", type=Path, metavar="FILE", help=f"default {VOCABULARY_FILE.name}")
    args = parser.parse_args(argv)
    if not (args.texts or args.catalog or args.stats):
        parser.error("give TEXT, --catalog DIR or --stats")
    if args.catalog and not args.catalog.is_dir():
        parser.error(f"--catalog {args.catalog}: not a folder")
    try:
        vocabulary = Vocabulary.load(args.vocabulary)
    except (VocabularyError, OSError) as error:
        print(error, file=sys.stderr)
        return 2
    if args.stats:
        print(json.dumps(vocabulary.stats(), indent=2, ensure_ascii=False))
    for text in args.texts:
        print(json.dumps({"text": text, **vocabulary.choose(text).as_dict()}, ensure_ascii=False))
    if args.catalog:
        print(catalog_table(vocabulary, args.catalog))
    return 0


if __name__ == "__main__":
    sys.exit(main())

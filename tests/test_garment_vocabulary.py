"""Product text -> cloth-model garment classes (shared.garment_vocabulary): fast, no models."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.garment_vocabulary import (
    GARMENT_CLASSES, VOCABULARY_FILE, GarmentChoice, Vocabulary, VocabularyError, choose_classes,
    default_vocabulary, fold, main,
)

REPO = Path(__file__).resolve().parent.parent
UPPER_FULL, UPPER, LOWER, FULL, UPPER_LOWER = ("upper", "full"), ("upper",), ("lower",), ("full",), ("upper", "lower")

# The sample catalog's product folders: colour, details, garment, shop, product id.
SAMPLE_CATALOG = """
1-black-traverse-point-collar-cotton-tunic-sahra-butik-8271559 10-gray-crew-neck-tunic-plistre-7931669
11-light-blue-crew-neck-tunic-mevanur-tesettur-8496828 12-light-blue-point-collar-cotton-tunic-refka-7987327
13-maroon-cotton-crew-neck-blouses-elis-sile-bezi-8220309 14-maroon-round-collar-tunic-allday-8466830
15-mink-tunic-allday-7856692 16-mint-tunic-tofisa-8428661 17-mustard-tunic-modapinhan-8504678
18-navy-blue-tunic-instyle-8555985 18-neutral-tunic-gizce-8352615 19-onion-skin-crew-neck-tunic-kensiz-8485708
2-brown-floral-tunic-ferace-8405373 20-orange-crew-neck-tunic-tesettur-dunyasi-8493974
21-orange-crew-neck-tunic-tesettur-dunyasi-8507601 22-point-collar-stripe-black-sweat-shirt-tavin-8130197
23-powder-multi-crew-neck-tunic-tofisa-8317461 24-powder-tunic-yarece-8196898
25-printed-crew-neck-tunic-tofisa-8329526 26-results-black-traverse
27-sea-green-point-collar-tunic-nacchos-8421695 28-sea-green-tunic-instyle-8432677
29-terra-cotta-crew-neck-tunic-tesettur-dunyasi-8303810 3-brown-tunic-fahhar-8556104
30-unlined--purple--tunic--elis-sile-bezi-8399301 31-unlined--turquoise--tunic--elis-sile-bezi-8386166
4-coral-cotton-crew-neck-tunic-elis-sile-bezi-8293636 5-cotton-crew-neck-tunic-elis-sile-bezi-8293634
6-crew-neck-cotton-tunic-ecesun-8149627 7-floral-crew-neck-tunic-armagan-butik-8452138
8-fuchsia-crew-neck-cotton-tunic-por-la-cara-8199326 9-fuchsia-tunic-imaj-butik-8476285
""".split()


def classes(text: str) -> tuple[str, ...]:
    return choose_classes(text).classes


def raw_vocabulary() -> dict:
    return json.loads(VOCABULARY_FILE.read_text(encoding="utf-8"))


@pytest.mark.parametrize("text, expected, garment", [
    ("tunic", UPPER_FULL, "tunic"),
    ("jeans", LOWER, "jeans"),
    ("dress", FULL, "dress"),
    ("Kadın Lacivert Tesettür Tunik", UPPER_FULL, "tunic"),
    ("Elbiseler", FULL, "dress"),
    ("shirt dress", FULL, "shirt_dress"),
    ("dress shirt", UPPER, "dress_shirt"),
    ("Slim Fit Dress Shirt", UPPER, "dress_shirt"),
    ("gömlek elbise", FULL, "shirt_dress"),
    ("Gömlek Elbiseler", FULL, "shirt_dress"),
    ("robe chemise", FULL, "shirt_dress"),
    ("vestido camisero", FULL, "shirt_dress"),
    ("point collar stripe black sweat shirt", UPPER, "sweatshirt"),
    ("tunik pantolon takım", UPPER_LOWER, "set"),
    ("İkili Takım", UPPER_LOWER, "set"),
    ("two-piece", UPPER_LOWER, "set"),
    ("co-ord sets", UPPER_LOWER, "set"),
    ("Takım Elbise", UPPER_LOWER, "suit"),
    ("pijama takımı", UPPER_LOWER, "pyjamas"),
    ("pyjamas", UPPER_LOWER, "pyjamas"),
    ("eşofman", UPPER_LOWER, "tracksuit"),
    ("Eşofman Altı", LOWER, "bottoms"),
    ("eşofman üstü", UPPER, "top_of_a_set"),
    ("tunic over jeans", LOWER, "jeans"),  # the last garment named wins, by rule
    ("Kot Ceket", UPPER, "jacket"),
    ("kot pantolon", LOWER, "jeans"),
    ("ferace", UPPER_FULL, "ferace"),
    ("Pardösü", UPPER_FULL, "trench_coat"),
    ("trençkot", UPPER_FULL, "trench_coat"),
    ("kap", UPPER_FULL, "kap"),
    ("abaya", FULL, "abaya"),
    ("kaftan", UPPER_FULL, "kaftan"),
    ("abiye", FULL, "evening_dress"),
    ("tulum", ("lower", "full"), "jumpsuit"),
    ("long wool coat", UPPER_FULL, "coat"),
    ("büstiyer", UPPER, "bustier"),
    ("hırka", UPPER, "cardigan"),
    ("tişört", UPPER, "t_shirt"),
    ("T-Shirt", UPPER, "t_shirt"),
    ("Crop Top", UPPER, "crop_top"),
    ("tank top", UPPER, "tank_top"),
    ("Hoodies", UPPER, "hoodie"),
    ("Gömlek Yaka Tunik", UPPER_FULL, "tunic"),  # "gömlek yaka" is a collar, not a shirt
    ("veste en jean", UPPER, "jacket"),  # "en jean" says the fabric
    ("Sommerkleid", FULL, "dress"),  # German compound
    ("Jeansjacke", UPPER, "jacket"),
    ("zomerjurken", FULL, "dress"),  # Dutch compound + plural
])
def test_product_text_names_its_garment(text, expected, garment):
    choice = choose_classes(text)
    assert (choice.classes, choice.source, choice.garment) == (expected, "product", garment)


@pytest.mark.parametrize("text", ["TUNİK", "Tunik", "TUNIK", "tunık", "TUNİKLER", "tunikler", "túnica", "Tunika",
                                  "tunique", "TUNİĞİ"])
def test_turkish_casing_plurals_and_accents_fold_to_tunic(text):
    choice = choose_classes(text)
    assert choice.garment == "tunic" and choice.matched == (text,)


@pytest.mark.parametrize("text, garment", [
    ("KAZAĞI", "sweater"), ("ELBİSELER", "dress"), ("elbisesi", "dress"), ("dresses", "dress"),
    ("gömleği", "shirt"), ("GÖMLEKLER", "shirt"), ("eteği", "skirt"), ("pantolonu", "trousers"),
    ("ceketler", "jacket"), ("skirts", "skirt"), ("blouses", "blouse"), ("Hose", "trousers"), ("Hosen", "trousers"),
    ("jupe", "skirt"), ("Röcke", "skirt"), ("Kleider", "dress"), ("faldas", "skirt"), ("pantalones", "trousers"),
    ("gonne", "skirt"), ("giacche", "jacket"), ("manteaux", "coat"), ("ŞORT", "shorts"), ("şortlar", "shorts"),
])
def test_inflected_forms_match_their_garment(text, garment):
    assert choose_classes(text).garment == garment


@pytest.mark.parametrize("text", [
    "26-results-black-traverse", "tesettür", "Tesettür Giyim", "", "   ", "8130197", "cotton crew neck",
    "pamuk yaka", "point collar", "black", "şile bezi", "butik", "denim", "short sleeve",
])
def test_text_naming_no_garment_keeps_every_class(text):
    assert choose_classes(text) == GarmentChoice(GARMENT_CLASSES, "all")


def test_no_ambiguous_or_style_words_in_the_vocabulary():
    vocabulary = raw_vocabulary()
    words = {fold(word) for garment in vocabulary["garments"].values()
             for key, listed in garment.items() if key not in ("classes", "doc") for word in listed}
    for not_a_garment in ["collar", "yaka", "crew neck", "neck", "cotton", "pamuk", "tesettür", "butik", "black",
                          "denim", "short", "bezi", "şile bezi", "modest", "tesettur", "overall"]:
        assert fold(not_a_garment) not in words, not_a_garment


@pytest.mark.parametrize("folder", SAMPLE_CATALOG)
def test_sample_catalog_folders(folder):
    choice = choose_classes(folder)
    if folder == "26-results-black-traverse":
        assert choice.source == "all" and choice.classes == GARMENT_CLASSES
    elif folder.startswith("13-"):
        assert (choice.garment, choice.classes, choice.matched) == ("blouse", UPPER, ("blouses",))
    elif folder.startswith("22-"):
        assert (choice.garment, choice.classes, choice.matched) == ("sweatshirt", UPPER, ("sweat", "shirt"))
    else:
        assert "tunic" in folder.split("-") and choice.classes == UPPER_FULL and choice.source == "product"
        # "2-...-tunic-ferace-...": Ferace is the shop, but the word is a garment: last wins, same classes
        assert choice.garment == ("ferace" if folder.startswith("2-") else "tunic")


def test_choice_as_dict():
    choice = choose_classes("15-mink-tunic-allday-7856692")
    assert choice.as_dict() == {"classes": ["upper", "full"], "source": "product", "garment": "tunic",
                                "matched": ["tunic"]}
    assert choose_classes("nothing").as_dict() == {"classes": list(GARMENT_CLASSES), "source": "all",
                                                   "garment": None, "matched": []}


def test_only_the_first_10000_characters_are_read():
    assert choose_classes("x" * 10_000 + " dress").source == "all"
    assert choose_classes("dress " + "x " * 20_000).garment == "dress"


def test_default_vocabulary_is_loaded_once_and_hashes_the_file():
    import hashlib

    vocabulary = default_vocabulary()
    assert vocabulary is default_vocabulary()
    assert vocabulary.path == VOCABULARY_FILE and vocabulary.version == raw_vocabulary()["version"]
    assert vocabulary.sha256 == hashlib.sha256(VOCABULARY_FILE.read_bytes()).hexdigest()


def test_a_modified_vocabulary_changes_the_choice_and_the_hash():
    data = raw_vocabulary()
    shipped = Vocabulary.from_dict(copy.deepcopy(data))
    assert shipped.choose("15-mink-tunic-allday").garment == "tunic"
    del data["garments"]["tunic"]["en"]
    edited = Vocabulary.from_dict(data)
    assert edited.choose("15-mink-tunic-allday").source == "all"
    assert edited.choose("tunik").garment == "tunic"
    assert edited.sha256 != shipped.sha256 and edited.path is None
    assert Vocabulary.from_dict(copy.deepcopy(data)).sha256 == edited.sha256  # canonical: same data, same hash


def test_load_from_another_file(tmp_path):
    data = raw_vocabulary()
    data["garments"]["tunic"]["classes"] = ["upper"]
    path = tmp_path / "vocabulary.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    vocabulary = Vocabulary.load(str(path))
    assert vocabulary.path == path and choose_classes("tunic", vocabulary).classes == UPPER


@pytest.mark.parametrize("edit, problem", [
    (lambda d: d["garments"]["tunic"].update(classes=["upper", "torso"]), "garments.tunic.classes"),
    (lambda d: d["garments"]["tunic"].update(classes=[]), "garments.tunic.classes"),
    (lambda d: d["garments"]["tunic"].update(en=[]), "garments.tunic.en"),
    (lambda d: d["garments"]["tunic"].update(xx=["tunic"]), "unknown language 'xx'"),
    (lambda d: d["garments"]["dress"].update(tr=["elbise", "tunik"]), "'tunik' is already a word of tunic"),
    (lambda d: d["garments"]["dress"].update(en=["TUNİC"]), "already a word of tunic"),  # same once folded
    (lambda d: d["garments"]["dress"].update(en=["ab"]), "at least 3 letters"),
    (lambda d: d["garments"]["dress"].update(en=["123"]), "at least 3 letters"),
    (lambda d: d["garments"].update(empty={"classes": ["full"]}), "garments.empty: lists no words"),
    (lambda d: d["not_garments"].update(en=["shirt dress"]), "already a word of shirt_dress"),
    (lambda d: d["languages"]["en"].update(suffixes=["i-es>y"]), "languages.en.suffixes"),
    (lambda d: d["languages"]["tr"].update(final_consonant_softening={"ğ": "kk"}), "final_consonant_softening"),
    (lambda d: d["languages"].pop("it"), "unknown language 'it'"),
    (lambda d: d.update(classes=["upper", "middle"]), "classes"),
    (lambda d: d.pop("version"), "version"),
    (lambda d: d.update(garments={}), "garments"),
])
def test_malformed_vocabularies_are_refused_naming_the_entry(edit, problem):
    data = raw_vocabulary()
    edit(data)
    with pytest.raises(VocabularyError, match="<vocabulary dict>: .*") as raised:
        Vocabulary.from_dict(data)
    assert problem in str(raised.value)


def test_a_malformed_file_is_named(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(VocabularyError, match="broken.json"):
        Vocabulary.load(path)
    data = raw_vocabulary()
    data["garments"]["jeans"]["classes"] = ["bottom"]
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(VocabularyError, match=r"broken\.json: garments\.jeans\.classes"):
        Vocabulary.load(path)


def test_stats_are_consistent():
    stats = default_vocabulary().stats()
    data = raw_vocabulary()
    assert set(stats) == {"languages", "words", "words_per_class", "words_per_language", "garments"}
    assert stats["languages"] == {code: spec["name"] for code, spec in data["languages"].items()}
    assert {"en", "tr", "de", "fr", "es", "it"} <= set(stats["languages"])
    assert stats["garments"] == len(data["garments"])
    assert list(stats["words_per_class"]) == list(GARMENT_CLASSES)
    assert all(0 < n <= stats["words"] for n in stats["words_per_class"].values())
    assert sum(stats["words_per_class"].values()) >= stats["words"]  # some garments keep two classes
    assert set(stats["words_per_language"]) == set(stats["languages"])
    assert max(stats["words_per_language"].values()) <= stats["words"] <= sum(stats["words_per_language"].values())
    assert stats["words_per_language"]["en"] >= 50 and stats["words_per_language"]["tr"] >= 50


def test_cli_texts_stats_and_catalog(tmp_path, capsys):
    for folder in SAMPLE_CATALOG:
        (tmp_path / folder).mkdir()
    (tmp_path / "not-a-product.txt").write_text("dress")
    assert main(["--catalog", str(tmp_path)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| product | classes | source | garment | matched words |"
    assert len(table) == 2 + len(SAMPLE_CATALOG)
    assert "| 22-point-collar-stripe-black-sweat-shirt-tavin-8130197 | upper | product | sweatshirt | sweat shirt |" \
        in table
    assert "| 26-results-black-traverse | upper, lower, full | all |  |  |" in table

    assert main(["--stats"]) == 0
    assert json.loads(capsys.readouterr().out) == default_vocabulary().stats()

    assert main(["Kadın Tunik", "elbise"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["text"], line["garment"]) for line in lines] == [("Kadın Tunik", "tunic"), ("elbise", "dress")]

    broken = tmp_path / "broken.json"
    broken.write_text("[]")
    assert main(["--vocabulary", str(broken), "tunic"]) == 2
    assert "broken.json" in capsys.readouterr().err


def test_cli_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "shared.garment_vocabulary", "TUNİKLER"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout)["classes"] == ["upper", "full"]

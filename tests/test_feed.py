"""Product feeds (search/indexing/feed.py): JSON Lines and CSV, attribute types declared or
inferred, and every bad row reported with its line number and reason."""
from __future__ import annotations

import json

import pytest

from search.indexing.feed import FeedError, check_bad_rows, load_schema, main, read_feed


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


GOOD = [
    {"id": "sku-1", "name": "Mink tunic", "images": ["https://cdn.test/1a.jpg", "https://cdn.test/1b.jpg"],
     "category": "Tunics", "brand": "Allday", "price": 49.9, "in_stock": True, "sizes": ["S", "M"]},
    {"id": 2, "name": "Sea green tunic", "images": "photos/2.jpg", "description": "Cotton, point collar",
     "price": 35, "in_stock": False},
]


def test_a_jsonl_feed_reads_fields_images_and_typed_attributes(tmp_path):
    feed = read_feed(write_jsonl(tmp_path / "feed.jsonl", GOOD))
    assert feed.bad_rows == []
    first, second = feed.products
    assert (first.id, first.name, first.category, first.brand) == ("sku-1", "Mink tunic", "Tunics", "Allday")
    assert first.images == ("https://cdn.test/1a.jpg", "https://cdn.test/1b.jpg")
    assert first.attributes == {"price": 49.9, "in_stock": True, "sizes": ["S", "M"]}
    assert second.id == "2" and second.images == (str((tmp_path / "photos" / "2.jpg").resolve()),)
    assert second.text == "Sea green tunic Cotton, point collar"
    assert feed.schema == {"price": "number", "in_stock": "boolean", "sizes": "strings"}
    assert feed.inferred == {"price", "in_stock", "sizes"}


def test_a_csv_feed_reads_text_as_the_attribute_types(tmp_path):
    path = tmp_path / "feed.csv"
    path.write_text("id,name,images,price,in_stock,sizes,colour_code\n"
                    "a,Mink tunic,https://cdn.test/a.jpg|https://cdn.test/b.jpg,49.90,true,S|M,0042\n"
                    "b,Navy tunic,b.jpg,12,false,L,0043\n"
                    "c,Mint tunic,c.jpg,,,,\n", encoding="utf-8")
    feed = read_feed(path, {"colour_code": "string"})
    assert feed.bad_rows == []
    a, b, c = feed.products
    assert a.images == ("https://cdn.test/a.jpg", "https://cdn.test/b.jpg")
    assert a.attributes == {"price": 49.9, "in_stock": True, "sizes": ["S", "M"], "colour_code": "0042"}
    assert b.attributes["sizes"] == ["L"] and b.attributes["in_stock"] is False  # one size: still a list
    assert c.attributes == {}  # empty cells are absent attributes
    assert feed.schema["sizes"] == "strings" and feed.inferred == {"price", "in_stock", "sizes"}


def test_bad_rows_are_reported_with_their_line_and_reason(tmp_path):
    rows = [*GOOD,
            {"name": "No id", "images": ["a.jpg"]},
            {"id": "sku-1", "name": "Again", "images": ["a.jpg"]},
            {"id": "x3", "name": "No images"},
            {"id": "x4", "name": "Empty images", "images": []},
            {"id": "x5", "name": "Bad price", "images": ["a.jpg"], "price": "cheap"},
            "{not json",
            {"id": "x7", "name": "  ", "images": ["a.jpg"]},
            {"id": "x8", "name": "Ftp image", "images": ["ftp://cdn.test/a.jpg"]},
            [1, 2]]
    feed = read_feed(write_jsonl(tmp_path / "feed.jsonl", rows))
    assert [p.id for p in feed.products] == ["sku-1", "2"]
    reasons = {row.line: str(row) for row in feed.bad_rows}
    assert reasons[3] == "line 3: no id"
    assert reasons[4] == "line 4 (id 'sku-1'): duplicate id: first on line 1"
    assert reasons[5] == "line 5 (id 'x3'): no images"
    assert reasons[6] == "line 6 (id 'x4'): no images"
    assert reasons[7] == "line 7 (id 'x5'): attribute 'price': 'cheap' is not a number"
    assert reasons[8].startswith("line 8: not JSON")
    assert reasons[9] == "line 9 (id 'x7'): name is empty"
    assert reasons[10] == "line 10 (id 'x8'): image 'ftp://cdn.test/a.jpg': only http(s) URLs or local paths"
    assert reasons[11] == "line 11: not a JSON object"
    with pytest.raises(FeedError, match=r"9 bad rows, 0 allowed \(--max-bad-rows\):\n  line 3: no id"):
        check_bad_rows(feed, 0)
    check_bad_rows(feed, 9)  # allowed: the build goes on and lists them


def test_an_attribute_has_one_type_across_the_feed(tmp_path):
    rows = [{"id": str(i), "name": f"Tunic {i}", "images": ["a.jpg"], "price": 10 + i} for i in range(3)]
    rows.append({"id": "odd", "name": "Odd", "images": ["a.jpg"], "price": "on request"})
    feed = read_feed(write_jsonl(tmp_path / "feed.jsonl", rows))
    assert feed.schema["price"] == "number"  # most values are numbers
    assert [str(r) for r in feed.bad_rows] == ["line 4 (id 'odd'): attribute 'price': 'on request' is not a number"]
    declared = read_feed(tmp_path / "feed.jsonl", {"price": "string"})
    assert declared.bad_rows == [] and declared.products[0].attributes["price"] == "10"
    assert declared.inferred == set()


def test_a_bad_schema_or_feed_file_is_refused_naming_it(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"price": "money"}))
    with pytest.raises(FeedError, match="'price' has type 'money'; types are string, number, boolean, strings"):
        load_schema(schema)
    schema.write_text(json.dumps({"name": "string"}))
    with pytest.raises(FeedError, match="'name' is a product field"):
        load_schema(schema)
    (tmp_path / "feed.xml").write_text("<rss/>")
    with pytest.raises(FeedError, match=r"\.jsonl \(JSON Lines\) or \.csv/\.tsv, not \.xml"):
        read_feed(tmp_path / "feed.xml")
    (tmp_path / "ragged.csv").write_text("id,name,images\na,Tunic,a.jpg,extra\n")
    assert [str(r) for r in read_feed(tmp_path / "ragged.csv").bad_rows] == [
        "line 2: more cells than the header has columns"]


def test_the_command_prints_the_schema_and_the_bad_rows(tmp_path, capsys):
    path = write_jsonl(tmp_path / "feed.jsonl", [*GOOD, {"id": "x", "name": "No images"}])
    assert main([str(path)]) == 1
    out, err = capsys.readouterr()
    assert "2 products, 1 bad rows" in out and "price: number (inferred)" in out
    assert 'inferred schema (save it and pass --schema to fix it): {"in_stock": "boolean"' in out
    assert "line 3 (id 'x'): no images" in err
    assert main([str(path), "--max-bad-rows", "1"]) == 0

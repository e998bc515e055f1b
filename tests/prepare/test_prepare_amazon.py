"""Raw Amazon readers: 2014 ratings CSV, dict-literal metadata, 2018 JSON lines; bad lines reported."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from mllmrec.data.text import mmrec_item_text
from mllmrec.prepare.amazon import item_fields, parse_meta_line, read_meta, read_ratings_2014, read_reviews_2018

from prepare_fixtures import meta_records, write_json_lines_gz, write_meta_2014, write_ratings_csv

ROWS = [("A1", "B01", 5.0, 100), ("A2", "B02", 4.0, 200), ("A3", "B03", 3.0, 300), ("A4", "B04", 2.0, 400)]


def test_ratings_csv_reads_all_columns(tmp_path: Path) -> None:
    table, bad = read_ratings_2014(write_ratings_csv(tmp_path / "r.csv", ROWS))
    assert bad.count == 0
    assert table.column("user").to_pylist() == ["A1", "A2", "A3", "A4"]
    assert table.column("rating").to_pylist() == [5.0, 4.0, 3.0, 2.0]
    assert table.column("timestamp").to_pylist() == [100, 200, 300, 400]


def test_malformed_csv_lines_reported_with_line_numbers(tmp_path: Path, caplog) -> None:
    path = tmp_path / "r.csv"
    path.write_text("\n".join([
        "A1,B01,5.0,100",
        "A9,B09,5.0",               # line 2: three fields
        "A9,B09,5.0,100,extra",     # line 3: five fields
        "A2,B02,4.0,200",
        "A9,B09,five,100",          # line 5: rating not a number
        "A9,B09,5.0,12.5",          # line 6: fractional time
        "A3,B03,3.0,300",
    ]) + "\n")
    table, bad = read_ratings_2014(path)
    assert table.column("user").to_pylist() == ["A1", "A2", "A3"]
    assert table.column("timestamp").to_pylist() == [100, 200, 300]
    assert bad.count == 4
    assert [line for line, _, _ in bad.examples] == [2, 3, 5, 6]
    assert "got 3" in bad.examples[0][1] and "got 5" in bad.examples[1][1]
    assert "rating is not a number" in bad.examples[2][1] and "timestamp" in bad.examples[3][1]
    assert bad.examples[2][2] == "A9,B09,five,100"
    with caplog.at_level(logging.WARNING):
        bad.report("ratings")
    assert "skipped 4 malformed ratings line(s)" in caplog.text and "line 5" in caplog.text


def test_empty_fields_become_missing_and_blank_lines_keep_numbering(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("A1,B01,5.0,100\n\n,B02,4.0,200\nA3,,3.0,300\nA4,B04,,400\nA5,B05,1.0,\nA6,B06,x,1\n")
    table, bad = read_ratings_2014(path)
    assert [line for line, _, _ in bad.examples] == [7]  # the blank line 2 does not shift numbering
    assert table.column("user").to_pylist() == ["A1", None, None, "A3", "A4", "A5"]
    assert table.column("item").to_pylist() == ["B01", None, "B02", None, "B04", "B05"]
    assert table.column("rating").to_pylist()[4] is None
    assert table.column("timestamp").to_pylist()[5] is None


def test_meta_parses_dict_literals_with_odd_characters(tmp_path: Path) -> None:
    records = meta_records(["B01", "B02", "B03"], base_url="http://127.0.0.1:1")
    path = write_meta_2014(tmp_path / "meta.json.gz", records)
    assert gzip.open(path, "rt").readline().startswith("{'asin': 'B01'")  # single quotes, like McAuley's
    found, bad = read_meta(path)
    assert bad.count == 0 and list(found) == ["B01", "B02", "B03"]
    fields = item_fields(found["B01"])
    assert fields["title"] == "Bottle 0 \"Deluxe\" it's Caf\u00e9 & co"      # entity unescaped
    assert fields["brand"] == "Dr. Brown's"
    assert fields["categories"] == ["Baby", "Feeding", "Bottles"]           # first path only
    assert fields["description"] == "Line one line two <b> \u2603 #0"       # whitespace normalised
    assert fields["image_url"] == "http://127.0.0.1:1/img/B01._SX300_.jpg"
    assert mmrec_item_text(fields["title"], fields["brand"], fields["categories"], fields["description"]) == (
        "Bottle 0 \"Deluxe\" it's Caf\u00e9 & co Dr. Brown's Baby Feeding Bottles Line one line two <b> \u2603 #0"
    )
    missing = item_fields(found["B03"])  # no title, no categories
    assert missing["title"] == "" and missing["categories"] == []
    assert item_fields(None) == {"title": "", "brand": "", "categories": [], "description": "", "image_url": None}


def test_bad_meta_lines_reported_skipped_and_never_executed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    raw = [
        "__import__('os').system('touch PWNED')",
        "{'asin': 'B09', 'title': __import__('os').system('touch PWNED2')}",
        "['not', 'a', 'dict']",
        "{'asin': 'B10', 'title': 'truncated",
        "{'title': 'no asin'}",
        "",
    ]
    path = write_meta_2014(tmp_path / "meta.json.gz", meta_records(["B01", "B02"]), raw)
    found, bad = read_meta(path)
    assert list(found) == ["B01", "B02"]
    assert bad.count == 5  # the blank line is not an error
    assert [line for line, _, _ in bad.examples] == [3, 4, 5, 6, 7]
    assert "not a dict literal" in bad.examples[0][1] and "list literal" in bad.examples[2][1]
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()


def test_meta_skips_unwanted_items_and_keeps_first_duplicate(tmp_path: Path) -> None:
    recs = meta_records(["B01", "B02", "B03"])
    dup = dict(recs[0], title="second copy")
    path = write_meta_2014(tmp_path / "meta.json.gz", recs + [dup])
    found, _ = read_meta(path, wanted={"B01", "B03"})
    assert list(found) == ["B01", "B03"]
    assert found["B01"]["title"].startswith("Bottle 0")


def test_parse_meta_line_accepts_json_and_rejects_calls() -> None:
    assert parse_meta_line('{"asin": "X", "title": "a \\"q\\""}')["title"] == 'a "q"'
    assert parse_meta_line("{'asin': 'X', 'price': 1.5}")["price"] == 1.5
    with pytest.raises(ValueError, match="not a dict literal"):
        parse_meta_line("{'asin': 'X', 'f': open('/etc/passwd').read()}")


def _reviews_2018() -> list[dict]:
    return [
        {"overall": 5.0, "verified": True, "reviewerID": "U1", "asin": "I1", "reviewText": "ok",
         "unixReviewTime": 1529193600, "style": {"Gift Amount:": " 50"}},
        {"overall": 4.0, "reviewerID": "U2", "asin": "I2", "unixReviewTime": 1528934400, "vote": "2"},
        {"overall": 3.0, "reviewerID": "U3", "asin": "I1"},  # no time: dropped later as missing
    ]


def test_2018_reviews_fast_path(tmp_path: Path) -> None:
    table, bad = read_reviews_2018(write_json_lines_gz(tmp_path / "r.json.gz", _reviews_2018()))
    assert bad.count == 0
    assert table.column("user").to_pylist() == ["U1", "U2", "U3"]
    assert table.column("timestamp").to_pylist() == [1529193600, 1528934400, None]


def test_2018_reviews_bad_lines_reported(tmp_path: Path) -> None:
    path = write_json_lines_gz(tmp_path / "r.json.gz", _reviews_2018(), raw_lines=[
        '{"overall": 5.0, "reviewerID": "U4", "asin": "I4", "unixReviewTime": 15',  # broken
        '{"overall": "great", "reviewerID": "U5", "asin": "I5", "unixReviewTime": 1}',
        '[1, 2]',
        json.dumps({"overall": 2.0, "reviewerID": "U6", "asin": "I6", "unixReviewTime": 1528934400}),
    ])
    table, bad = read_reviews_2018(path)
    assert table.column("user").to_pylist() == ["U1", "U2", "U3", "U6"]
    assert [line for line, _, _ in bad.examples] == [4, 5, 6]
    assert "overall 'great' is not a number" in bad.examples[1][1]


def test_2018_meta_fields(tmp_path: Path) -> None:
    rec = {"asin": "I1", "title": "Gift &amp; Card", "brand": "Amazon", "category": ["Gift Cards", "Gift Cards"],
           "description": ["First.", "Second &quot;para&quot;."],
           "image": ["https://images-na.ssl-images-amazon.com/images/I/317ZQtCvFzL._SX38_SY50_CR,0,0,38,50_.jpg",
                     "https://x/2.jpg"]}
    found, bad = read_meta(write_json_lines_gz(tmp_path / "m.json.gz", [rec]))
    fields = item_fields(found["I1"])
    assert fields == {"title": "Gift & Card", "brand": "Amazon", "categories": ["Gift Cards", "Gift Cards"],
                      "description": 'First. Second "para".',
                      "image_url": "https://images-na.ssl-images-amazon.com/images/I/317ZQtCvFzL._SX38_SY50_CR,0,0,38,50_.jpg"}


def test_unreadable_ratings_file_is_a_dataset_error(tmp_path: Path) -> None:
    from mllmrec.data.errors import DatasetError

    path = tmp_path / "ratings_Baby.csv"
    path.write_bytes(b"A1,B01,5.0,100\nA\xff\xfe,B02,4.0,200\n")  # not UTF-8
    with pytest.raises(DatasetError, match="ratings_Baby.csv: cannot be read as a ratings CSV"):
        read_ratings_2014(path)

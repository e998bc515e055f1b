"""Item text as MMRec assembles it."""

from __future__ import annotations

import math

import numpy as np

from mllmrec.data import clean_text, history_text, mmrec_item_text


def test_field_order_is_title_brand_first_category_path_description():
    text = mmrec_item_text("Soft Blanket", "Acme", ["Baby", "Nursery", "Bedding"], "Warm and cosy.")
    assert text == "Soft Blanket Acme Baby Nursery Bedding Warm and cosy."


def test_html_entities_are_unescaped():
    text = mmrec_item_text("Tom &amp; Jerry&#39;s &quot;Cup&quot;", "B&amp;B", ["Kids &gt; 3"], "5&nbsp;oz")
    assert text == "Tom & Jerry's \"Cup\" B&B Kids > 3 5 oz"


def test_whitespace_is_normalised():
    text = mmrec_item_text("  A\ttitle\n", "Brand\r\n", ["Cat  one", "\nCat two"], "line one\n\nline  two ")
    assert text == "A title Brand Cat one Cat two line one line two"
    assert "\n" not in text and "  " not in text


def test_missing_fields_are_skipped():
    assert mmrec_item_text("Title", None, None, "Desc") == "Title Desc"
    assert mmrec_item_text(None, "Brand", [], float("nan")) == "Brand"
    assert mmrec_item_text("", "  ", ["", "Cat"], None) == "Cat"
    assert mmrec_item_text(None, None, None, None) == ""


def test_clean_text():
    assert clean_text(None) == "" and clean_text(math.nan) == "" and clean_text(np.nan) == ""
    assert clean_text(42) == "42"
    assert clean_text(" a &amp;\n b ") == "a & b"


def test_history_text_skips_empty_descriptions():
    assert history_text(["first", "", "second"]) == "first\nsecond"
    assert history_text(["a", "b"], separator=" | ") == "a | b"


def test_categories_as_read_back_from_parquet(tmp_path):
    # a list<str> column comes back from parquet as numpy object arrays; `categories or []` raised
    # "truth value of an array is ambiguous"
    import pandas as pd

    pd.DataFrame({"categories": [["Baby", "Nursery"], None]}).to_parquet(tmp_path / "c.parquet")
    back = pd.read_parquet(tmp_path / "c.parquet")["categories"]
    assert isinstance(back[0], np.ndarray)
    assert mmrec_item_text("T", "B", back[0], "D") == "T B Baby Nursery D"
    assert mmrec_item_text("T", "B", back[1], "D") == "T B D"
    assert mmrec_item_text("T", "B", np.array([], dtype=object), "D") == "T B D"
    assert mmrec_item_text("T", "B", ("Baby",), "D") == "T B Baby D"


def test_pandas_missing_markers_are_skipped():
    # nullable string columns hold pd.NA (str(pd.NA) == '<NA>'), and a frame built from meta records
    # where some lack "categories" holds NaN in that column
    import pandas as pd

    assert clean_text(pd.NA) == "" and clean_text(pd.NaT) == ""
    assert mmrec_item_text("Title", pd.NA, ["Baby"], pd.NA) == "Title Baby"
    assert mmrec_item_text("Title", "Brand", float("nan"), "Desc") == "Title Brand Desc"
    assert mmrec_item_text("Title", "Brand", pd.NA, "Desc") == "Title Brand Desc"
    meta = pd.DataFrame([{"title": "A", "categories": ["Baby"]}, {"title": "B", "brand": "X"}])
    meta = meta.astype({"brand": "string"})
    texts = [mmrec_item_text(r.title, r.brand, r.categories, None) for r in meta.itertuples()]
    assert texts == ["A Baby", "B X"]

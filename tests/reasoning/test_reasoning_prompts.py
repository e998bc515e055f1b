"""Prompt 1 / Prompt 2 text, Eq. 2 descriptions, chronological train-only histories, truncation."""

from __future__ import annotations

import numpy as np
import pytest

from mllmrec.data import DatasetLayout, load_processed_dataset
from mllmrec.reasoning.pipeline import user_histories
from mllmrec.reasoning.prompts import (
    fit_history,
    image_prompt,
    multimodal_description,
    profile_prompt,
    render_list,
)
from mllmrec.reasoning.tokens import CharEstimateCounter, TokenizerCounter

# the paper's wording, typed out independently of the module under test
PAPER_PROMPT1 = (
    "Please convert the given image into an accurate and concise textual description relevant to the "
    "Baby, focusing on extracting key attributes that can influence the buying behavior of users, such as "
    "color, material, style, functionality, etc. To generate the textual description using a "
    "one-paragraph natural language overview in no more than 100 words."
)
PAPER_PROMPT2_HEAD = (
    "Please reason about the user preferences based on the following list of item descriptions that he "
    "or she has interacted with. The list is: "
)
PAPER_PROMPT2_TAIL = (
    ". To generate the user preferences using a one-paragraph natural language in no more than 100 words."
)


def test_prompt1_is_the_papers_with_the_dataset_name() -> None:
    assert image_prompt("Baby") == PAPER_PROMPT1
    sports = image_prompt("Sports and Outdoors")
    assert "relevant to the Sports and Outdoors, focusing" in sports
    assert "Clothing" not in sports  # the authors' hard-coded category must not leak in


def test_prompt1_rejects_an_empty_dataset_name() -> None:
    with pytest.raises(ValueError, match="display_name"):
        image_prompt("  ")


def test_prompt2_wraps_the_list_verbatim() -> None:
    prompt = profile_prompt(["red hat", "it's blue"], "python")
    assert prompt == PAPER_PROMPT2_HEAD + "['red hat', \"it's blue\"]" + PAPER_PROMPT2_TAIL
    assert render_list(["a", "b"], "numbered") == "1. a; 2. b"
    assert render_list(["a", "b"], "lines") == "a\nb"
    with pytest.raises(ValueError, match="list style"):
        render_list(["a"], "xml")


def test_multimodal_description_joins_text_and_image_with_the_separator() -> None:
    assert multimodal_description("Hat  Brand", "A red\nhat.", " ") == "Hat Brand A red hat."
    assert multimodal_description("Hat", "Red.", "") == "HatRed."  # the authors' (no separator)
    assert multimodal_description("Hat", "Red.", " | ") == "Hat | Red."
    assert multimodal_description("Hat", "", " | ") == "Hat"  # no image: text alone, no separator
    assert multimodal_description("", "Red.", " | ") == "Red."


def test_histories_are_chronological_and_train_only(tiny_root) -> None:
    data = load_processed_dataset(tiny_root)
    train = user_histories(data, DatasetLayout(tiny_root), "train")
    assert [h.tolist() for h in train] == [[2, 0, 1], [3, 4], [1, 4, 0]]
    # every valid/test pair is absent from the training histories
    for user, history in enumerate(train):
        held_out = set(data.valid[user].indices) | set(data.test[user].indices)
        assert held_out and not held_out & set(history.tolist())


def test_history_all_is_the_leaky_chronological_variant(tiny_root) -> None:
    data = load_processed_dataset(tiny_root)
    everything = user_histories(data, DatasetLayout(tiny_root), "all")
    assert [h.tolist() for h in everything] == [[4, 2, 3, 0, 1], [0, 3, 4, 1], [2, 3, 1, 4, 0]]


class WordTokenizer:
    """A stand-in tokenizer: one token per whitespace-separated word."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [hash(w) % 1000 for w in text.split()]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        raise AssertionError("TokenizerCounter.truncate must decode only prefixes it encoded")


def test_fit_history_keeps_everything_that_fits() -> None:
    counter = CharEstimateCounter(1.0)
    fit = fit_history(["a", "b", "c"], counter, max_prompt_tokens=10_000, item_max_tokens=50)
    assert fit.descriptions == ("a", "b", "c") and not fit.truncated


def test_fit_history_drops_the_oldest_first_and_keeps_order() -> None:
    counter = CharEstimateCounter(1.0)  # 1 token per character: easy arithmetic
    template = counter.count(profile_prompt([], "python"))
    # each element "'xxxx', " style costs len(repr) + 2 = 8 tokens for 4-letter descriptions
    descriptions = ["old1", "old2", "mid3", "new4"]
    fit = fit_history(descriptions, counter, max_prompt_tokens=template + 8 * 2, item_max_tokens=50)
    assert fit.descriptions == ("mid3", "new4")
    assert (fit.n_history, fit.n_dropped, fit.n_capped) == (4, 2, 0)
    # the prompt really fits (the per-element count overestimates by at most one separator)
    assert counter.count(profile_prompt(fit.descriptions)) <= template + 16


def test_fit_history_stops_at_the_first_item_that_does_not_fit() -> None:
    counter = CharEstimateCounter(1.0)
    template = counter.count(profile_prompt([], "python"))
    # the second newest is long: the older short ones behind it are not picked over it
    fit = fit_history(["a", "b", "x" * 30, "new"], counter, template + 12, item_max_tokens=100)
    assert fit.descriptions == ("new",)
    assert fit.n_dropped == 3


def test_fit_history_caps_each_item_and_counts_it() -> None:
    counter = CharEstimateCounter(1.0)
    long = "word " * 40
    fit = fit_history(["short", long], counter, 10_000, item_max_tokens=20)
    assert fit.descriptions[0] == "short"
    assert len(fit.descriptions[1]) <= 20 and fit.descriptions[1].startswith("word")
    assert fit.n_capped == 1 and fit.n_dropped == 0 and fit.truncated


def test_fit_history_shrinks_a_lone_item_that_overflows() -> None:
    counter = CharEstimateCounter(1.0)
    template = counter.count(profile_prompt([], "python"))
    fit = fit_history(["y" * 100], counter, template + 30, item_max_tokens=500)
    assert len(fit.descriptions) == 1 and 0 < len(fit.descriptions[0]) <= 30
    with pytest.raises(ValueError, match="no room"):
        fit_history(["a"], counter, template, item_max_tokens=10)


def test_fit_history_is_deterministic_and_cache_neutral() -> None:
    counter = CharEstimateCounter(3.0)
    rng = np.random.default_rng(0)
    descriptions = [" ".join("w" * int(n) for n in rng.integers(1, 9, size=int(k)))
                    for k in rng.integers(5, 80, size=30)]
    cache: dict = {}
    first = fit_history(descriptions, counter, 400, 60, "numbered", cache)
    again = fit_history(descriptions, counter, 400, 60, "numbered", cache)
    fresh = fit_history(descriptions, counter, 400, 60, "numbered")
    assert first == again == fresh and first.n_dropped > 0


def test_tokenizer_counter_counts_and_cuts_in_tokens() -> None:
    class Tok(WordTokenizer):
        def decode(self, ids, skip_special_tokens: bool = True) -> str:
            return " ".join(["w"] * len(ids))

    counter = TokenizerCounter(Tok())
    assert counter.count("a b c d") == 4
    assert counter.truncate("a b c d", 2) == "w w"
    assert counter.truncate("a b", 5) == "a b"  # fits: returned unchanged
    assert counter.truncate("a b", 0) == ""

"""Prompt 1 and Prompt 2 of the paper (verbatim), the multimodal item description (Eq. 2) and the
fitting of a user's behaviour list into the model's context (Eq. 3-4).

The prompt wording below is the published one; only ``{dataset name}`` is filled in (the
authors' script hard-coded "Clothing, Shoes & Jewelry" for every dataset) and ``{behavioral
description}`` receives the rendered list. Change :data:`TEMPLATE_VERSION` whenever anything that
shapes a prompt's text changes: it is part of every generation's cache key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mllmrec.data.text import clean_text
from mllmrec.reasoning.backends.base import TokenCounter

__all__ = [
    "TEMPLATE_VERSION",
    "PROMPT1",
    "PROMPT2",
    "LIST_STYLES",
    "image_prompt",
    "profile_prompt",
    "render_list",
    "multimodal_description",
    "FittedHistory",
    "fit_history",
]

TEMPLATE_VERSION = "mllmrec-prompts-v1"

#: Prompt 1 (Eq. 1). The image itself is the chat message's image part, placed before this text.
PROMPT1 = (
    "Please convert the given image into an accurate and concise textual description relevant to the "
    "{dataset_name}, focusing on extracting key attributes that can influence the buying behavior of "
    "users, such as color, material, style, functionality, etc. To generate the textual description "
    "using a one-paragraph natural language overview in no more than 100 words."
)

#: Prompt 2 (Eq. 4).
PROMPT2 = (
    "Please reason about the user preferences based on the following list of item descriptions that he "
    "or she has interacted with. The list is: {behavioral_description}. To generate the user preferences "
    "using a one-paragraph natural language in no more than 100 words."
)

#: how the behaviour list is written into Prompt 2:
#: ``python`` = Python's ``str(list)`` (what the authors' script did: ``['a', 'b']``),
#: ``numbered`` = ``1. a; 2. b``, ``lines`` = one description per line.
LIST_STYLES = ("python", "numbered", "lines")


def image_prompt(dataset_name: str) -> str:
    """Prompt 1 with the dataset's category name (e.g. "Baby", "Sports and Outdoors")."""
    name = clean_text(dataset_name)
    if not name:
        raise ValueError("the dataset's display_name is empty: Prompt 1 needs the category name")
    return PROMPT1.format(dataset_name=name)


def _list_piece(description: str, index: int, style: str) -> str:
    """One element of the rendered list, with the separator that precedes it (none for the first)."""
    if style == "python":
        return (", " if index else "") + repr(description)
    if style == "numbered":
        return ("; " if index else "") + f"{index + 1}. {description}"
    if style == "lines":
        return ("\n" if index else "") + description
    raise ValueError(f"unknown list style {style!r}; choose one of {LIST_STYLES}")


def render_list(descriptions: Sequence[str], style: str = "python") -> str:
    """The behaviour list as it appears in Prompt 2."""
    body = "".join(_list_piece(d, i, style) for i, d in enumerate(descriptions))
    return f"[{body}]" if style == "python" else body


def profile_prompt(descriptions: Sequence[str], style: str = "python") -> str:
    """Prompt 2 with the chronological multimodal descriptions of one user's items."""
    return PROMPT2.format(behavioral_description=render_list(descriptions, style))


def multimodal_description(text: str, image_description: str, separator: str = " ") -> str:
    """Eq. 2: item text ⊕ image description. Either part may be empty (then no separator)."""
    text, image_description = clean_text(text), clean_text(image_description)
    if text and image_description:
        return f"{text}{separator}{image_description}"
    return text or image_description


@dataclass(frozen=True)
class FittedHistory:
    """A behaviour list cut to the context budget.

    Attributes:
        descriptions: the kept descriptions, chronological (oldest kept first).
        n_history: how many items the user had.
        n_dropped: how many of the oldest were left out.
        n_capped: how many kept descriptions were shortened by the per-item cap.
    """

    descriptions: tuple[str, ...]
    n_history: int
    n_dropped: int
    n_capped: int

    @property
    def truncated(self) -> bool:
        return self.n_dropped > 0 or self.n_capped > 0


def fit_history(
    descriptions: Sequence[str],
    counter: TokenCounter,
    max_prompt_tokens: int,
    item_max_tokens: int,
    style: str = "python",
    cache: dict[str, tuple[str, bool, int]] | None = None,
) -> FittedHistory:
    """Cut a chronological behaviour list so that Prompt 2 fits ``max_prompt_tokens``.

    Rules (deterministic): every description is first capped to ``item_max_tokens`` tokens (its
    beginning is kept: title, brand and categories come first); then items are kept from the most
    recent backwards while the prompt fits, and the oldest are dropped from the first one that does
    not fit (the kept items stay a contiguous, chronological suffix). If not even the most recent
    item fits, it alone is cut further to the space left. The prompt's token count is the template's
    plus each rendered list element's, counted separately; the caller keeps a margin for the chat
    template's special tokens and for merges across element boundaries.

    ``cache`` (description -> (capped text, was capped, element tokens)) lets the caller reuse item
    counts across users, since most items appear in many histories; it is only valid for one
    (counter, item_max_tokens, style).
    """
    n = len(descriptions)
    template_tokens = counter.count(profile_prompt([], style))
    budget = max_prompt_tokens - template_tokens
    if budget <= 0:
        raise ValueError(
            f"max_prompt_tokens={max_prompt_tokens} leaves no room for any item in Prompt 2 "
            f"(the template alone takes {template_tokens} tokens)"
        )
    elements = [_capped_element(d, counter, item_max_tokens, style, cache) for d in descriptions]

    kept: list[int] = []
    total = 0
    for i in range(n - 1, -1, -1):
        if total + elements[i][2] > budget:
            break
        kept.append(i)
        total += elements[i][2]
    kept.reverse()
    texts = [elements[i][0] for i in kept]
    n_capped = sum(elements[i][1] for i in kept)
    if not kept and n:
        # the newest item alone overflows: shrink it to what is left (element overhead excluded)
        overhead = counter.count(_list_piece("", 1, style))
        texts = [counter.truncate(elements[-1][0], max(1, budget - overhead))]
        kept, n_capped = [n - 1], 1
    return FittedHistory(tuple(texts), n, n - len(kept), n_capped)


def _capped_element(
    description: str,
    counter: TokenCounter,
    item_max_tokens: int,
    style: str,
    cache: dict[str, tuple[str, bool, int]] | None,
) -> tuple[str, bool, int]:
    """(description capped to ``item_max_tokens``, whether it was cut, tokens of its list element).

    The element is counted with a separator in front: only the oldest kept element has none, so
    this overestimates by at most one separator.
    """
    hit = cache.get(description) if cache is not None else None
    if hit is None:
        cut = counter.truncate(description, item_max_tokens)
        hit = (cut, cut != description, counter.count(_list_piece(cut, 1, style)))
        if cache is not None:
            cache[description] = hit
    return hit

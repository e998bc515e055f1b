"""The one small interface every generation backend implements, and the values it passes around.

A :class:`Request` is a chat (messages with text and at most one image each) plus sampling
parameters; a backend turns a batch of requests into one :class:`Generation` per request, in input
order. A :class:`StreamingBackend` (vLLM's engine) also takes requests one batch at a time without
waiting and hands back each generation as soon as it finishes, so that the caller can keep the
engine's batch full across the boundaries of the shards it publishes. Errors that concern a single request (a server that keeps answering 500, an image the model
cannot take) come back as a ``Generation`` with ``error`` set, so one bad request never sinks a
chunk; errors that make the backend unusable (engine crash, server gone) raise.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from mllmrec.errors import MllmrecError

if TYPE_CHECKING:  # PIL is imported lazily: only the image step needs it
    from PIL import Image

__all__ = [
    "BackendError",
    "BackendNotInstalled",
    "BackendUnavailable",
    "ImagePart",
    "Message",
    "Sampling",
    "Request",
    "Generation",
    "TokenCounter",
    "Backend",
    "StreamingBackend",
]


class BackendError(MllmrecError, RuntimeError):
    """A backend cannot run (bad settings, engine failure). The message says what to do."""


class BackendNotInstalled(BackendError):
    """The backend's optional package is missing."""


class BackendUnavailable(BackendError):
    """The backend's server cannot be reached."""


@dataclass(frozen=True)
class ImagePart:
    """An image as its original file bytes (sent as-is to servers, decoded for local engines)."""

    data: bytes = field(repr=False)
    mime: str
    sha256: str

    def to_pil(self) -> Image.Image:
        """Decoded RGB image (vision processors expect 3 channels; PNGs may be RGBA or P)."""
        from PIL import Image

        with Image.open(io.BytesIO(self.data)) as img:
            return img.convert("RGB")


@dataclass(frozen=True)
class Message:
    """One chat turn. ``image`` goes before ``text`` (Prompt 1 reads "{image}: Please convert...")."""

    role: str
    text: str
    image: ImagePart | None = None


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters. ``temperature == 0`` means greedy decoding."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def as_dict(self) -> dict[str, float | int]:
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed}


@dataclass(frozen=True)
class Request:
    messages: tuple[Message, ...]
    sampling: Sampling

    @property
    def images(self) -> list[ImagePart]:
        return [m.image for m in self.messages if m.image is not None]


@dataclass(frozen=True)
class Generation:
    """One output. ``finish_reason`` is ``stop`` | ``length`` | ``error`` (then ``error`` says why)."""

    text: str
    n_tokens: int
    finish_reason: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@runtime_checkable
class TokenCounter(Protocol):
    """Counts and cuts text in model tokens (or an estimate of them)."""

    exact: bool

    def count(self, text: str) -> int: ...

    def truncate(self, text: str, max_tokens: int) -> str: ...


@runtime_checkable
class Backend(Protocol):
    """What the pipeline needs from a generation engine."""

    name: str
    #: stable identity of the weights that generate (model id + revision); part of every cache key
    identity: str
    supports_images: bool

    def generate(self, requests: Sequence[Request]) -> list[Generation]: ...

    def token_counter(self) -> TokenCounter | None:
        """The model's tokenizer as a counter, or None when the backend has no tokenizer."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class StreamingBackend(Backend, Protocol):
    """A backend whose engine keeps requests in flight: ``submit`` queues, ``collect`` hands back
    what has finished (in whatever order it finished), so the caller can top the queue up while
    results arrive instead of waiting for a whole batch to drain."""

    #: requests to keep submitted so that the engine never waits for the caller (about twice the
    #: engine's batch: freed slots are refilled from requests already queued in the engine)
    max_in_flight: int

    def submit(self, requests: Sequence[Request]) -> list[str]:
        """Queue ``requests`` without waiting; returns one ticket per request, in input order."""
        ...

    def collect(self) -> list[tuple[str, Generation]]:
        """Wait until at least one submitted request has finished; return every finished one as
        ``(ticket, generation)``. Returns ``[]`` when nothing is in flight."""
        ...

    def cancel(self) -> None:
        """Drop every request still in flight (the caller gave up on them, e.g. after an error)."""
        ...

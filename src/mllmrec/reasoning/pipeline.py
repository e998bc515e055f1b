"""The reasoning run: image descriptions (Eq. 1), multimodal item descriptions (Eq. 2), user
preference profiles (Eq. 3-4), cached, resumable and shardable.

Order of work, with every check that can fail done before a model is loaded:

1. settings, dataset (the demo is generated on first use), items, users' histories, image scan;
2. the backend; image jobs of this shard that the cache lacks, published ``reason.chunk_size`` at a
   time as shard files of the generation store (a streaming backend, vLLM, keeps its engine full
   across those boundaries; the others are called once per chunk);
3. wait until every item's image job has a record (other shards write theirs), then build the
   multimodal descriptions and the profile prompts (fitted to the context);
4. profile jobs of this shard; wait for every user's record;
5. merge: the three tables + manifest.json, written only when every item and user has an output
   or a recorded failure. Whichever shard completes the set writes them.

This module is the runner (plan, generate, retry empty outputs, wait for other shards); the tables,
manifest and summary are the bookkeeping of :mod:`.bookkeeping`, handed one :class:`RunState`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from mllmrec.cache import file_lock, stable_hash
from mllmrec.data import DatasetError, DatasetLayout, read_items
from mllmrec.data.interactions import InteractionData
from mllmrec.data.open import open_dataset
from mllmrec.data.text import clean_text
from mllmrec.reasoning.backends import Backend, Generation, Message, Request, StreamingBackend, make_backend
from mllmrec.reasoning.backends.base import TokenCounter
from mllmrec.reasoning.bookkeeping import ReasonResult, RunState, merge_outputs
from mllmrec.reasoning.images import ImageScan, ItemImage, read_image, scan_images
from mllmrec.reasoning.outputs import FAILED, OK, OUTPUT_FORMAT_VERSION, PROFILE_STATUSES, outputs_dir
from mllmrec.reasoning.prompts import (
    TEMPLATE_VERSION,
    FittedHistory,
    fit_history,
    image_prompt,
    multimodal_description,
    profile_prompt,
)
from mllmrec.reasoning.settings import ReasonSettings
from mllmrec.reasoning.store import GenerationStore, Record
from mllmrec.reasoning.tokens import CharEstimateCounter

log = logging.getLogger(__name__)

__all__ = [
    "ShardsPending",
    "ReasonResult",
    "RunState",
    "Job",
    "generation_key",
    "user_histories",
    "run_reasoning",
    "Reasoner",
    "PROFILE_STATUSES",
    "OUTPUT_FORMAT_VERSION",
]


class ShardsPending(RuntimeError):
    """Other shards' work is still missing after ``reason.shard_wait_s``; this shard's is saved."""


@dataclass(frozen=True)
class Job:
    """One generation to make: its cache key and how to build its request (lazily: image bytes)."""

    key: str
    kind: str
    ref: int
    build: Callable[[], Request] = field(repr=False, compare=False)


def generation_key(identity: str, messages: Sequence[tuple[str, str, str | None]],
                   sampling: Mapping[str, Any]) -> str:
    """Cache key of one generation: model (id + revision), the backend-independent prompt (roles,
    texts, image content hashes), sampling parameters incl. seed, and the prompt template version."""
    return stable_hash("generation", identity, [list(m) for m in messages], dict(sampling),
                       TEMPLATE_VERSION, length=32)


def user_histories(data: InteractionData, layout: DatasetLayout, mode: str) -> list[np.ndarray]:
    """Each user's items in chronological order: training items (``train``) or, for the authors'
    leaky variant (``all``), every interaction (timestamp order, ties in file order, repeats once)."""
    if mode == "train":
        return [data.history(u) for u in range(data.n_users)]
    frame = pd.read_parquet(layout.interactions, columns=["user_id", "item_id", "timestamp"])
    frame["row"] = np.arange(len(frame))
    frame = frame.sort_values(["user_id", "timestamp", "row"], kind="stable")
    frame = frame.drop_duplicates(["user_id", "item_id"], keep="first")
    grouped = frame.groupby("user_id", sort=True)["item_id"]
    out = [np.zeros(0, dtype=np.int64) for _ in range(data.n_users)]
    for user, items in grouped:
        out[int(user)] = items.to_numpy(np.int64)
    return out


def _empty_failure(generation: Generation) -> Generation:
    """An output still empty after its retries: a recorded failure, never kept silently."""
    return Generation("", generation.n_tokens, "error",
                      error=f"empty output (finish_reason={generation.finish_reason})")


def _chunks(seq: Sequence[Job], size: int) -> Iterator[Sequence[Job]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]


class Reasoner:
    """One run over one dataset with one MLLM (see the module docstring for the order of work)."""

    def __init__(self, settings: ReasonSettings, backend: Backend | None = None) -> None:
        self.s = settings
        self._backend = backend
        self._own_backend = backend is None
        self.stats: Counter[str] = Counter()  # counts of this run (generations, tokens, retries)
        self.seconds: Counter[str] = Counter()  # generation time of this run, per kind
        self.layout = DatasetLayout(settings.dataset.root)
        self.out_dir = outputs_dir(self.layout, settings.output_name, settings.history)
        # one cache per model, shared by both histories: image descriptions do not depend on it
        self.store = GenerationStore(outputs_dir(self.layout, settings.output_name, "train") / "generations")

    # -- inputs ---------------------------------------------------------------------------------
    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = make_backend(self.s)
        return self._backend

    def _counter(self) -> TokenCounter:
        counter = self.backend.token_counter()
        if counter is None:
            counter = CharEstimateCounter(self.s.chars_per_token)
            log.info("no tokenizer in the %s backend: estimating %.1f characters per token",
                     self.backend.name, self.s.chars_per_token)
        return counter

    def _in_shard(self, ref: int) -> bool:
        return ref % self.s.num_shards == self.s.shard

    # -- generation -----------------------------------------------------------------------------
    def _run_jobs(self, jobs: Sequence[Job], kind: str) -> None:
        """Generate this shard's jobs that the store lacks, one published shard file per chunk."""
        self.store.refresh()
        mine = [j for j in jobs if self._in_shard(j.ref)]
        done = self.store.done_many([j.key for j in mine], self.s.retry_failed).tolist()
        cached = [j for j, d in zip(mine, done) if d]
        # equal prompts (identical images, identical histories) share a key: generate it once
        unique: dict[str, Job] = {}
        for job, d in zip(mine, done):
            if not d:
                unique.setdefault(job.key, job)
        pending = list(unique.values())
        log.info("%s: %d jobs in shard %d/%d: %d cached, %d to generate (%d share a prompt with another)",
                 kind, len(mine), self.s.shard, self.s.num_shards, len(cached), len(pending),
                 len(mine) - len(cached) - len(pending))
        if not pending:
            return
        from tqdm.auto import tqdm

        t0, tokens = time.perf_counter(), 0
        bar = tqdm(total=len(pending), desc=f"{kind} ({self.backend.name})", unit="gen",
                   disable=not self.s.progress, dynamic_ncols=True)

        def publish(records: Sequence[Record]) -> None:
            nonlocal tokens
            self.store.append(records)
            tokens += sum(r.n_tokens for r in records)
            elapsed = max(time.perf_counter() - t0, 1e-9)
            bar.update(len(records))
            bar.set_postfix_str(f"{bar.n / elapsed:.2f} gen/s, {tokens / elapsed:.1f} tok/s")

        try:
            backend = self.backend
            if isinstance(backend, StreamingBackend):
                self._stream_jobs(backend, pending, publish)
            else:
                for chunk in _chunks(pending, self.s.chunk_size):
                    publish(self._generate_chunk(chunk))
        finally:
            bar.close()
        elapsed = time.perf_counter() - t0
        self.stats[f"{kind}_generated"] += len(pending)
        self.stats[f"{kind}_tokens"] += tokens
        self.seconds[kind] += elapsed

    def _stream_jobs(self, backend: StreamingBackend, pending: Sequence[Job],
                     publish: Callable[[Sequence[Record]], None]) -> None:
        """Keep ``backend.max_in_flight`` requests in the engine across shard boundaries and publish
        one shard as soon as ``reason.chunk_size`` generations have finished (in the order they
        finished; each key once). A kill loses the finished generations not yet published (fewer
        than ``chunk_size``) and the requests in flight. Empty outputs go back into the queue with
        seed + attempt (``reason.empty_retries``), as in the per-chunk path.
        """
        # (job, request, attempt): request None = not built yet (image bytes are read at submit)
        queue: deque[tuple[Job, Request | None, int]] = deque((job, None, 0) for job in pending)
        in_flight: dict[str, tuple[Job, Request, int]] = {}
        finished: list[Record] = []
        try:
            while queue or in_flight:
                batch: list[tuple[Job, Request, int]] = []
                while queue and len(in_flight) + len(batch) < backend.max_in_flight:
                    job, request, attempt = queue.popleft()
                    if request is None:
                        try:
                            request = job.build()
                        except (OSError, DatasetError, ValueError) as exc:  # e.g. an image replaced mid-run
                            finished.append(self._record(job, Generation("", 0, "error", error=str(exc)), time.time()))
                            continue
                    batch.append((job, request, attempt))
                if batch:
                    in_flight.update(zip(backend.submit([request for _, request, _ in batch]), batch))
                for ticket, out in backend.collect():
                    job, request, attempt = in_flight.pop(ticket)
                    if out.ok and not clean_text(out.text):
                        if attempt < self.s.empty_retries:
                            self.stats["empty_retried"] += 1
                            # first in line: the retry is submitted with the next top-up
                            queue.appendleft((job, self._reseeded(request, 1), attempt + 1))  # seed + attempt
                            continue
                        out = _empty_failure(out)
                    finished.append(self._record(job, out, time.time()))
                while len(finished) >= self.s.chunk_size:
                    publish(finished[: self.s.chunk_size])
                    del finished[: self.s.chunk_size]
            if finished:
                publish(finished)
        except BaseException:
            if in_flight:
                backend.cancel()  # a backend kept for another run must not deliver these later
            raise

    def _generate_chunk(self, chunk: Sequence[Job]) -> list[Record]:
        now = time.time()
        records: dict[int, Record] = {}
        requests: list[tuple[int, Request]] = []
        for i, job in enumerate(chunk):
            try:
                requests.append((i, job.build()))
            except (OSError, DatasetError, ValueError) as exc:  # e.g. an image replaced mid-run
                records[i] = self._record(job, Generation("", 0, "error", error=str(exc)), now)
        if requests:
            outputs = self.backend.generate([r for _, r in requests])
            outputs = self._retry_empty([r for _, r in requests], outputs)
            for (i, _), out in zip(requests, outputs):
                records[i] = self._record(chunk[i], out, now)
        return [records[i] for i in range(len(chunk))]

    def _retry_empty(self, requests: list[Request], outputs: list[Generation]) -> list[Generation]:
        """Ask again (seed + attempt) for outputs that came back empty; still empty -> failure."""
        outputs = list(outputs)
        for attempt in range(1, self.s.empty_retries + 1):
            empty = [i for i, g in enumerate(outputs) if g.ok and not clean_text(g.text)]
            if not empty:
                break
            self.stats["empty_retried"] += len(empty)
            again = [self._reseeded(requests[i], attempt) for i in empty]
            for i, g in zip(empty, self.backend.generate(again)):
                outputs[i] = g
        return [_empty_failure(g) if g.ok and not clean_text(g.text) else g for g in outputs]

    @staticmethod
    def _reseeded(request: Request, attempt: int) -> Request:
        # greedy decoding repeats itself; a new seed only matters when sampling, and for servers
        # that sometimes drop an answer a plain second try is what helps
        return replace(request, sampling=replace(request.sampling, seed=request.sampling.seed + attempt))

    def _record(self, job: Job, out: Generation, now: float) -> Record:
        return Record(
            key=job.key, kind=job.kind, ref=int(job.ref), status=OK if out.ok else FAILED,
            text=out.text if out.ok else "", n_tokens=int(out.n_tokens), finish_reason=out.finish_reason,
            error=out.error, backend=self.backend.name, created=now,
        )

    def _wait_for(self, keys: Sequence[str], kind: str) -> None:
        """Block until every key has a record, or give up after ``reason.shard_wait_s``."""
        deadline = time.monotonic() + self.s.shard_wait_s
        while True:
            self.store.refresh()
            missing = self.store.missing(keys)
            if not missing:
                return
            if time.monotonic() >= deadline:
                raise ShardsPending(
                    f"{len(missing)} {kind} generations of other shards are not in {self.store.shards} "
                    f"yet (shard {self.s.shard}/{self.s.num_shards} saved its own). Rerun this shard "
                    "when the others have finished, or set reason.shard_wait_s to wait for them."
                )
            time.sleep(max(0.1, self.s.poll_s))

    # -- plans ----------------------------------------------------------------------------------
    def _image_jobs(self, scan: ImageScan) -> dict[int, Job]:
        prompt = image_prompt(self.s.dataset.display_name)
        sampling = self.s.mllm.sampling
        jobs = {}
        for image in scan.pending:
            key = generation_key(self.backend.identity, [("user", prompt, image.sha256)], sampling.as_dict())

            def build(image: ItemImage = image) -> Request:
                return Request((Message("user", prompt, read_image(image)),), sampling)

            jobs[image.item_id] = Job(key, "image", image.item_id, build)
        return jobs

    def _profile_jobs(self, histories: Sequence[np.ndarray], descriptions: Sequence[str],
                      users: Sequence[int]) -> tuple[dict[int, Job], dict[int, FittedHistory]]:
        counter = self._counter()
        self.stats["token_counting_exact"] = int(getattr(counter, "exact", False))
        cache: dict[str, tuple[str, bool, int]] = {}
        sampling = self.s.mllm.sampling
        jobs, fitted = {}, {}
        for user in users:
            history = histories[user]
            if len(history) == 0:
                continue
            fit = fit_history([descriptions[i] for i in history], counter, self.s.max_prompt_tokens,
                              self.s.item_max_tokens, self.s.list_style, cache)
            prompt = profile_prompt(fit.descriptions, self.s.list_style)
            key = generation_key(self.backend.identity, [("user", prompt, None)], sampling.as_dict())

            def build(prompt: str = prompt) -> Request:
                return Request((Message("user", prompt),), sampling)

            jobs[user] = Job(key, "profile", user, build)
            fitted[user] = fit
        return jobs, fitted

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> ReasonResult:
        s = self.s
        data = open_dataset(s.dataset.config)  # generates the demo on first use
        items = read_items(s.dataset.root, data.n_items)
        scan = scan_images(self.layout.root, items, s.mllm.vision, s.limit_items, s.image_workers,
                           allow_outside=s.allow_outside_images)
        if scan.skipped_reason:
            log.warning("image step skipped: %s", scan.skipped_reason)
        histories = user_histories(data, self.layout, s.history)
        n_users = data.n_users if s.limit_users is None else min(s.limit_users, data.n_users)
        users = list(range(n_users))
        log.info("%s | %s via %s | %d items (%s) | %d of %d users | history=%s | shard %d/%d",
                 data.summary(), s.mllm.identity, s.backend, len(items), scan.counts(), n_users,
                 data.n_users, s.history, s.shard, s.num_shards)

        try:
            image_jobs, image_text, image_status = self.describe_images(scan)
            descriptions = [
                multimodal_description(t, image_text[i], s.separator)
                for i, t in enumerate(items["text"].fillna("").astype(str))
            ]
            profile_jobs, fitted = self._profile_jobs(histories, descriptions, users)
            self._run_jobs(list(profile_jobs.values()), "profile")
            self._wait_for([j.key for j in profile_jobs.values()], "profile")
            state = RunState(
                settings=s, out_dir=self.out_dir, store_root=self.store.root,
                dataset_manifest=self.layout.manifest, backend_name=self.backend.name,
                backend_identity=self.backend.identity, n_users=data.n_users, items=items, scan=scan,
                image_text=image_text, image_status=image_status, descriptions=descriptions,
                histories=histories, users=users, image_keys={i: j.key for i, j in image_jobs.items()},
                profile_keys={u: j.key for u, j in profile_jobs.items()}, fitted=fitted,
                stats=self.stats, seconds=self.seconds,
            )
            with file_lock(self.out_dir / ".tables"):
                return merge_outputs(state)
        finally:
            self.close()

    def close(self) -> None:
        """Release the backend this reasoner built (one passed in is the caller's to close)."""
        if self._own_backend and self._backend is not None:
            self._backend.close()
            self._backend = None

    def describe_images(self, scan: ImageScan) -> tuple[dict[int, Job], list[str], list[str]]:
        """Prompt 1 on the scanned images (Eq. 1): this shard's uncached jobs generated, then every
        item's record awaited. Returns (the jobs by item id, image description [I], status [I])."""
        image_jobs = self._image_jobs(scan)
        self._run_jobs(list(image_jobs.values()), "image")
        self._wait_for([j.key for j in image_jobs.values()], "image")
        return (image_jobs, *self._image_outputs(scan, image_jobs))

    def _image_outputs(self, scan: ImageScan, jobs: Mapping[int, Job]) -> tuple[list[str], list[str]]:
        texts, statuses = [], []
        records = self.store.get_many(job.key for job in jobs.values())
        for image in scan.images:
            job = jobs.get(image.item_id)
            if job is None:
                texts.append("")
                statuses.append(image.status)
                continue
            record = records.get(job.key)
            ok = record is not None and record.ok
            texts.append(clean_text(record.text) if ok else "")
            statuses.append(OK if ok else FAILED)
        return texts, statuses


def run_reasoning(cfg: DictConfig | Mapping[str, Any], backend: Backend | None = None) -> ReasonResult:
    """Run the reasoning stage for the composed config (``reason``, ``mllm``, ``dataset``).

    ``backend`` replaces the one ``reason.backend`` would build (tests, benchmarks, notebooks that
    keep one model loaded across runs); it is not closed by the run.
    """
    return Reasoner(ReasonSettings.from_config(cfg), backend).run()

"""Helpers for the prepare tests: a local HTTP server on 127.0.0.1 and writers of raw Amazon files.

Every file is written by the tests themselves in the real raw formats (2014 ratings CSV without a
header, 2014 metadata as Python dict literals, 2018 JSON lines); no real data is shipped.
"""

from __future__ import annotations

import gzip
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest


@dataclass
class Route:
    """What the server answers for one path."""

    body: bytes = b""
    status: int = 200
    cut_after: int | None = None     # the next `cut_times` answers stop after this many body bytes
    cut_times: int = 0
    fail_status: int = 503           # the next `fail_times` answers are this status
    fail_times: int = 0
    honour_range: bool = True        # False: ignore Range and send the whole file (200)
    delay_s: float = 0.0             # hold each answer this long (to observe concurrency)


@dataclass
class Server:
    base: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def hits(self, path: str) -> int:
        return sum(p == "/" + path.lstrip("/") for p, _ in self.requests)


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            import time

            path = self.path.split("?")[0]
            with server.lock:
                server.requests.append((path, self.headers.get("Range")))
                server.active += 1
                server.max_active = max(server.max_active, server.active)
                route = server.routes.get(path)
                fail = cut = None
                if route is not None and route.fail_times > 0:
                    route.fail_times -= 1
                    fail = route.fail_status
                elif route is not None and route.cut_times > 0:
                    route.cut_times -= 1
                    cut = route.cut_after
            try:
                if route is not None and route.delay_s:
                    time.sleep(route.delay_s)
                if route is None or fail is not None or route.status != 200:
                    status = 404 if route is None else (fail or route.status)
                    body = f"status {status}".encode()
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                body = route.body
                start = 0
                rng = self.headers.get("Range")
                if rng and route.honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if cut is not None:
                    self.wfile.write(payload[:cut])
                    self.wfile.flush()
                    self.close_connection = True  # the client sees a body shorter than announced
                    return
                self.wfile.write(payload)
            finally:
                with server.lock:
                    server.active -= 1

    return Handler


@pytest.fixture
def http_server() -> Iterator[Server]:
    """A threaded HTTP server on 127.0.0.1 (random port) serving ``server.routes``."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server = Server(base=f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.RequestHandlerClass = _handler(server)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---------------------------------------------------------------- raw-format data

def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (8, 6), color=(200, 30, 40)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format=fmt)
    return out.getvalue()


def random_ratings(seed: int, n_users: int = 70, n_items: int = 45) -> list[tuple[str, str, float, int]]:
    """A few hundred (user, asin, rating, time) rows with skewed activity and popularity, so the
    5-core removes users and items over several rounds; includes exact duplicate rows and
    repeated (user, item) pairs with another time."""
    rng = np.random.default_rng(seed)
    users = [f"A{rng.integers(10**12, 10**13)}" for _ in range(n_users)]
    items = [f"B{rng.integers(10**8, 10**9)}" for _ in range(n_items)]
    popularity = rng.pareto(1.0, n_items) + 0.2
    popularity /= popularity.sum()
    rows = []
    for u in users:
        n = int(rng.integers(2, 14))
        for i in rng.choice(n_items, size=min(n, n_items), replace=False, p=popularity):
            rows.append((u, items[i], float(rng.integers(1, 6)), int(1_300_000_000 + 86400 * rng.integers(0, 900))))
    for r in rng.choice(len(rows), size=6, replace=False):
        rows.append(rows[r])  # exact duplicate: dropped
    u, i, rating, t = rows[int(rng.integers(len(rows)))]
    rows.append((u, i, rating, t + 86400))  # same pair, other day: kept (MMRec dedups on time too)
    order = rng.permutation(len(rows))
    return [rows[j] for j in order]


def write_ratings_csv(path: Path, rows, extra_lines: list[str] = ()) -> Path:
    """2014 ratings CSV: no header, ``user,asin,rating,time``; ``extra_lines`` are appended as they are."""
    lines = [f"{u},{i},{r},{t}" for u, i, r, t in rows] + list(extra_lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_meta_2014(path: Path, records: list[dict], raw_lines: list[str] = ()) -> Path:
    """2014 metadata: one Python dict literal per line (``str(dict)``, as McAuley's files were
    written), gzip-compressed, followed by ``raw_lines`` as they are."""
    lines = [repr(rec) for rec in records] + list(raw_lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def write_json_lines_gz(path: Path, records: list[dict], raw_lines: list[str] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join([json.dumps(r) for r in records] + list(raw_lines)) + "\n")
    return path


def reference_mmrec(rows, k: int = 5):
    """A slow, obvious reimplementation of MMRec's processing, used to check the fast one.

    dropna on user/item/time, drop repeated (user, item, time) rows keeping the first, then loop:
    count users and items on the current rows, drop rows of any user or item with < k, until
    nothing changes; ids by order of first appearance in what is left.
    """
    clean, seen = [], set()
    for u, i, r, t in rows:
        if u is None or i is None or t is None:
            continue
        if (u, i, t) in seen:
            continue
        seen.add((u, i, t))
        clean.append((u, i, r, t))
    while True:
        ucount, icount = {}, {}
        for u, i, _, _ in clean:
            ucount[u] = ucount.get(u, 0) + 1
            icount[i] = icount.get(i, 0) + 1
        kept = [row for row in clean if ucount[row[0]] >= k and icount[row[1]] >= k]
        if len(kept) == len(clean):
            break
        clean = kept
    uid, iid = {}, {}
    for u, i, _, _ in clean:
        uid.setdefault(u, len(uid))
        iid.setdefault(i, len(iid))
    return clean, uid, iid


def meta_records(asins: list[str], base_url: str | None = None) -> list[dict]:
    """2014-style metadata for ``asins``: every third item lacks some fields; odd characters in
    titles and descriptions (quotes, unicode, HTML entities, newlines)."""
    records = []
    for n, asin in enumerate(asins):
        rec = {"asin": asin, "title": f"Bottle {n} \"Deluxe\" it's Caf\u00e9 &amp; co",
               "price": 9.99, "salesRank": {"Baby": n}, "related": {"also_bought": asins[:3]},
               "categories": [["Baby", "Feeding", "Bottles"], ["Baby", "Gifts"]],
               "brand": "Dr. Brown&#39;s",
               "description": f"Line one\nline  two &lt;b&gt; \u2603 #{n}"}
        if base_url is not None:
            rec["imUrl"] = f"{base_url}/img/{asin}._SX300_.jpg"
        if n % 3 == 1:
            del rec["brand"], rec["description"]
        if n % 3 == 2:
            del rec["categories"], rec["title"]
        records.append(rec)
    return records


def serve_amazon_2014(server: Server, raw_dir_name: str, rows, category: str = "Baby",
                      no_meta: set[str] = frozenset(), bad_images: set[str] = frozenset()) -> dict[str, bytes]:
    """Put a 2014 category (ratings CSV + dict-literal meta + one image per item) on ``server``.

    Items in ``no_meta`` get no metadata line; items in ``bad_images`` get a corrupt image.
    Returns the served files' bytes by name.
    """
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=raw_dir_name))
    asins = list(dict.fromkeys(i for _, i, _, _ in rows))
    ratings = write_ratings_csv(tmp / f"ratings_{category}.csv", rows).read_bytes()
    meta = write_meta_2014(tmp / f"meta_{category}.json.gz",
                           [r for r in meta_records(asins, base_url=server.base) if r["asin"] not in no_meta]
                           ).read_bytes()
    server.routes[f"/ratings_{category}.csv"] = Route(ratings)
    server.routes[f"/meta_{category}.json.gz"] = Route(meta)
    for n, asin in enumerate(asins):
        body = b"corrupt" if asin in bad_images else image_bytes(color=(n % 255, 10, 10))
        server.routes[f"/img/{asin}._SX300_.jpg"] = Route(body)
    return {"ratings": ratings, "meta": meta}

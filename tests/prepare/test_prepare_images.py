"""Item images: bounded concurrency, retries, resume, failure list, atomic files, stale-file guard."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

from mllmrec.prepare.images import FAILURES_FILE, fetch_images, large_image_url

from prepare_fixtures import Route, image_bytes

FAST = {"timeout_s": 5.0, "retries": 2, "backoff_s": 0.01, "progress": False}


def _failures(images_dir: Path) -> dict[int, tuple[str, str]]:
    with open(images_dir / FAILURES_FILE, newline="") as f:
        return {int(r["item_id"]): (r["url"], r["reason"]) for r in csv.DictReader(f)}


def test_downloads_validates_and_lists_failures(http_server, tmp_path: Path) -> None:
    jpeg = image_bytes("JPEG")
    http_server.routes.update({
        "/0.jpg": Route(jpeg),
        "/1.png": Route(image_bytes("PNG", color=(0, 0, 255))),
        "/2.jpg": Route(b"<html>not an image</html>"),
        "/4.gif": Route(image_bytes("GIF", size=(1, 1))),
        "/5.jpg": Route(jpeg, fail_times=1, fail_status=503),
    })
    urls = [http_server.url("0.jpg"), http_server.url("1.png"), http_server.url("2.jpg"),
            http_server.url("3-missing.jpg"), http_server.url("4.gif"), http_server.url("5.jpg"), None]
    out = tmp_path / "images"
    report = fetch_images(urls, out, workers=3, **FAST)
    assert report.paths == {0: "images/0.jpg", 1: "images/1.jpg", 5: "images/5.jpg"}
    assert (out / "0.jpg").read_bytes() == jpeg                   # JPEG kept byte for byte
    with Image.open(out / "1.jpg") as img:                         # PNG re-encoded as JPEG
        assert img.format == "JPEG" and img.getpixel((3, 3))[2] > 200
    fails = _failures(out)
    assert set(fails) == {2, 3, 4, 6}
    assert fails[2][0] == urls[2] and "not a decodable image" in fails[2][1]
    assert fails[3][1] == "HTTP 404"
    assert "placeholder" in fails[4][1]
    assert fails[6] == ("", "no image URL in the metadata")
    assert not (out / "2.jpg").exists() and not (out / "4.jpg").exists()
    assert http_server.hits("3-missing.jpg") == 1                  # 404 is not retried
    assert http_server.hits("5.jpg") == 2                          # 503 is


def test_resume_skips_present_valid_files(http_server, tmp_path: Path) -> None:
    for n in range(4):
        http_server.routes[f"/{n}.jpg"] = Route(image_bytes(color=(n * 40, 0, 0)))
    urls = [http_server.url(f"{n}.jpg") for n in range(4)]
    out = tmp_path / "images"
    fetch_images(urls, out, workers=2, **FAST)
    (out / "1.jpg").write_bytes(b"damaged")   # a damaged file is fetched again
    (out / "2.jpg").unlink()                   # so is a deleted one
    http_server.requests.clear()
    report = fetch_images(urls, out, workers=2, **FAST)
    assert sorted(p for p, _ in http_server.requests) == ["/1.jpg", "/2.jpg"]
    assert report.reused == 2 and report.downloaded == 2 and len(report.paths) == 4


def test_changed_url_for_an_id_is_fetched_again(http_server, tmp_path: Path) -> None:
    # after a changed input, item 0 may be another product: its old file must not be reused
    http_server.routes["/a.jpg"] = Route(image_bytes(color=(255, 0, 0)))
    http_server.routes["/b.jpg"] = Route(image_bytes(color=(0, 255, 0)))
    out = tmp_path / "images"
    fetch_images([http_server.url("a.jpg")], out, workers=1, **FAST)
    fetch_images([http_server.url("b.jpg")], out, workers=1, **FAST)
    with Image.open(out / "0.jpg") as img:
        assert img.getpixel((3, 3))[1] > 200
    http_server.routes.pop("/a.jpg")
    report = fetch_images([http_server.url("a.jpg")], out, workers=1, **FAST)
    assert report.paths == {} and not (out / "0.jpg").exists()  # stale image removed, not shown


def test_concurrency_is_bounded(http_server, tmp_path: Path) -> None:
    for n in range(12):
        http_server.routes[f"/{n}.jpg"] = Route(image_bytes(), delay_s=0.05)
    report = fetch_images([http_server.url(f"{n}.jpg") for n in range(12)], tmp_path / "images", workers=3, **FAST)
    assert len(report.paths) == 12
    assert 1 < http_server.max_active <= 3


def test_killed_write_leaves_no_half_file(http_server, tmp_path: Path, monkeypatch) -> None:
    http_server.routes["/0.jpg"] = Route(image_bytes())

    def boom(self, data):  # the process dies half-way through writing the image
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", boom)
    with pytest.raises(KeyboardInterrupt):
        fetch_images([http_server.url("0.jpg")], tmp_path / "images", workers=1, **FAST)
    monkeypatch.undo()
    assert not (tmp_path / "images" / "0.jpg").exists()
    assert [p.name for p in (tmp_path / "images").iterdir() if p.name.endswith(".jpg")] == []


@pytest.mark.parametrize(("url", "large"), [
    ("http://ecx.images-amazon.com/images/I/41Bb6wf%2BqUL._SX300_.jpg",
     "http://ecx.images-amazon.com/images/I/41Bb6wf%2BqUL.jpg"),
    ("https://images-na.ssl-images-amazon.com/images/I/317ZQtCvFzL._SX38_SY50_CR,0,0,38,50_.jpg",
     "https://images-na.ssl-images-amazon.com/images/I/317ZQtCvFzL.jpg"),
    ("http://ecx.images-amazon.com/images/I/51r3BLpLWgL.jpg", "http://ecx.images-amazon.com/images/I/51r3BLpLWgL.jpg"),
    ("http://127.0.0.1:8000/img/x._SX300_.jpg", "http://127.0.0.1:8000/img/x._SX300_.jpg"),
])
def test_large_image_url(url: str, large: str) -> None:
    assert large_image_url(url) == large



def test_unreachable_host_gives_up_early(tmp_path: Path, caplog) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on: every connect is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    urls = [f"http://127.0.0.1:{port}/{n}.jpg" for n in range(200)]
    report = fetch_images(urls, tmp_path / "images", workers=2, **FAST)
    reasons = [r for _, _, r in report.failures]
    assert len(reasons) == 200 and report.paths == {}
    assert 8 <= sum("ConnectError" in r for r in reasons) < 40     # gave up after ~8 in a row, not 200 x 3
    assert sum(r.startswith("not attempted") for r in reasons) > 150
    assert "could not reach the server" in caplog.text

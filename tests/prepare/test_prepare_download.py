"""Resumable, checksummed downloads against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from pathlib import Path

import pytest

from mllmrec.data.errors import DatasetError
from mllmrec.prepare.download import DownloadError, download_file, ensure_file

BODY = os.urandom(300_000)
FAST = {"timeout_s": 5.0, "backoff_s": 0.01, "progress": False}


def test_plain_download(http_server, tmp_path: Path) -> None:
    http_server.routes["/f.bin"] = http_server_route(BODY)
    dest = download_file(http_server.url("f.bin"), tmp_path / "raw" / "f.bin", retries=0, **FAST)
    assert dest.read_bytes() == BODY
    assert not (tmp_path / "raw" / "f.bin.part").exists()


def test_interrupted_transfer_resumes_with_range(http_server, tmp_path: Path) -> None:
    http_server.routes["/f.bin"] = http_server_route(BODY, cut_after=100_000, cut_times=1)
    dest = download_file(http_server.url("f.bin"), tmp_path / "f.bin", retries=2, **FAST)
    assert dest.read_bytes() == BODY
    ranges = [r for p, r in http_server.requests if p == "/f.bin"]
    assert ranges[0] is None
    assert ranges[1] == "bytes=100000-"  # the second request continues where the first stopped


def test_partial_file_from_a_killed_run_is_resumed(http_server, tmp_path: Path) -> None:
    http_server.routes["/f.bin"] = http_server_route(BODY)
    (tmp_path / "f.bin.part").write_bytes(BODY[:123_456])
    download_file(http_server.url("f.bin"), tmp_path / "f.bin", retries=0, **FAST)
    assert (tmp_path / "f.bin").read_bytes() == BODY
    assert http_server.requests == [("/f.bin", "bytes=123456-")]


def test_server_without_range_support_restarts(http_server, tmp_path: Path) -> None:
    http_server.routes["/f.bin"] = http_server_route(BODY, honour_range=False)
    (tmp_path / "f.bin.part").write_bytes(b"garbage that must not survive")
    download_file(http_server.url("f.bin"), tmp_path / "f.bin", retries=0, **FAST)
    assert (tmp_path / "f.bin").read_bytes() == BODY


def test_complete_part_file_is_finished_after_416(http_server, tmp_path: Path) -> None:
    http_server.routes["/f.bin"] = http_server_route(BODY)
    (tmp_path / "f.bin.part").write_bytes(BODY)  # killed between the last byte and the rename
    download_file(http_server.url("f.bin"), tmp_path / "f.bin", retries=0, **FAST)
    assert (tmp_path / "f.bin").read_bytes() == BODY


def test_404_fails_at_once_with_url_and_destination(http_server, tmp_path: Path) -> None:
    dest = tmp_path / "raw" / "ratings_Nope.csv"
    with pytest.raises(DownloadError) as err:
        download_file(http_server.url("ratings_Nope.csv"), dest, retries=3, **FAST)
    message = str(err.value)
    assert "HTTP 404" in message and http_server.url("ratings_Nope.csv") in message
    assert f"place it at {dest}" in message
    assert http_server.hits("ratings_Nope.csv") == 1  # no pointless retries
    assert isinstance(err.value, DatasetError)


def test_server_errors_are_retried(http_server, tmp_path: Path) -> None:
    http_server.routes["/f.bin"] = http_server_route(BODY, fail_times=2, fail_status=503)
    download_file(http_server.url("f.bin"), tmp_path / "f.bin", retries=2, **FAST)
    assert (tmp_path / "f.bin").read_bytes() == BODY
    assert http_server.hits("f.bin") == 3


def test_unreachable_server_names_url_and_path(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ratings_Baby.csv"
    dest = tmp_path / "ratings_Baby.csv"
    with pytest.raises(DownloadError) as err:
        download_file(url, dest, retries=1, **FAST)
    assert url in str(err.value) and str(dest) in str(err.value) and "offline" in str(err.value)


def test_checksum_mismatch_warns_and_keeps_the_file(http_server, tmp_path: Path, caplog) -> None:
    http_server.routes["/f.bin"] = http_server_route(BODY)
    wrong = "0" * 64
    with caplog.at_level(logging.WARNING):
        digest = ensure_file(http_server.url("f.bin"), tmp_path / "f.bin", sha256=wrong, retries=0, **FAST)
    assert digest == hashlib.sha256(BODY).hexdigest()
    assert "CHECKSUM MISMATCH" in caplog.text and wrong in caplog.text and digest in caplog.text
    assert (tmp_path / "f.bin").read_bytes() == BODY


def test_present_file_is_not_downloaded_again(http_server, tmp_path: Path, caplog) -> None:
    (tmp_path / "f.bin").write_bytes(BODY)
    right = hashlib.sha256(BODY).hexdigest()
    with caplog.at_level(logging.WARNING):
        assert ensure_file(http_server.url("f.bin"), tmp_path / "f.bin", sha256=right, **FAST) == right
    assert http_server.requests == [] and "MISMATCH" not in caplog.text


def test_missing_file_with_download_off_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="prepare.download=false.*place it at"):
        ensure_file("http://example.invalid/x.csv", tmp_path / "x.csv", download=False)


def http_server_route(body: bytes, **kwargs):
    from prepare_fixtures import Route

    return Route(body=body, **kwargs)

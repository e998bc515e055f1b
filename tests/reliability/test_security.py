"""Security (issue 18, point 11): image paths confined to the dataset's image folder, secrets redacted
from run folders and logs (pickle refusal: test_pickle_refusal.py)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mllmrec.reasoning.images import scan_images
from mllmrec.secrets import REDACTED, install_log_redaction, is_secret_key, redact_container, redact_text

from train_helpers import ROOT


# --------------------------------------------------------------------------- image paths
def _png(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (200, 10, 10)).save(path, format="PNG")
    return path


def test_image_paths_outside_the_image_folder_are_not_read(tmp_path, caplog):
    root = tmp_path / "data" / "toy"
    _png(root / "images" / "0.png")
    secret = _png(tmp_path / "private" / "id_card.png")  # a readable image the dataset must not reach
    items = pd.DataFrame({"item_id": [0, 1, 2, 3], "image_path": [
        "images/0.png", str(secret), "images/../../../private/id_card.png", "../../private/id_card.png"]})
    with caplog.at_level(logging.WARNING):
        scan = scan_images(root, items, vision=True, workers=1)
    statuses = [im.status for im in scan.images]
    assert statuses == ["pending", "unreadable", "unreadable", "unreadable"]
    assert all(im.sha256 is None and "outside" in im.error for im in scan.images[1:])  # never read
    assert "3 item image paths point outside" in caplog.text and "allow_outside_images" in caplog.text

    allowed = scan_images(root, items, vision=True, workers=1, allow_outside=True)
    assert [im.status for im in allowed.images] == ["pending"] * 4  # the explicit opt-in reads them


def test_reason_settings_confine_images_unless_told_otherwise():
    sys.path.insert(0, str(ROOT / "tests" / "reasoning"))
    from mllmrec.reasoning.settings import ReasonSettings

    from reasoning_helpers import compose_reason

    assert ReasonSettings.from_config(compose_reason(["mllm=qwen25vl"])).allow_outside_images is False
    opted_in = compose_reason(["mllm=qwen25vl", "reason.allow_outside_images=true"])
    assert ReasonSettings.from_config(opted_in).allow_outside_images is True


# --------------------------------------------------------------------------- secret redaction
@pytest.mark.parametrize("key, secret", [
    ("reason.openai.api_key", True), ("OPENAI_API_KEY", True), ("hf_token", True), ("token", True),
    ("db.password", True), ("client_secret", True), ("apikey", True),
    ("mllm.sampling.max_tokens", False), ("reason.item_max_tokens", False), ("tokenizer", False),
    ("prompt_margin_tokens", False), ("graph.alpha", False)])
def test_secret_looking_keys(key, secret):
    assert is_secret_key(key) is secret


def test_redaction_of_text_and_containers():
    text = "overrides: ['reason.openai.api_key=sk-live-123456', 'graph.kc=5'] token: abcdef max_tokens=256"
    out = redact_text(text, {"sk-live-123456"})
    assert "sk-live-123456" not in out and "abcdef" not in out
    assert "graph.kc=5" in out and "max_tokens=256" in out
    assert "api_key: ${oc.env:OPENAI_API_KEY,null}" == redact_text("api_key: ${oc.env:OPENAI_API_KEY,null}")
    cfg = {"openai": {"api_key": "sk-live-123456", "max_tokens": 9}, "db": {"password": "hunter22"}}
    assert redact_container(cfg) == {"openai": {"api_key": REDACTED, "max_tokens": 9}, "db": {"password": REDACTED}}


def test_log_records_are_redacted(caplog):
    install_log_redaction({"sk-from-config-987"})
    log = logging.getLogger("mllmrec.test_security")
    with caplog.at_level(logging.INFO):
        log.info("job #0 : %s", ["reason.openai.api_key=sk-from-cli-555", "graph.kc=5"])
        log.info("calling the server with sk-from-config-987")
    assert "sk-from-cli-555" not in caplog.text and "sk-from-config-987" not in caplog.text
    assert "graph.kc=5" in caplog.text and REDACTED in caplog.text


def _run_reason(tmp_path: Path, *overrides: str, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "reason.py"), f"paths.data_dir={tmp_path / 'data'}",
           f"hydra.run.dir={tmp_path / 'run'}", "reason.progress=false", "mllm=qwen25vl", "reason.backend=fake",
           "dataset.n_users=6", "dataset.n_items=5", *overrides]
    full_env = {**os.environ, "PROJECT_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=full_env)


def _files_containing(folder: Path, needle: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_secrets_stay_out_of_run_folders_and_logs(tmp_path):
    cli_key, env_key = "sk-cli-4f9a8b7c6d5e", "sk-env-0a1b2c3d4e5f"
    proc = _run_reason(tmp_path, f"reason.openai.api_key={cli_key}", OPENAI_API_KEY=env_key)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    assert (run / ".hydra" / "config.yaml").is_file() and (run / ".hydra" / "overrides.yaml").is_file()
    for key in (cli_key, env_key):
        assert _files_containing(tmp_path, key) == [], key  # run folder, logs, data, outputs
        assert key not in proc.stdout + proc.stderr
    assert REDACTED in (run / ".hydra" / "overrides.yaml").read_text()

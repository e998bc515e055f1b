"""pytest fixtures of the prepare tests (helpers live in prepare_fixtures.py, imported by name)."""

import sys
from pathlib import Path

# the test modules import prepare_fixtures by name; make that work under any --import-mode
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prepare_fixtures import http_server  # noqa: E402, F401  (registers the fixture)

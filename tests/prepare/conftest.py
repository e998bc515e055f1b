"""pytest fixtures of the prepare tests (helpers live in prepare_fixtures.py, imported by name)."""

from prepare_fixtures import http_server  # noqa: F401  (registers the fixture)

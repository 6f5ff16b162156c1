"""Fixtures of the web page tests (helpers in webui_support)."""

from webui_support import app, configured

__all__ = ["app", "configured"]

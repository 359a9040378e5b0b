"""Where birdsearch keeps what it builds: one cache root, overridable by environment."""

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache root: ``$BIRDSEARCH_CACHE``, else ``$XDG_CACHE_HOME/birdsearch``, else ``~/.cache/birdsearch``."""
    explicit = os.environ.get("BIRDSEARCH_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "birdsearch"

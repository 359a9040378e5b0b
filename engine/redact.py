"""What answers may say about the server's files: names, never absolute paths.

A path tells any client how the server is laid out (user names, mount points, where the weights
live). Models are named by the spec they were given (``hf-hub:org/repo``, ``toy``), or by the base
name of their directory; the index by its version name. Free text that may quote a path (error
details, readiness) goes through ``redact_paths``; the server's log keeps the full paths.
"""

from __future__ import annotations

import re
from pathlib import Path

LOCAL_DIR = "local-dir:"

# An absolute path of at least two segments ("/srv/models/enc", "~/x/y"), not inside a URL or a
# relative path (no word character, dot, slash or dash right before it). One segment ("/species")
# is a route in a message, not a place on disk.
_SEGMENT = r"[^\s'\"`/:,;()\[\]{}<>|]+"
ABSOLUTE_PATH = re.compile(rf"(?<![\w./~-])(?:~|/{_SEGMENT})(?:/{_SEGMENT})+/?")


def model_name(spec: str) -> str:
    """A model's spec as an answer may show it.

    ``hf-hub:org/repo``, ``org/repo`` and ``toy[:variant]`` stay as given; ``local-dir:/a/b/enc``
    becomes ``local-dir:enc``; a directory path becomes its base name (``enc``).
    """
    if spec.startswith(LOCAL_DIR):
        return LOCAL_DIR + base_name(spec[len(LOCAL_DIR) :])
    path = Path(spec).expanduser()
    if spec.startswith(("/", "~")) or (spec and path.is_dir()):
        return base_name(spec)
    return spec


def base_name(path: str) -> str:
    """The last part of a path ("/a/b/enc/" → "enc"); a path with no name (root) gives "/"."""
    return Path(path.rstrip("/")).expanduser().name or "/"


def redact_paths(text: str) -> str:
    """``text`` with every absolute path shortened to ``…/<base name>``."""
    return ABSOLUTE_PATH.sub(lambda m: "…/" + base_name(m.group(0)), text)

"""The query engine: audio in, scored windows out; installs as birdsearch.engine.

Every door (the HTTP app in ``service/``, ``analyze/``, the Python API ``birdsearch.Birdsearch``)
runs on it; it imports none of them. docs/architecture.md maps its modules.
"""

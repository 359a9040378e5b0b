"""A bird recording in, photographs of the species out: the console script and the toy world; installs as birdsearch.

setup.py maps the top-level folders under this name: ``model/`` installs as ``birdsearch.model``
(the teacher, the student, the audio front end, the distilled encoder), ``indexer/`` as
``birdsearch.indexer`` (photo gallery to FAISS) and ``service/`` as ``birdsearch.service`` (the HTTP
API and web page); ``birdsearch/toy/`` is ``birdsearch.toy`` (a small synthetic bird world that runs
offline). Who may import whom: docs/architecture.md and tests/test_floor_plan.py.
"""

__version__ = "0.1.0"

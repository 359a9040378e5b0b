"""``birdsearch analyze``: folders of recordings in, detection tables out; installs as birdsearch.analyze.

An app on the query engine (``birdsearch.engine``), beside the HTTP app (it imports neither the
service nor the Python API): ``config`` is one run, ``run`` finds the recordings, skips what is
done and picks a runner (this process: the engine's ``BatchRun``; ``remote``: a running server
with ``--url``; ``distributed``: Ray Data with ``--runner ray``), ``writer`` keeps the output folder
and ``formats`` renders the engine's detections (CSV, Raven Pro selection tables, Audacity labels,
JSON Lines); ``cli`` registers the command.
"""

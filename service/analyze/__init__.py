"""``birdsearch analyze``: folders of recordings in, detections out, in the formats field tools read.

A workflow beside the query service (it uses the service's models, index and query path in-process,
without a server): ``inputs`` finds the recordings, ``pipeline`` decodes them in parallel workers,
shares forward passes between files and turns window scores into detections, ``formats`` writes
them (CSV, Raven Pro selection tables, Audacity labels, JSON Lines), ``cli`` registers the command.
"""

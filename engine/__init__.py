"""The query engine: audio in, scored windows, answers and detections out; installs as birdsearch.engine.

Decode within a memory budget, cut windows, embed them (micro-batched), search the index, pool each
species' photos into a window score, calibrate, and make one ``detections.Detection`` per window and
species. Two ways to run it: ``runtime.Runtime`` answers one question at a time (the HTTP app and
the Python API's ``query``), ``batch.BatchRun`` goes through many recordings with shared forward
passes (``analyze`` and the Python API's ``analyze``). Its settings are ``config.EngineConfig``.
It imports none of the apps built on it. docs/architecture.md maps its modules by stage.
"""

"""The HTTP app on the query engine: routes, settings, uploads, metrics, errors as JSON, the web page; installs as birdsearch.service.

``app`` builds the FastAPI app (uvicorn starts ``birdsearch.service.app:create_app`` by name),
``routes/`` has one thin router per concern, each asking the engine's ``Runtime``; ``settings`` is
the engine's settings plus the server's own; ``cli`` registers ``birdsearch serve`` and
``birdsearch query``. It imports the engine, never ``analyze`` or the Python API.
"""

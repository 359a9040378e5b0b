"""HTTP routes, one thin router per concern calling the engine's runtime; installs as birdsearch.service.routes."""

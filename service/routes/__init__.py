"""HTTP routes, one thin router per concern calling the runtime; installs as birdsearch.service.routes."""

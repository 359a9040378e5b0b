"""The query service: HTTP API, web page and batched model calls; installs as birdsearch.service."""

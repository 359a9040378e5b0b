"""Bundled reference data: ``birds.csv``, names with order and family (Clements/eBird); installs as birdsearch.indexer.data."""

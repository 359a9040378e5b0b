"""Bundled reference data: ``birds.csv``, scientific and common names with order and family (Clements/eBird)."""

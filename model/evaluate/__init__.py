"""Baselines, data set loaders and reports, what `birdsearch evaluate` runs; installs as birdsearch.model.evaluate."""

"""The two pretrained models and what is built on them (spec resolution, audio features, distilled encoder); installs as birdsearch.model."""

"""The two pretrained models and what is built on them (spec resolution, audio features, distilled encoder, metrics, text-space maps, the table reader); installs as birdsearch.model."""

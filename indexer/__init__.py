"""Photo gallery in, versioned FAISS index and species table out; installs as birdsearch.indexer."""

"""birdsearch: a bird recording in, photographs of the species that made the sound out.

The library is split by concern: ``birdsearch.model`` (the teacher, the student, the audio front
end, the distilled encoder), ``birdsearch.indexer`` (photo gallery to FAISS), ``birdsearch.service``
(the HTTP API and web page) and ``birdsearch.toy`` (a small synthetic bird world that runs offline).
"""

__version__ = "0.1.0"

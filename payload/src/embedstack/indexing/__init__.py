"""`embedstack index` and `embedstack search`: files → chunks → an OpenAI-compatible endpoint → Qdrant.

Needs the `index` extra (qdrant-edge-py, qdrant-client, semantic-text-splitter, openai, pathspec, tqdm); the
gateway hosts never install it. Modules: files (which files), chunking, endpoint (the openai client), store
(Qdrant in Roo Code's schema: a deployed one, or the embedded one of edge.py, moved over from qdrant-client's
local mode by local_mode.py), indexer, search, commands (the CLI flags).
"""

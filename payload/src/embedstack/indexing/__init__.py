"""`embedstack index` and `embedstack search`: files → chunks → an OpenAI-compatible endpoint → Qdrant.

Needs the `index` extra (qdrant-client, semantic-text-splitter, openai, pathspec, tqdm); the gateway
hosts never install it. Modules: files (which files), chunking, endpoint (the openai client), store
(Qdrant in Roo Code's schema), indexer, search, commands (the CLI flags).
"""

"""Data: the SemanticKITTI on-disk format, datasets, and the node's cross-modal pair logs."""

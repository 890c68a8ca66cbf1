"""Data: decoded splits of Karpathy or embedded datasets, the memory-mapped image cache,
caption embeddings from the frozen text encoder, pair sets, and the dataset key of the caches."""

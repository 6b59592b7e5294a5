"""Few-shot classification: Omniglot and MiniImageNet loading, splits, and N-way K-shot task sampling."""

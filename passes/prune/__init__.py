"""Pruning passes: structured (N:M) and unstructured weight sparsity."""

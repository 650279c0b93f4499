"""Floor 3: modules built on the ops: the 2-simplicial layer, its SDPA twin, rotary embeddings, caches."""

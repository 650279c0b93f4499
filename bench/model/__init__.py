"""The pieces of bench/gpu_model.py: sass.py (reading nvdisasm listings), counts.py (the hot loop
nest and its per-trip counts), maps.py (loop trips at a shape, per kernel), specs.py (the GPUs'
public figures), shape.py (the problem shape)."""

"""Verification tools for the GPU kernels, apart from the benchmarks: what they compile to and
whether they run clean, not how fast they are.

- kernel_report.py: every shipped Triton kernel and config compiled ahead of time (no GPU),
  registers, spills, shared memory, tensor-core loops; --check fails on a problem.
- cuda_report.py: the CUDA C++ instantiations of the built extension read with cuobjdump.
- gpu_check.sh: everything a lent GPU is for, in one budgeted call (--dry-run without one).
- gpu_sanitize.py: every CUDA C++ kernel path once, small, for compute-sanitizer.

The performance model of the compiled kernels is bench/gpu_model.py.
"""

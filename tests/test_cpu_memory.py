"""The cpu backend's fwd+bwd stays within 10 input-sized tensors of peak memory (issue 14, item 7).

Outputs and gradients count (they are 6 of the 10), the inputs do not. Measured like
`bench/cpu_attention.py --memory` reports it: in a fresh subprocess (so the allocator's history
in this one can neither hide nor inflate anything), peak RSS over the baseline after a small
warm-up call. Before the kernels read their inputs in place and kept only the halo rows that
neighbouring work items share, the figure was ~23.
"""

import pytest

from bench.cpu_attention import measure_peak_memory
from simplicial_attn.backends import extension

if not extension.has_kernel("cpu"):
    pytest.skip(
        f"the C++ extension simplicial_attn._C with CPU kernels is not built ({extension.build_info()})",
        allow_module_level=True,
    )


def test_fwd_bwd_peak_memory_within_10_input_tensors():
    r = measure_peak_memory("cpu", B=1, N=4096, H=4, D=64, w1=512, w2=32, causal=True, dtype="fp32")
    tensors = r["fp32_tensors"]
    print(f"cpu fwd+bwd N=4096 w1=512 w2=32: {tensors:.1f} input-sized tensors")
    assert 6 <= tensors <= 10, f"peak extra memory {tensors:.1f} input-sized tensors (6 are outputs and gradients)"

"""The reference stays memory-bounded: fwd+bwd at N=4096, w1=512, w2=32 under 1 GiB extra.

A materialised (i, j, k) window alone would be B*H*N*w1*w2*4 bytes = 1 GiB here. Measured in
a fresh subprocess (peak RSS over the baseline after the inputs exist), so the allocator's
history in this process cannot hide or inflate anything.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from bench.memory import peak_rss_delta
from simplicial_attn.backends import reference
from simplicial_attn.problem import Problem, window_band
torch.set_num_threads(2)
B, N, H, D, w1, w2 = 1, 4096, 4, 64, 512, 32
q, k1, k2, v1, v2, dout = (torch.randn(B, N, H, D) for _ in range(6))
def run():
    prob = Problem(window_band(w1, True), window_band(w2, True), D ** -0.5)
    out, lse, lse_lo = reference.fwd(q, k1, k2, v1, v2, prob)
    grads = reference.bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, prob)
    return out, lse, grads
print(json.dumps({"peak_extra_bytes": peak_rss_delta(run)}))
"""


def test_reference_fwd_bwd_peak_memory_under_1_gib():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, ROOT],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    peak = json.loads(proc.stdout.strip().splitlines()[-1])["peak_extra_bytes"]
    print(f"reference fwd+bwd N=4096 w1=512 w2=32: peak extra {peak / 2**20:.0f} MiB")
    # The outputs themselves (out + 5 grads, fp32) are ~24 MiB; the bound is on everything.
    assert 0 < peak < 1 << 30, f"peak extra memory {peak / 2**20:.0f} MiB is not under 1 GiB"

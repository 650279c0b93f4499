"""What a benchmark can run: every package backend plus the yardsticks users compare against.

A provider answers `unavailable(spec)` (a reason string, or None when it can run) and
`build(spec, inputs)` (a callable that runs one forward, or one backward given a prepared
forward, or both). `spec` is a `Spec` from bench/run.py.
"""

import torch

import simplicial_attn as sa
from simplicial_attn import backends
from simplicial_attn.backends import reference
from simplicial_attn.problem import Problem, window_band

# Memory the naive dense einsum may use for its (i, j, k) cube before we skip it.
DENSE_LIMIT_BYTES = 3 << 30


class Provider:
    name = ""
    description = ""
    slow = False  # a yardstick --quick runs only on small shapes
    compiles = False  # its first call compiles (torch.compile)

    def unavailable(self, spec):
        return None

    def run(self, spec, inputs):
        """Returns a zero-argument callable doing one `spec.mode` step on `inputs`."""
        raise NotImplementedError


def _step(forward, spec, inputs):
    """Wrap a differentiable `forward(q, k1, k2, v1, v2) -> out` into one fwd / bwd / fwdbwd step."""
    q, k1, k2, v1, v2, dout = inputs
    leaves = (q, k1, k2, v1, v2)
    if spec.mode == "fwd":

        def fwd():
            with torch.no_grad():
                return forward(*leaves)

        return fwd
    if spec.mode == "fwdbwd":
        return lambda: torch.autograd.grad(forward(*leaves), leaves, dout)
    out = forward(*leaves)  # "bwd": the forward runs once, untimed; each step is a backward
    return lambda: torch.autograd.grad(out, leaves, dout, retain_graph=True)


class BackendProvider(Provider):
    """One backend of the package, through the public op (what users call)."""

    def __init__(self, backend):
        self.backend = backend
        self.name = backend
        self.slow = backend == "reference"
        self.description = f"simplicial_attn backend={backend!r}"

    def unavailable(self, spec):
        if self.backend == "triton" and spec.device == "cpu":
            return "the Triton interpreter is a correctness tool, not a CPU backend"
        reasons = backends.get(self.backend).not_supported_reasons(spec.device, spec.dtype)
        return "; ".join(reasons) or None

    def run(self, spec, inputs):
        def forward(*t):
            return sa.two_simplicial_attention(*t, w1=spec.w1, w2=spec.w2, causal=spec.causal, backend=self.backend)

        return _step(forward, spec, inputs)


class CompiledReferenceProvider(Provider):
    """torch.compile of the reference backend's forward and backward (inductor)."""

    name = "reference+compile"
    description = "torch.compile(reference.fwd / reference.bwd)"
    slow = True
    compiles = True

    def __init__(self):
        self._fwd = torch.compile(reference.fwd, dynamic=False)
        self._bwd = torch.compile(reference.bwd, dynamic=False)

    def run(self, spec, inputs):
        # The reference's fwd/bwd are explicit functions: no autograd graph to build.
        q, k1, k2, v1, v2, dout = (t.detach() for t in inputs)
        n, d = q.shape[1], q.shape[3]
        prob = Problem(window_band(spec.w1, spec.causal, n), window_band(spec.w2, spec.causal, n), d**-0.5)
        if spec.mode == "fwd":
            return lambda: self._fwd(q, k1, k2, v1, v2, prob)
        out, lse, lse_lo = self._fwd(q, k1, k2, v1, v2, prob)
        if spec.mode == "bwd":
            return lambda: self._bwd(dout, q, k1, k2, v1, v2, out, lse, lse_lo, prob)

        def fwdbwd():
            o, l_, lo = self._fwd(q, k1, k2, v1, v2, prob)
            return self._bwd(dout, q, k1, k2, v1, v2, o, l_, lo, prob)

        return fwdbwd


class DenseEinsumProvider(Provider):
    """What people write by hand (and what the seed shows): the whole (i, j, k) cube, masked."""

    name = "dense-einsum"
    description = "naive dense einsum over all (i, j, k), masked, autograd backward"
    slow = True

    def unavailable(self, spec):
        cube = spec.B * spec.Hq * spec.N**3 * 4 * 3  # logits, probabilities, autograd copy
        if cube > DENSE_LIMIT_BYTES:
            return f"its (i, j, k) cube needs ~{cube / 2**30:.1f} GiB (limit {DENSE_LIMIT_BYTES / 2**30:.0f} GiB)"
        return None

    def run(self, spec, inputs):
        n = spec.N
        i = torch.arange(n, device=spec.device)

        def mask(w):
            band = window_band(w, spec.causal, n)
            j = i[None, :]
            return (j >= i[:, None] - band.left) & (j <= i[:, None] + band.right)

        m = mask(spec.w1)[:, :, None] & mask(spec.w2)[:, None]
        g = spec.Hq // spec.Hkv

        def forward(q, k1, k2, v1, v2):
            k1, k2, v1, v2 = (t.repeat_interleave(g, dim=2) for t in (k1, k2, v1, v2))
            logits = torch.einsum("bihd,bjhd,bkhd->bhijk", q, k1, k2) * spec.D**-0.5
            p = torch.softmax(logits.masked_fill(~m, float("-inf")).flatten(-2), -1).view_as(logits)
            return torch.einsum("bhijk,bjhd,bkhd->bihd", p, v1, v2)

        return _step(forward, spec, inputs)


class SdpaProvider(Provider):
    """The bilinear yardstick: SDPA causal attention sized to the same FLOP count (GPU only)."""

    name = "sdpa-causal"
    description = "torch SDPA causal attention with the same CONTRACT-§2 FLOPs (flash on GPU)"

    def unavailable(self, spec):
        return None if spec.device == "cuda" else "the flash SDPA yardstick is measured on GPU only"

    def equivalent_length(self, spec, triple_flops):
        """N' with SDPA causal FLOPs 4*B*H*D*N'^2/2 (fwd) equal to the simplicial forward's FLOPs."""
        per_row = 4 * spec.B * spec.Hq * spec.D / 2
        return max(1, int(round((triple_flops / per_row) ** 0.5)))

    def run(self, spec, inputs):
        q = inputs[0]
        n = spec.sdpa_N
        shape = (spec.B, spec.Hq, n, spec.D)
        qs, ks, vs, do = (torch.randn(shape, device=q.device, dtype=q.dtype) for _ in range(4))
        for t in (qs, ks, vs):
            t.requires_grad_(spec.mode != "fwd")

        def forward(*_):
            return torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True)

        if spec.mode == "fwd":
            return lambda: forward()
        if spec.mode == "fwdbwd":
            return lambda: torch.autograd.grad(forward(), (qs, ks, vs), do)
        out = forward()
        return lambda: torch.autograd.grad(out, (qs, ks, vs), do, retain_graph=True)


def all_providers():
    providers = [BackendProvider(name) for name in backends.BACKENDS]
    return providers + [CompiledReferenceProvider(), DenseEinsumProvider(), SdpaProvider()]

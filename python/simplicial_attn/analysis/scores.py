r"""The unfused path: materialised trilinear scores, the windowed softmax, and attention weights.

    scores  = sa.trilinear_scores(q, k1, k2, w1, w2)     # [B, Hq, N, W1, W2] float32 logits
    weights = sa.windowed_softmax(scores)                 # one softmax per (b, h, i) window
    weights = sa.attention_weights(q, k1, k2, w1, w2)     # the two in one call

Slot [b, h, i, a, c] is the pair j = j0(i) + a (k1/v1 position), k = k0(i) + c (k2/v2
position); with A = scores and P = weights,

    out[b, i, h] = sum_{a, c} P[b, h, i, a, c] * v1[b, j, g] * v2[b, k, g]     (g = h's kv head)

is exactly `two_simplicial_attention(...)`. Window starts (scores_reference.py has the table):

    causal (default)       j0(i) = i - w1 + 1              centred   j0(i) = i - w1 // 2
    w = None, causal       W = N, j0(i) = i - N + 1        w = None, centred: W = N, j0 = 0
                                                           (the axis is the key position)

    causal, w1 = 4, query i = 5:  slot a  0 1 2 3
                                  j       2 3 4 5      (j < 0 or j >= N: -inf, weight 0)

Each function takes `backend=` like `two_simplicial_attention`: "auto", "cuda", "triton",
"cpu" or "reference"; an explicit backend that cannot serve the call raises
BackendNotSupported with the reasons, never a silent fallback. Registered as torch.library
custom ops with fake kernels and autograd (`simplicial_attn::trilinear_scores`,
`simplicial_attn::windowed_softmax` and their `_backward` ops), so torch.compile(fullgraph=True)
traces them and opcheck passes. Kernels: csrc/cpu/scores_softmax.cpp, csrc/cuda/scores_softmax.cu,
triton_kernels/scores_softmax.py, and the reference scores_reference.py.
"""

import torch

from .. import backends
from ..backends import extension
from ..backends import scores_reference as reference
from ..ops import checks
from ..problem import compute_dtype

# The C++ schemas (csrc/ops_scores.cpp); a backend "cpu"/"cuda" needs all four on its device.
_CPP_OPS = ("scores_fwd", "scores_bwd", "softmax_fwd", "softmax_bwd")


# Read once at import, like the backend registry, so tracing under torch.compile asks nothing of C++.
_HAS_KERNELS = {"cpu": extension.has_kernel("cpu", _CPP_OPS), "cuda": extension.has_kernel("cuda", _CPP_OPS)}


def not_supported_reasons(name, device_type, dtype):
    """Why backend `name` cannot run the scores / softmax ops on these tensors ([] if it can)."""
    if name in ("cpu", "cuda"):
        return backends.get(name).reasons_with(_HAS_KERNELS[name], device_type, dtype, " for the scores/softmax ops")
    # Triton and the reference serve these ops wherever they serve the fused op.
    return backends.get(name).not_supported_reasons(device_type, dtype)


def select_backend(requested, device, dtype):
    """The backend to run, by the rules of backends.select (same choice table and override)."""
    return backends.select(requested, device, dtype, reasons=not_supported_reasons)


def _kernels(name):
    """The module-like object with scores_fwd / scores_bwd / softmax_fwd / softmax_bwd for `name`."""
    if name in ("cpu", "cuda"):
        return torch.ops.simplicial_attn
    if name == "triton":
        from ..triton_kernels import scores_softmax

        return scores_softmax
    return reference


# ---- custom ops ---------------------------------------------------------------------------


def _check(q, k1, k2, w1, w2, scale, logits):
    """The value rules of a scores call (the public function checked the types), reading no tensor
    data, so the fake kernels check them too. The keys stand in for the values check_tensors also
    looks at. Returns D."""
    _, _, D = checks.check_tensors(q, k1, k2, k1, k2)
    checks.check_window_size("w1", w1)
    checks.check_window_size("w2", w2)
    checks.check_scale(scale)
    checks.check_logits(logits, D)
    return D


def _resolve(q, k1, k2, w1, w2, scale, logits, backend):
    """The checked scores call: (scale, backend name)."""
    D = _check(q, k1, k2, w1, w2, scale, logits)
    return D**-0.5 if scale is None else scale, select_backend(backend, q.device, q.dtype)


def _empty_grads(q, k1, k2):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k1, k2))


@torch.library.custom_op("simplicial_attn::trilinear_scores", mutates_args=())
def _scores_op(
    q: torch.Tensor,
    k1: torch.Tensor,
    k2: torch.Tensor,
    w1: int | None,
    w2: int | None,
    causal: bool,
    scale: float | None,
    logits: str,
    backend: str,
) -> torch.Tensor:
    scale, name = _resolve(q, k1, k2, w1, w2, scale, logits, backend)
    if q.shape[0] == 0 or q.shape[1] == 0:  # B == 0 or N == 0: nothing to launch
        return q.new_empty(reference.scores_shape(q, k1, w1, w2, causal), dtype=compute_dtype(q.dtype))
    return _kernels(name).scores_fwd(q, k1, k2, w1, w2, causal, scale, logits)


@_scores_op.register_fake
def _(q, k1, k2, w1, w2, causal, scale, logits, backend):
    _check(q, k1, k2, w1, w2, scale, logits)
    return q.new_empty(reference.scores_shape(q, k1, w1, w2, causal), dtype=compute_dtype(q.dtype))


@torch.library.custom_op("simplicial_attn::trilinear_scores_backward", mutates_args=())
def _scores_backward_op(
    dscores: torch.Tensor,
    q: torch.Tensor,
    k1: torch.Tensor,
    k2: torch.Tensor,
    w1: int | None,
    w2: int | None,
    causal: bool,
    scale: float | None,
    logits: str,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scale, name = _resolve(q, k1, k2, w1, w2, scale, logits, backend)
    if q.shape[0] == 0 or q.shape[1] == 0:
        return tuple(torch.zeros_like(t, memory_format=torch.contiguous_format) for t in (q, k1, k2))
    return _kernels(name).scores_bwd(dscores, q, k1, k2, w1, w2, causal, scale, logits)


@_scores_backward_op.register_fake
def _(dscores, q, k1, k2, w1, w2, causal, scale, logits, backend):
    _check(q, k1, k2, w1, w2, scale, logits)
    return _empty_grads(q, k1, k2)


def _scores_setup_context(ctx, inputs, output):
    q, k1, k2, *args = inputs
    ctx.save_for_backward(q, k1, k2)
    # w1, w2, causal, scale, logits, and the backend the forward ran
    ctx.args = (*args[:-1], select_backend(args[-1], q.device, q.dtype))


def _scores_backward(ctx, dscores):
    q, k1, k2 = ctx.saved_tensors
    grads = _scores_backward_op(dscores, q, k1, k2, *ctx.args)
    return (*grads, None, None, None, None, None, None)


_scores_op.register_autograd(_scores_backward, setup_context=_scores_setup_context)


def _check_scores(scores):
    """The value rules of windowed_softmax's input (the public function checked its type)."""
    if scores.dtype not in checks.FLOAT_DTYPES:
        got = str(scores.dtype).removeprefix("torch.")
        raise TypeError(f"scores must have dtype float16, bfloat16, float32 or float64, got {got}")
    if scores.dim() < 2:
        raise ValueError(f"scores must have rank >= 2 [..., W1, W2], got rank {scores.dim()} {tuple(scores.shape)}")


@torch.library.custom_op("simplicial_attn::windowed_softmax", mutates_args=())
def _softmax_op(scores: torch.Tensor, backend: str) -> torch.Tensor:
    _check_scores(scores)
    name = select_backend(backend, scores.device, scores.dtype)
    if scores.numel() == 0:
        return torch.empty_like(scores, memory_format=torch.contiguous_format)
    return _kernels(name).softmax_fwd(scores)


@_softmax_op.register_fake
def _(scores, backend):
    _check_scores(scores)
    return torch.empty_like(scores, memory_format=torch.contiguous_format)


@torch.library.custom_op("simplicial_attn::windowed_softmax_backward", mutates_args=())
def _softmax_backward_op(dprobs: torch.Tensor, probs: torch.Tensor, backend: str) -> torch.Tensor:
    _check_scores(probs)
    name = select_backend(backend, probs.device, probs.dtype)
    if probs.numel() == 0:
        return torch.empty_like(probs, memory_format=torch.contiguous_format)
    return _kernels(name).softmax_bwd(dprobs, probs)


@_softmax_backward_op.register_fake
def _(dprobs, probs, backend):
    _check_scores(probs)
    return torch.empty_like(probs, memory_format=torch.contiguous_format)


def _softmax_setup_context(ctx, inputs, output):
    ctx.save_for_backward(output)
    ctx.backend = select_backend(inputs[1], output.device, output.dtype)  # the forward's


def _softmax_backward(ctx, dprobs):
    (probs,) = ctx.saved_tensors
    return _softmax_backward_op(dprobs, probs, ctx.backend), None


_softmax_op.register_autograd(_softmax_backward, setup_context=_softmax_setup_context)


if extension.extension_loaded() and hasattr(torch.ops.simplicial_attn, "scores_fwd"):

    @torch.library.register_fake("simplicial_attn::scores_fwd")
    def _(q, k1, k2, w1, w2, causal, scale, logits):
        return q.new_empty(reference.scores_shape(q, k1, w1, w2, causal), dtype=compute_dtype(q.dtype))

    @torch.library.register_fake("simplicial_attn::scores_bwd")
    def _(dscores, q, k1, k2, w1, w2, causal, scale, logits):
        return _empty_grads(q, k1, k2)

    @torch.library.register_fake("simplicial_attn::softmax_fwd")
    def _(scores):
        return torch.empty_like(scores, memory_format=torch.contiguous_format)

    @torch.library.register_fake("simplicial_attn::softmax_bwd")
    def _(dprobs, probs):
        return torch.empty_like(probs, memory_format=torch.contiguous_format)


# ---- public functions -----------------------------------------------------------------------


def trilinear_scores(q, k1, k2, w1, w2, *, causal=True, scale=None, logits="trilinear", backend="auto"):
    """The windowed logits A = scale * sum_d q[i,d] k1[j,d] k2[k,d] of every window slot (or, with
    logits="determinant", the determinant form of CONTRACT §8).

    Args:
        q: (batch_size, seqlen, nheads_q, headdim).
        k1, k2: (batch_size, seqlen, nheads_kv, headdim), nheads_q % nheads_kv == 0.
            Any strides; float16, bfloat16, float32 (float64 on the cpu/reference backends).
        w1, w2: window sizes (int >= 1) or None (unbounded: W = seqlen).
        causal: trailing windows (True) or centred windows (False).
        scale: default headdim ** -0.5.
        logits: "trilinear" or "determinant" (headdim % 3 == 0), as in `two_simplicial_attention`.
        backend: "auto", "cuda", "triton", "cpu" or "reference".

    Returns:
        (batch_size, nheads_q, seqlen, W1, W2) float32 (float64 for float64 inputs), W = w or
        seqlen; slot [b, h, i, a, c] is (j0(i) + a, k0(i) + c) (module doc), -inf where that
        position lies outside the sequence. Differentiable in q, k1, k2.
    """
    checks.check_attention_types((q, k1, k2), w1, w2, causal, scale, logits, backend, names=("q", "k1", "k2"))
    w1, w2, scale = checks.op_window(w1), checks.op_window(w2), checks.op_scale(scale)
    return _scores_op(q, k1, k2, w1, w2, causal, scale, logits, backend)


def windowed_softmax(scores, *, backend="auto"):
    """Softmax over the last two dims jointly, in one pass: -inf slots get 0, and a window with
    no finite slot gets all zeros (never NaN).

    Args:
        scores: (..., W1, W2) floating tensor (usually `trilinear_scores`' output), any strides.

    Returns:
        Weights of scores' shape and dtype (float32 math for float16/bfloat16). Differentiable:
        dscores = P * (dP - sum(P * dP)) over each window.
    """
    checks.check_tensor_type("scores", scores)
    checks.check_backend_type(backend)
    return _softmax_op(scores, backend)


def attention_weights(q, k1, k2, w1, w2, *, causal=True, scale=None, logits="trilinear", backend="auto"):
    """`windowed_softmax(trilinear_scores(...))`: the attention weights P [B, Hq, N, W1, W2].

    Contracting them with v1 and v2 over the windows gives `two_simplicial_attention`'s output
    (module doc). Arguments as in `trilinear_scores`.
    """
    scores = trilinear_scores(q, k1, k2, w1, w2, causal=causal, scale=scale, logits=logits, backend=backend)
    return windowed_softmax(scores, backend=backend)

"""CONTRACT §4: every input rule has a test; each error names the argument, expected and given."""

import pytest
import torch

import simplicial_attn as sa


def inputs(B=2, N=5, Hq=4, Hkv=2, D=8, dtype=torch.float32):
    q = torch.randn(B, N, Hq, D, dtype=dtype)
    return [q] + [torch.randn(B, N, Hkv, D, dtype=dtype) for _ in range(4)]


def call(args, **kw):
    kw.setdefault("w1", 3)
    kw.setdefault("w2", 2)
    return sa.two_simplicial_attention(*args, **kw)


def expect(exc, args, match, **kw):
    with pytest.raises(exc, match=match):
        call(args, **kw)


def test_not_a_tensor():
    args = inputs()
    args[2] = args[2].numpy()
    expect(TypeError, args, r"k2 must be a torch.Tensor, got ndarray")


@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64, torch.float8_e4m3fn], ids=str)
def test_unsupported_dtype(dtype):
    args = [t.to(dtype) for t in inputs()]
    expect(TypeError, args, r"q must have dtype float16, bfloat16 or float32 .* got " + str(dtype)[6:])


def test_mismatched_dtypes():
    args = inputs()
    args[4] = args[4].half()
    expect(TypeError, args, r"v2 must have q's dtype float32, got float16")


def test_mismatched_devices():
    args = inputs()
    args[1] = args[1].to("meta")
    expect(ValueError, args, r"k1 must be on q's device cpu, got meta")


@pytest.mark.parametrize("which,layout", [(0, r"q must have rank 4 \[B, N, Hq, D\]"), (3, r"v1 must have rank 4")])
def test_wrong_rank(which, layout):
    args = inputs()
    args[which] = args[which][0]
    expect(ValueError, args, layout + r".*got rank 3")


@pytest.mark.parametrize("which,name", [(2, "k2"), (3, "v1"), (4, "v2")])
def test_kv_shapes_differ(which, name):
    args = inputs()
    args[which] = args[which][:, :4]
    expect(ValueError, args, rf"{name} must have k1's shape \(2, 5, 2, 8\).*got \(2, 4, 2, 8\)")


@pytest.mark.parametrize("axis,label", [(0, "B"), (1, "N"), (3, "D")])
def test_kv_sizes_differ_from_q(axis, label):
    args = inputs()
    shape = list(args[1].shape)
    shape[axis] += 1
    args[1:] = [torch.randn(shape) for _ in range(4)]
    expect(ValueError, args, rf"must have q's {label} = {args[0].shape[axis]} \(dim {axis}\), got {shape[axis]}")


def test_heads_not_a_multiple():
    expect(ValueError, inputs(Hq=6, Hkv=4), r"Hq = 6 must be a multiple of k1's heads Hkv = 4")


@pytest.mark.parametrize("D", [257, 300])
def test_head_dim_out_of_range(D):
    expect(ValueError, inputs(D=D, N=2), rf"head dim D \(q.shape\[3\]\) must be in 1..256, got {D}")


def test_head_dim_zero():
    expect(ValueError, inputs(D=0), r"must be in 1..256, got 0")


@pytest.mark.parametrize("name", ["w1", "w2"])
@pytest.mark.parametrize("value", [0, -3])
def test_window_below_one(name, value):
    expect(ValueError, inputs(), rf"{name} must be an int >= 1 or None, got {value}", **{name: value})


@pytest.mark.parametrize("name", ["w1", "w2"])
@pytest.mark.parametrize("value", [2.0, "4", True])
def test_window_not_an_int(name, value):
    expect(TypeError, inputs(), rf"{name} must be an int >= 1 or None, got {type(value).__name__}", **{name: value})


def test_unknown_backend():
    expect(
        ValueError, inputs(), r"backend must be one of auto, cuda, triton, cpu, reference; got 'flash'", backend="flash"
    )


def test_backend_not_a_string():
    expect(TypeError, inputs(), r"backend must be a str", backend=None)


def test_scale_and_flags():
    expect(TypeError, inputs(), r"scale must be a float or None, got str", scale="0.1")
    expect(ValueError, inputs(), r"scale must be finite, got nan", scale=float("nan"))
    expect(TypeError, inputs(), r"causal must be a bool, got int", causal=1)
    expect(TypeError, inputs(), r"return_lse must be a bool, got NoneType", return_lse=None)


def test_bad_env_override(monkeypatch):
    monkeypatch.setenv("SIMPLICIAL_ATTN_BACKEND", "fastest")
    expect(ValueError, inputs(), r"SIMPLICIAL_ATTN_BACKEND must be one of .*; got 'fastest'")


@pytest.mark.parametrize("B,N", [(0, 5), (2, 0), (0, 0)])
def test_empty_batch_or_sequence(B, N, monkeypatch):
    """Empty inputs return empty results (and empty gradients) without launching a kernel."""
    from simplicial_attn import backends

    def no_launch(*a, **k):
        raise AssertionError("a kernel was launched for an empty input")

    monkeypatch.setattr(backends.ReferenceBackend, "fwd", no_launch)
    monkeypatch.setattr(backends.ReferenceBackend, "bwd", no_launch)
    args = [t.requires_grad_() for t in inputs(B=B, N=N)]
    out, lse = call(args, return_lse=True, backend="reference")
    assert out.shape == (B, N, 4, 8) and lse.shape == (B, 4, N)
    out.sum().backward()
    assert all(t.grad.shape == t.shape for t in args)


def test_cpp_checks_name_the_argument():
    """Direct torch.ops calls (libtorch users) get TORCH_CHECK messages, not out-of-bounds reads."""
    from simplicial_attn.backends import extension

    if not extension.has_kernel("cpu"):
        pytest.skip("the C++ CPU kernels are not built (simplicial_attn._C has no CPU fused_fwd)")
    q, k1, k2, v1, v2 = inputs()
    fwd = torch.ops.simplicial_attn.fused_fwd
    with pytest.raises(RuntimeError, match=r"v1 must have shape \[2, 5, 2, 8\], got \[2, 5, 2, 7\]"):
        fwd(q, k1, k2, v1[..., :7], v2, None, 0, 2, 0, 1, 0, 0.5, "trilinear")
    with pytest.raises(RuntimeError, match=r"the band of k2 \(left2, right2\) must have reaches >= 0, got \(0, -1\)"):
        fwd(q, k1, k2, v1, v2, None, 0, 2, 0, 0, -1, 0.5, "trilinear")
    with pytest.raises(RuntimeError, match=r"k2 must have dtype Double like q, got Float"):
        fwd(q.double(), k1.double(), k2, v1.double(), v2.double(), None, 0, 2, 0, 1, 0, 0.5, "trilinear")
    with pytest.raises(RuntimeError, match=r"logits must be 'trilinear' or 'determinant', got 'volume'"):
        fwd(q, k1, k2, v1, v2, None, 0, 2, 0, 1, 0, 0.5, "volume")
    with pytest.raises(RuntimeError, match=r"cu_seqlens must have dtype int32 or int64, got Float"):
        fwd(*(t[:1] for t in (q, k1, k2, v1, v2)), torch.zeros(2), 5, 2, 0, 1, 0, 0.5, "trilinear")


def test_zero_query_heads():
    args = inputs()
    args[0] = args[0][:, :, :0]
    expect(ValueError, args, r"q and k1 must have at least one head, got Hq = 0, Hkv = 2")


def _op_backends():
    from simplicial_attn.backends import extension

    return ["reference"] + (["cpu"] if extension.has_kernel("cpu") else [])


@pytest.mark.parametrize("backend", _op_backends())
def test_op_called_directly_checks_its_arguments(backend):
    """torch.ops.simplicial_attn.attention is public too: the same rules, never zeros or -inf."""
    op = torch.ops.simplicial_attn.attention
    args = inputs()
    with pytest.raises(ValueError, match=r"w1 must be an int >= 1 or None, got 0"):
        op(*args, None, None, 0, 2, True, 0.5, "trilinear", backend)
    with pytest.raises(ValueError, match=r"backend must be one of auto, cuda, triton, cpu, reference; got 'bogus'"):
        op(*args, None, None, 3, 2, True, 0.5, "trilinear", "bogus")
    with pytest.raises(ValueError, match=r"q and k1 must have at least one head, got Hq = 0"):
        op(args[0][:, :, :0], *args[1:], None, None, 3, 2, True, 0.5, "trilinear", backend)
    with pytest.raises(ValueError, match=r"scale must be finite, got inf"):
        op(*args, None, None, 3, 2, True, float("inf"), "trilinear", backend)
    packed_layout = r"packed inputs reach the op as \[1, T, H, D\]; got q of shape \(2, 5, 4, 8\)"
    with pytest.raises(ValueError, match=packed_layout):
        op(*args, torch.tensor([0, 5], dtype=torch.int32), None, 3, 2, True, None, "trilinear", backend)
    # None scale and windows are resolved by the op itself, like the public function's
    out, lse, _ = op(*args, None, None, None, 2, True, None, "trilinear", backend)
    ref, ref_lse = sa.two_simplicial_attention(*args, None, 2, return_lse=True, backend=backend)
    assert torch.equal(out, ref) and torch.equal(lse, ref_lse)


def test_bogus_backend_is_a_value_error():
    expect(
        ValueError, inputs(), r"backend must be one of auto, cuda, triton, cpu, reference; got 'bogus'", backend="bogus"
    )


def test_forward_mode_ad_says_it_is_not_supported():
    args = inputs()
    tangents = tuple(torch.ones_like(t) for t in args)
    with pytest.raises(NotImplementedError, match=r"no forward-mode AD \(torch.func.jvp"):
        torch.func.jvp(lambda *x: call(x, backend="reference"), tuple(args), tangents)
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level(), pytest.raises(NotImplementedError, match="no forward-mode AD"):
        call([fwAD.make_dual(args[0], tangents[0]), *args[1:]], backend="reference")

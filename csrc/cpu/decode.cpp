// CPU implementation of simplicial_attn::fused_decode (csrc/ops.cpp, CONTRACT §7): a few new
// query rows against ring-buffer caches that already hold them. The work (decode_items in
// kernel_impl.h) splits each row's j window into parts so that one token of one sequence still
// gives every thread work; this file checks the call, plans the parts and combines their
// softmax states exactly (flash-decoding):
//   m = max_c m_c,  l = sum_c l_c e^(m_c - m),  out = sum_c acc_c e^(m_c - m) / l,  lse = m + ln l.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "checks.h"
#include "dispatch.h"
#include "kernel_args.h"
#include "layout.h"
#include "problem.h"

namespace simplicial_attn {
namespace cpu {
namespace {

constexpr int64_t kMaxKTile = 32;
constexpr int64_t kMaxJTile = 128;
// Work items a decoding call should have at least, and the fewest j positions per part.
constexpr int64_t kMinItems = 16;
constexpr int64_t kMinPart = 64;
// Query rows per work item (a prompt chunk's rows share their key tiles).
constexpr int64_t kRowBlock = 16;

void check_cache(const at::Tensor& c, const char* name, const at::Tensor& q, int64_t slots, int64_t Hkv) {
  TORCH_CHECK(c.dim() == 4, name, " must have rank 4 [B, C, Hkv, D], got rank ", c.dim());
  TORCH_CHECK(c.device() == q.device(), name, " must be on ", q.device(), " like q, but is on ", c.device());
  TORCH_CHECK(c.scalar_type() == q.scalar_type(), name, " must have dtype ", q.scalar_type(), " like q, got ",
              c.scalar_type());
  TORCH_CHECK(c.sizes() == at::IntArrayRef({q.size(0), slots, Hkv, q.size(3)}), name, " must have shape ",
              at::IntArrayRef({q.size(0), slots, Hkv, q.size(3)}), ", got ", c.sizes());
}

// A ring of C slots serves window w for Nq new rows when it holds w + Nq - 1 positions, or while
// the sequence has not wrapped around it (L + Nq <= C: a linear cache).
void check_ring(const char* name, int64_t C, int64_t w, int64_t Nq, const int32_t* lens, int64_t B) {
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(C >= w + Nq - 1 || lens[b] + Nq <= C, name, " has ", C, " slots: too few for a window of ", w, " and ",
                Nq, " new tokens at cache_seqlens[", b, "] = ", lens[b], " (needs ", w + Nq - 1,
                ", or a linear cache of ", lens[b] + Nq, ")");
  }
}

template <typename T, typename S>
std::tuple<at::Tensor, at::Tensor> run_decode(const at::Tensor& q, const at::Tensor& k1c, const at::Tensor& k2c,
                                              const at::Tensor& v1c, const at::Tensor& v2c, const Problem& p) {
  const KernelSet<T>& ks = kernels_for<T>();
  const int64_t B = q.size(0), Nq = q.size(1), Hq = q.size(2), Hkv = k1c.size(2), D = q.size(3);
  const int32_t* lens = p.cache_seqlens.data_ptr<int32_t>();
  int64_t longest = 0;  // positions up to the last new row of the longest sequence
  for (int64_t b = 0; b < B; ++b) longest = lens[b] + Nq > longest ? lens[b] + Nq : longest;
  // As in attention.cpp: bands clipped to the positions there are, the wider one first (a
  // determinant changes sign).
  const simplicial_attn::Band c1 = p.band1.clipped(longest), c2 = p.band2.clipped(longest);
  const bool swapped = c2.width() > c1.width();
  const at::Tensor &k1 = swapped ? k2c : k1c, &k2 = swapped ? k1c : k2c;
  const at::Tensor &v1 = swapped ? v2c : v1c, &v2 = swapped ? v1c : v2c;
  const Band b1{swapped ? c2.left : c1.left, 0}, b2{swapped ? c1.left : c2.left, 0};
  const int64_t w1 = b1.width(), w2 = b2.width();
  const bool det = p.logits == Logits::kDeterminant;

  DecodeArgs<T> a;
  Geometry& g = a.g;
  g.B = B;
  g.N = Nq;
  g.Hq = Hq;
  g.Hkv = Hkv;
  g.D = D;
  g.DP = round_up(D, ks.vector_width);
  g.longest = longest;
  g.b1 = b1;
  g.b2 = b2;
  g.KT = w2 < kMaxKTile ? w2 : kMaxKTile;
  g.JT = round_up(w1 < kMaxJTile ? w1 : kMaxJTile, ks.vector_width);
  g.det = det;
  a.scale = static_cast<T>(swapped && det ? -p.scale : p.scale);
  a.Nq = Nq;
  a.C1 = k1.size(1);
  a.C2 = k2.size(1);
  a.TB = Nq < kRowBlock ? Nq : kRowBlock;
  // Parts of each block's j range: enough items for the threads, parts of at least kMinPart
  // positions. A function of the problem only, so results do not depend on the thread count.
  const int64_t blocks = B * Hkv * ((Nq + a.TB - 1) / a.TB);
  const int64_t most = (a.TB + w1 - 1 + kMinPart - 1) / kMinPart;
  const int64_t want = (kMinItems + blocks - 1) / blocks;
  a.splits = want < most ? want : most;
  a.cache_seqlens = lens;
  a.q = make_input<T, S>(q, g.DP);
  a.k1 = make_input<T, S>(k1, g.DP);
  a.v1 = make_input<T, S>(v1, g.DP);
  a.k2 = make_input<T, S>(k2, g.DP);
  a.v2 = make_input<T, S>(v2, g.DP);
  const auto opts = q.options().dtype(c10::CppTypeToScalarType<T>::value);
  const at::Tensor part_ml = at::empty({B, Hq, Nq, a.splits, 2}, opts);
  const at::Tensor part_acc = at::empty({B, Hq, Nq, a.splits, g.DP}, opts);
  a.part_ml = part_ml.data_ptr<T>();
  a.part_acc = part_acc.data_ptr<T>();
  at::parallel_for(0, a.items(), 1, [&](int64_t begin, int64_t end) { ks.decode(a, begin, end); });

  const at::Tensor out = at::empty(q.sizes(), q.options());
  const at::Tensor lse = at::empty({B, Hq, Nq}, opts);
  const Output<T> o = make_output<T, S>(out, g.DP);
  T* lse_p = lse.data_ptr<T>();
  const int64_t splits = a.splits, DP = g.DP;
  at::parallel_for(0, B * Hq * Nq, 64, [&](int64_t begin, int64_t end) {
    std::vector<T> row(DP);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t t = r % Nq, h = r / Nq % Hq, b = r / (Nq * Hq);
      const T* ml = a.part_ml + r * splits * 2;
      const T* acc = a.part_acc + r * splits * DP;
      T m = -std::numeric_limits<T>::infinity();
      for (int64_t c = 0; c < splits; ++c) m = ml[2 * c] > m ? ml[2 * c] : m;  // a NaN part reaches l below
      T l = 0;
      for (int64_t d = 0; d < DP; ++d) row[d] = 0;
      for (int64_t c = 0; c < splits; ++c) {
        if (ml[2 * c + 1] == T(0)) continue;  // a part with no pair of this row
        const T f = std::exp(ml[2 * c] - m);
        l += f * ml[2 * c + 1];
        for (int64_t d = 0; d < DP; ++d) row[d] += f * acc[c * DP + d];
      }
      for (int64_t d = 0; d < DP; ++d) row[d] /= l;
      lse_p[r] = m + std::log(l);
      if (o.direct != nullptr) {
        T* dst = o.direct + b * o.sb + t * o.sn + h * o.sh;
        for (int64_t d = 0; d < DP; ++d) dst[d] = row[d];
      } else {
        o.scatter(o, D, DP, b, h, t, t + 1, row.data());
      }
    }
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> fused_decode_op(const at::Tensor& q, const at::Tensor& k1_cache,
                                                   const at::Tensor& k2_cache, const at::Tensor& v1_cache,
                                                   const at::Tensor& v2_cache, const at::Tensor& cache_seqlens,
                                                   int64_t left1, int64_t right1, int64_t left2, int64_t right2,
                                                   double scale, c10::string_view logits) {
  TORCH_CHECK(q.dim() == 4, "q must have rank 4 [B, Nq, Hq, D], got rank ", q.dim());
  check_dtype(q);
  TORCH_CHECK(k1_cache.dim() == 4, "k1_cache must have rank 4 [B, C1, Hkv, D], got rank ", k1_cache.dim());
  TORCH_CHECK(k2_cache.dim() == 4, "k2_cache must have rank 4 [B, C2, Hkv, D], got rank ", k2_cache.dim());
  const int64_t Hkv = k1_cache.size(2), C1 = k1_cache.size(1), C2 = k2_cache.size(1);
  check_cache(k1_cache, "k1_cache", q, C1, Hkv);
  check_cache(v1_cache, "v1_cache", q, C1, Hkv);
  check_cache(k2_cache, "k2_cache", q, C2, Hkv);
  check_cache(v2_cache, "v2_cache", q, C2, Hkv);
  TORCH_CHECK(Hkv >= 1 && q.size(2) % Hkv == 0, "Hq (", q.size(2), ") must be a multiple of Hkv (", Hkv, ")");
  TORCH_CHECK(q.size(3) >= 1 && q.size(3) <= 256, "head dim D must be in 1..256, got ", q.size(3));
  const Problem p = make_decode_problem(q, cache_seqlens, left1, right1, left2, right2, scale, logits);
  const int64_t B = q.size(0), Nq = q.size(1);
  if (B == 0 || Nq == 0) {
    return {at::empty(q.sizes(), q.options()),
            at::empty({B, q.size(2), Nq}, q.options().dtype(compute_dtype(q.scalar_type())))};
  }
  TORCH_CHECK(C1 >= 1 && C2 >= 1, "the caches need at least one slot, got C1 = ", C1, ", C2 = ", C2);
  const int32_t* lens = p.cache_seqlens.data_ptr<int32_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(lens[b] >= 0, "cache_seqlens must be >= 0, got cache_seqlens[", b, "] = ", lens[b]);
  }
  check_ring("k1_cache", C1, p.band1.width(), Nq, lens, B);
  check_ring("k2_cache", C2, p.band2.width(), Nq, lens, B);
  return with_types(q.scalar_type(), [&]<typename T, typename S>() {
    return run_decode<T, S>(q, k1_cache, k2_cache, v1_cache, v2_cache, p);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(simplicial_attn, CPU, m) { m.impl("fused_decode", &fused_decode_op); }

}  // namespace cpu
}  // namespace simplicial_attn

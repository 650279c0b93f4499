// Moving tensors between the user's layout [B, N, H, D] (any strides, dtype S: float, double,
// bfloat16 or half) and the kernels' packed layouts (kernel_args.h; compute type T), plus the
// backward's Delta and the fixed-order sum of its key/value partials.
//
// All transfers of one direction run as ONE parallel region: every parallel region ends in a
// barrier that waits for the slowest thread, and on a shared machine a descheduled thread costs
// a whole time slice there. Packing with a dozen separate ATen copies measured 150 ms of a
// 360 ms backward on the 2-core CI machine while other jobs ran; one region costs one wait.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "kernel_args.h"

namespace simplicial_attn {
namespace cpu {

// A [B, N, H, D] tensor by pointer and element strides.
template <typename S>
struct UserView {
  S* p;
  int64_t sb, sn, sh, sd, H;
  explicit UserView(const at::Tensor& t)
      : p(t.data_ptr<S>()), sb(t.stride(0)), sn(t.stride(1)), sh(t.stride(2)), sd(t.stride(3)), H(t.size(2)) {}
  S* row(int64_t b, int64_t n, int64_t h) const { return p + b * sb + n * sn + h * sh; }
};

template <typename T, typename S>
class Transfers {
 public:
  explicit Transfers(const Geometry& g) : g_(g) {}

  // x -> rows [B, H, N, DP], zero-padded in D.
  void pack_rows(const at::Tensor& x, T* rows) { jobs_.push_back(Job{Kind::kPackRows, UserView<S>(x), rows}); }
  // x -> cols [B, H, D, NP], zero-padded past N.
  void pack_cols(const at::Tensor& x, T* cols) { jobs_.push_back(Job{Kind::kPackCols, UserView<S>(x), cols}); }
  // dots[b, h, n] = sum_d x[b, n, h, d] * y[b, n, h, d], accumulated in T.
  void row_dots(const at::Tensor& x, const at::Tensor& y, T* dots) {
    Job j{Kind::kRowDots, UserView<S>(x), dots};
    j.other = UserView<S>(y);
    jobs_.push_back(j);
  }
  // rows [B, H, N, DP] -> x (first D of each row).
  void unpack_rows(const T* rows, const at::Tensor& x) {
    jobs_.push_back(Job{Kind::kUnpackRows, UserView<S>(x), const_cast<T*>(rows)});
  }
  // x[b, n, h] = sum over the backward's query blocks whose window (w) covers n, in block order,
  // of their scratch row for n (scratch [B * H * blocks, R, DP]; see BwdArgs).
  void reduce_rows(const T* scratch, int64_t w, int64_t BQ, int64_t R, const at::Tensor& x) {
    Job j{Kind::kReduceRows, UserView<S>(x), const_cast<T*>(scratch)};
    j.w = w;
    j.BQ = BQ;
    j.R = R;
    jobs_.push_back(j);
  }

  void run() const {
    const int64_t chunks = (g_.N + kChunk - 1) / kChunk;
    int64_t total = 0;
    for (const Job& j : jobs_) total += g_.B * j.view.H * chunks;
    at::parallel_for(0, total, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> acc(kChunk * g_.DP);
      for (int64_t u = begin; u < end; ++u) {
        int64_t rest = u;
        size_t k = 0;
        while (rest >= g_.B * jobs_[k].view.H * chunks) rest -= g_.B * jobs_[k++].view.H * chunks;
        const Job& j = jobs_[k];
        const int64_t bh = rest / chunks, n0 = (rest % chunks) * kChunk;
        const int64_t n1 = n0 + kChunk < g_.N ? n0 + kChunk : g_.N;
        run_unit(j, bh / j.view.H, bh % j.view.H, n0, n1, acc.data());
      }
    });
  }

 private:
  static constexpr int64_t kChunk = 32;  // positions per unit of work
  enum class Kind { kPackRows, kPackCols, kRowDots, kUnpackRows, kReduceRows };
  struct Job {
    Kind kind;
    UserView<S> view;
    T* packed;
    UserView<S> other = view;  // the second operand of kRowDots
    int64_t w = 0, BQ = 0, R = 0;
  };

  void run_unit(const Job& j, int64_t b, int64_t h, int64_t n0, int64_t n1, T* acc) const {
    const int64_t N = g_.N, D = g_.D, DP = g_.DP, H = j.view.H;
    const int64_t sd = j.view.sd;
    switch (j.kind) {
      case Kind::kPackRows:
        for (int64_t n = n0; n < n1; ++n) {
          const S* s = j.view.row(b, n, h);
          T* r = j.packed + ((b * H + h) * N + n) * DP;
          for (int64_t d = 0; d < D; ++d) r[d] = static_cast<T>(s[d * sd]);
          for (int64_t d = D; d < DP; ++d) r[d] = T(0);
        }
        break;
      case Kind::kPackCols:
        for (int64_t d = 0; d < D; ++d) {
          T* c = j.packed + ((b * H + h) * D + d) * g_.NP;
          for (int64_t n = n0; n < n1; ++n) c[n] = static_cast<T>(j.view.row(b, n, h)[d * sd]);
          if (n1 == N) {
            for (int64_t n = N; n < g_.NP; ++n) c[n] = T(0);
          }
        }
        break;
      case Kind::kRowDots:
        for (int64_t n = n0; n < n1; ++n) {
          const S* x = j.view.row(b, n, h);
          const S* y = j.other.row(b, n, h);
          T s = 0;
          for (int64_t d = 0; d < D; ++d) s += static_cast<T>(x[d * sd]) * static_cast<T>(y[d * j.other.sd]);
          j.packed[(b * H + h) * N + n] = s;
        }
        break;
      case Kind::kUnpackRows:
        for (int64_t n = n0; n < n1; ++n) {
          const T* r = j.packed + ((b * H + h) * N + n) * DP;
          S* x = j.view.row(b, n, h);
          for (int64_t d = 0; d < D; ++d) x[d * sd] = static_cast<S>(r[d]);
        }
        break;
      case Kind::kReduceRows: {
        for (int64_t x = 0; x < (n1 - n0) * DP; ++x) acc[x] = T(0);
        const int64_t nblk = (N + j.BQ - 1) / j.BQ;
        for (int64_t blk = 0; blk < nblk; ++blk) {
          const int64_t i0 = blk * j.BQ, i1 = i0 + j.BQ < N ? i0 + j.BQ : N;
          const int64_t lo = window(i0, j.w, g_.causal, N).lo, hi = window(i1 - 1, j.w, g_.causal, N).hi;
          const int64_t a = lo > n0 ? lo : n0, e = hi < n1 ? hi : n1;
          if (a >= e) continue;
          const T* src = j.packed + (((b * H + h) * nblk + blk) * j.R + (a - lo)) * DP;
          T* o = acc + (a - n0) * DP;
          for (int64_t x = 0; x < (e - a) * DP; ++x) o[x] += src[x];
        }
        for (int64_t n = n0; n < n1; ++n) {
          S* x = j.view.row(b, n, h);
          for (int64_t d = 0; d < D; ++d) x[d * sd] = static_cast<S>(acc[(n - n0) * DP + d]);
        }
        break;
      }
    }
  }

  Geometry g_;
  std::vector<Job> jobs_;
};

}  // namespace cpu
}  // namespace simplicial_attn

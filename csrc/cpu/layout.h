// How the kernels see the user's tensors (kernel_args.h): in place where the layout allows it,
// else through gather/scatter functions that convert rows between the user's dtype S and
// strides and the compute type T; the schedule of work items over the sequences; and the
// backward's last phase, the fixed-order sum of the halo rows into the key/value gradients.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "kernel_args.h"

namespace simplicial_attn {
namespace cpu {

// Rows [n0, n1) of (b, h) of the user's tensor, converted to T and zero-padded to DP.
template <typename T, typename S>
void gather_rows(const Input<T>& in, int64_t D, int64_t DP, int64_t b, int64_t h, int64_t n0, int64_t n1, T* dst) {
  const S* base = static_cast<const S*>(in.user) + b * in.usb + h * in.ush;
  for (int64_t n = n0; n < n1; ++n, dst += DP) {
    const S* src = base + n * in.usn;
    for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<T>(src[d * in.usd]);
    for (int64_t d = D; d < DP; ++d) dst[d] = T(0);
  }
}

// The first D values of DP-value rows into rows [n0, n1) of (b, h) of the user's tensor.
template <typename T, typename S>
void scatter_rows(const Output<T>& out, int64_t D, int64_t DP, int64_t b, int64_t h, int64_t n0, int64_t n1,
                  const T* src) {
  S* base = static_cast<S*>(out.user) + b * out.usb + h * out.ush;
  for (int64_t n = n0; n < n1; ++n, src += DP) {
    S* dst = base + n * out.usn;
    for (int64_t d = 0; d < D; ++d) dst[d * out.usd] = static_cast<S>(src[d]);
  }
}

// A [B, N, H, D] tensor whose rows the kernels can use as they are: compute dtype, unit stride
// in D, and D already a whole number of vectors.
template <typename T, typename S>
bool usable_in_place(const at::Tensor& x, int64_t DP) {
  return std::is_same_v<T, S> && x.stride(3) == 1 && x.size(3) == DP;
}

template <typename T, typename S>
Input<T> make_input(const at::Tensor& x, int64_t DP) {
  Input<T> in{};
  in.user = x.data_ptr<S>();
  in.usb = x.stride(0);
  in.usn = x.stride(1);
  in.ush = x.stride(2);
  in.usd = x.stride(3);
  in.gather = &gather_rows<T, S>;
  if (usable_in_place<T, S>(x, DP)) {
    in.direct = reinterpret_cast<const T*>(x.data_ptr<S>());
    in.sb = x.stride(0);
    in.sn = x.stride(1);
    in.sh = x.stride(2);
  }
  return in;
}

template <typename T, typename S>
Output<T> make_output(const at::Tensor& x, int64_t DP) {
  Output<T> out{};
  out.user = x.data_ptr<S>();
  out.usb = x.stride(0);
  out.usn = x.stride(1);
  out.ush = x.stride(2);
  out.usd = x.stride(3);
  out.scatter = &scatter_rows<T, S>;
  if (usable_in_place<T, S>(x, DP)) {
    out.direct = reinterpret_cast<T*>(x.data_ptr<S>());
    out.sb = x.stride(0);
    out.sn = x.stride(1);
    out.sh = x.stride(2);
  }
  return out;
}

// The sequences of a call and their work items (kernel_args.h: Schedule), owning the tables.
class SequenceTable {
 public:
  // A batched call: sequence b is rows [0, N) of batch b.
  static SequenceTable batched(int64_t B, int64_t N) {
    SequenceTable t;
    for (int64_t b = 0; b < B; ++b) {
      t.batch_.push_back(b);
      t.seq_.push_back({0, N});
    }
    return t;
  }

  // Packed sequences (CONTRACT §6): sequence s is rows [cu[s], cu[s + 1]) of batch 0 (cu checked).
  static SequenceTable packed(const int32_t* cu, int64_t S) {
    SequenceTable t;
    for (int64_t s = 0; s < S; ++s) {
      t.batch_.push_back(0);
      t.seq_.push_back({cu[s], cu[s + 1]});
    }
    return t;
  }

  // Numbers the work items for blocks of BQ rows and `Hkv` kv heads per sequence.
  void plan(int64_t BQ, int64_t Hkv) {
    BQ_ = BQ;
    first_item_.assign(1, 0);
    halo_first_.clear();
    slots_ = 0;
    for (const Range& r : seq_) {
      const int64_t items = Hkv * ((r.size() + BQ - 1) / BQ);
      halo_first_.push_back(items > Hkv ? slots_ : -1);
      if (items > Hkv) slots_ += items;
      first_item_.push_back(first_item_.back() + items);
    }
  }

  // Work items blocks of BQ rows would give (Hkv kv heads per block).
  int64_t items_for(int64_t BQ, int64_t Hkv) const {
    int64_t n = 0;
    for (const Range& r : seq_) n += Hkv * ((r.size() + BQ - 1) / BQ);
    return n;
  }

  int64_t longest() const {
    int64_t n = 0;
    for (const Range& r : seq_) n = r.size() > n ? r.size() : n;
    return n;
  }

  int64_t halo_slots() const { return slots_; }

  Schedule schedule() const {
    return Schedule{
        static_cast<int64_t>(seq_.size()), batch_.data(), seq_.data(), first_item_.data(), halo_first_.data(), BQ_};
  }

 private:
  std::vector<int64_t> batch_;
  std::vector<Range> seq_;
  std::vector<int64_t> first_item_, halo_first_;
  int64_t BQ_ = 0, slots_ = 0;
};

// One key/value gradient of the backward: its accumulator, the halo slots of its band, and the
// user's tensor it ends in (the accumulator itself when `in_place`).
template <typename T>
struct HaloJob {
  Accum<T> acc;
  const T* halo;
  Band band;
  Output<T> out;
  bool in_place;
};

// Phase 2 of the backward: for every row, its accumulator row (the owning block's own
// contributions) plus the halo rows of the other blocks whose window reached it, in block
// order, written to the user's gradient. One parallel region for all the jobs: every region
// ends in a barrier that waits for the slowest thread, and on a shared machine a descheduled
// thread costs a whole time slice there.
template <typename T>
void sum_halos(const Geometry& g, const Schedule& sc, const std::vector<HaloJob<T>>& jobs) {
  constexpr int64_t kChunk = 32;  // rows per unit of work
  std::vector<int64_t> first_unit(sc.nseq + 1, 0);
  for (int64_t s = 0; s < sc.nseq; ++s) {
    first_unit[s + 1] = first_unit[s] + g.Hkv * ((sc.seq[s].size() + kChunk - 1) / kChunk);
  }
  const int64_t per_job = first_unit[sc.nseq];
  const int64_t DP = g.DP;
  at::parallel_for(0, per_job * static_cast<int64_t>(jobs.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<T> row(DP);
    for (int64_t u = begin; u < end; ++u) {
      const HaloJob<T>& job = jobs[u / per_job];
      const int64_t unit = u % per_job;
      const int64_t s = std::upper_bound(first_unit.begin(), first_unit.end(), unit) - first_unit.begin() - 1;
      const Range seq = sc.seq[s];
      const int64_t b = sc.batch[s];
      const int64_t chunks = (seq.size() + kChunk - 1) / kChunk;
      const int64_t h = (unit - first_unit[s]) / chunks, c = (unit - first_unit[s]) % chunks;
      const int64_t nblk = (sc.first_item[s + 1] - sc.first_item[s]) / g.Hkv;
      const int64_t width = job.band.L + job.band.R;
      const int64_t n1 = seq.lo + (c + 1) * kChunk < seq.hi ? seq.lo + (c + 1) * kChunk : seq.hi;
      for (int64_t n = seq.lo + c * kChunk; n < n1; ++n) {
        T* acc = job.acc.p + b * job.acc.sb + n * job.acc.sn + h * job.acc.sh;
        // The blocks whose band can reach row n: up to R rows before it own it, up to L after.
        const int64_t owner = (n - seq.lo) / sc.BQ;
        const int64_t first = owner - (job.band.R + sc.BQ - 1) / sc.BQ, last = owner + (job.band.L + sc.BQ - 1) / sc.BQ;
        bool touched = false;
        for (int64_t d = 0; d < DP; ++d) row[d] = acc[d];
        for (int64_t blk = first < 0 ? 0 : first; blk <= last && blk < nblk && sc.halo_first[s] >= 0; ++blk) {
          const Range own{seq.lo + blk * sc.BQ,
                          seq.lo + (blk + 1) * sc.BQ < seq.hi ? seq.lo + (blk + 1) * sc.BQ : seq.hi};
          const Range reach = window(own.lo, own.hi, job.band, seq);
          if (blk == owner || n < reach.lo || n >= reach.hi) continue;
          const int64_t slot_row = n < own.lo ? n - (own.lo - job.band.L) : job.band.L + n - own.hi;
          const T* src = job.halo + ((sc.halo_first[s] + h * nblk + blk) * width + slot_row) * DP;
          for (int64_t d = 0; d < DP; ++d) row[d] += src[d];
          touched = true;
        }
        if (job.in_place) {
          if (touched) {
            for (int64_t d = 0; d < DP; ++d) acc[d] = row[d];
          }
        } else {
          job.out.scatter(job.out, g.D, DP, b, h, n, n + 1, row.data());
        }
      }
    }
  });
}

}  // namespace cpu
}  // namespace simplicial_attn

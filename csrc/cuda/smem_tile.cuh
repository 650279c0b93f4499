// Shared-memory tiles and their global -> shared loaders (cp.async or element-wise), the budget
// every tensor-core kernel's tiles fit in, and the carver that lays them out.
#pragma once

#include "addressing.cuh"
#include "common.cuh"
#include "mask.cuh"
#include "seqlen.cuh"

namespace simplicial_attn::cuda {

// Shared memory a block may use on every target: the opt-in maximum of sm_86 (99 KiB). Each
// kernel config static_asserts it stays below, so one config serves sm_80, sm_86 and sm_90.
constexpr int kSmemLimit = 101376;

// A row-major tile of 16-bit elements in shared memory: `rows` x DP, row stride kLd = DP + 8.
// The 8 extra elements (16 bytes) shift consecutive rows by 4 banks, so the 8 rows one ldmatrix
// matrix reads fall on 8 distinct 4-bank groups (no bank conflicts). Columns [DP, kLd) are never
// read or written.
template <class T, int DP>
struct Tile {
  static constexpr int kLd = DP + 8;
  static constexpr int row_bytes() { return kLd * static_cast<int>(sizeof(T)); }
  T* base;
  SA_DEV T* row(int r) const { return base + r * kLd; }
};

// Carves consecutive 16-byte aligned buffers out of dynamic shared memory. The same sequence of
// take() calls on the host (with base == nullptr) gives the byte count the launch asks for.
struct SmemCarver {
  char* base;
  int offset = 0;
  template <class V>
  SA_DEV V* take(int count) {
    V* p = reinterpret_cast<V*>(base + offset);
    offset += (count * static_cast<int>(sizeof(V)) + 15) / 16 * 16;
    return p;
  }
};

// Fills rows [0, nrows) of `dst`: row r is a copy of the global row `src(r)` (a `const T*`, or
// nullptr for a row outside the tensor, which becomes zeros), columns >= D are zeros.
//   vec == true: 16-byte cp.async (needs D % 8 == 0 and 16-byte aligned rows, checked by the
//   host); the caller commits a group and waits for it before a cta_sync.
//   vec == false: element loads and shared stores, visible to other threads after a cta_sync.
// `any_row` is some valid, 16-byte aligned global address, passed as the (unread) source of a
// zero-filling cp.async.
template <int kThreads, class T, int DP, class RowSrc>
SA_DEV void load_tile(const Tile<T, DP>& dst, int nrows, int D, bool vec, const void* any_row, const RowSrc& src) {
  SA_PATH(vec, "load: cp.async 16 B");
  SA_PATH(!vec, "load: scalar");
  if (vec) {
    constexpr int kChunks = DP / 8;  // 16-byte chunks per row
    for (int idx = thread_id(); idx < nrows * kChunks; idx += kThreads) {
      const int r = idx / kChunks, c = (idx % kChunks) * 8;
      const T* row = src(r);
      const bool valid = row != nullptr && c < D;
      SA_PATH(row == nullptr, "load: zero row");
      SA_PATH(row != nullptr && c >= D, "load: zero columns");
      cp_async_16(dst.row(r) + c, valid ? static_cast<const void*>(row + c) : any_row, valid);
    }
  } else {
    for (int idx = thread_id(); idx < nrows * DP; idx += kThreads) {
      const int r = idx / DP, c = idx % DP;
      const T* row = src(r);
      SA_PATH(row == nullptr, "load: zero row");
      SA_PATH(row != nullptr && c >= D, "load: zero columns");
      const T v = (row != nullptr && c < D) ? gload(row + c) : Elem<T>::from_float(0.f);
      sstore(dst.row(r) + c, v);
    }
  }
}

// Rows base + r (r < rows) of a pair of [B, N, H, D] tensors (k and v, or q and dout) at head h of
// sequence `seq` into two tiles (load_tile; the caller commits the cp.async group); positions
// outside `valid` become zero rows.
template <int kThreads, class T, int DP>
SA_DEV void load_row_pair(const Tile<T, DP>& da, const Tile<T, DP>& db, const TensorRef& a, const TensorRef& b,
                          const SeqSpan& seq, int h, int base, int rows, Span valid, int D, bool vec) {
  auto src = [=](const TensorRef& t) {
    return [=](int r) -> const T* {
      const int pos = base + r;
      return (pos >= valid.lo && pos <= valid.hi) ? row_ptr<T>(t, seq, pos, h) : nullptr;
    };
  };
  load_tile<kThreads>(da, rows, D, vec, a.ptr, src(a));
  load_tile<kThreads>(db, rows, D, vec, b.ptr, src(b));
}

}  // namespace simplicial_attn::cuda

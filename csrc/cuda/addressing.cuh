// Row addressing: where row (position, head) of a [B, N, H, D] tensor with unit stride on D lies.
// Three layouts reach the kernels: batched (batch element b, position n), packed (position `pos`
// of a sequence, seqlen.cuh) and the decode caches' ring (position p in slot p % C). Offsets are
// 64-bit: B * N * H * D may exceed 2^31.
#pragma once

#include "common.cuh"
#include "params.h"
#include "seqlen.cuh"

namespace simplicial_attn::cuda {

// Row (b, position n, head h).
template <class T>
SA_DEV const T* row_ptr(const TensorRef& t, int b, int n, int h) {
  return static_cast<const T*>(t.ptr) + (b * t.sb + n * t.sn + h * t.sh);
}
template <class T>
SA_DEV T* row_ptr(const MutTensorRef& t, int b, int n, int h) {
  return static_cast<T*>(t.ptr) + (b * t.sb + n * t.sn + h * t.sh);
}
// The row of position `pos` of sequence `s`, head h (batched or packed).
template <class T>
SA_DEV const T* row_ptr(const TensorRef& t, const SeqSpan& s, int pos, int h) {
  return row_ptr<T>(t, s.batch, s.row0 + pos, h);
}
template <class T>
SA_DEV T* row_ptr(const MutTensorRef& t, const SeqSpan& s, int pos, int h) {
  return row_ptr<T>(t, s.batch, s.row0 + pos, h);
}

// A key and its value (k1 / v1 or k2 / v2) of kv head g, by position, for the loops that read
// one row at a time (simt_kernels.cuh, decode_kernel.cuh):
//   SeqKeys    positions of a sequence (batched or packed)
//   RingKeys   positions of batch element b in a ring cache of `slots` slots: p in slot p % slots
template <class T>
struct SeqKeys {
  TensorRef k, v;
  SeqSpan seq;
  int g;
  SA_DEV const T* key(int pos) const { return row_ptr<T>(k, seq, pos, g); }
  SA_DEV const T* value(int pos) const { return row_ptr<T>(v, seq, pos, g); }
};

template <class T>
struct RingKeys {
  TensorRef k, v;
  int b, g, slots;
  SA_DEV const T* key(int pos) const { return row_ptr<T>(k, b, pos % slots, g); }
  SA_DEV const T* value(int pos) const { return row_ptr<T>(v, b, pos % slots, g); }
};

}  // namespace simplicial_attn::cuda

// Windows: the bands of ProblemDesc (params.h) clipped to a sequence of `len` positions. Query
// position i attends to k1/v1 positions j in [i - band1.left, i + band1.right] and k2/v2 positions
// k in [i - band2.left, i + band2.right] of its own sequence; the tensor-core kernels loop over the
// offsets u = i - k and mask each (j, k) pair with these spans.
#pragma once

#include "common.cuh"
#include "params.h"

namespace simplicial_attn::cuda {

// Positions [lo, hi], inclusive (empty when lo > hi).
struct Span {
  int lo, hi;
};

// The window of position i: the band around it, clipped to the sequence.
SA_DEV Span band_span(const Band& band, int i, int len) {
  return Span{imax(0, i - band.left), imin(len - 1, i + band.right)};
}

// The union of the windows of positions [first, last] (a tile's rows).
SA_DEV Span band_union(const Band& band, int first, int last, int len) {
  return Span{imax(0, first - band.left), imin(len - 1, last + band.right)};
}

// The positions whose window holds some position of [first, last]: i - left <= x <= i + right,
// so the band with its reaches exchanged.
SA_DEV Band band_reverse(const Band& band) { return Band{band.right, band.left}; }

// Offsets u = i - k of the k2 band (k in [i - left, i + right]) that some query position
// i in [first, last] has with a k in [0, len).
SA_DEV Span offset_span(const Band& band2, int first, int last, int len) {
  return Span{imax(-band2.right, first - (len - 1)), imin(band2.left, last)};
}

}  // namespace simplicial_attn::cuda

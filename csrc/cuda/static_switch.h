// Compile-time dispatch on runtime values, in one place (the flash-attention idiom): the body is
// a lambda that sees the chosen value as a constexpr. Only the head dim is a template parameter;
// causal mode, windows and GQA ratio are runtime arguments (build time matters).
#pragma once

// The padded head dim of the instantiated kernels: 64, 128 or 256. Smaller head dims run in the
// 64 kernel with zero-filled columns (loads and stores are masked to d < D).
#define HEADDIM_SWITCH(D, CONST_NAME, ...)   \
  [&] {                                      \
    if ((D) <= 64) {                         \
      constexpr static int CONST_NAME = 64;  \
      return __VA_ARGS__();                  \
    } else if ((D) <= 128) {                 \
      constexpr static int CONST_NAME = 128; \
      return __VA_ARGS__();                  \
    } else {                                 \
      constexpr static int CONST_NAME = 256; \
      return __VA_ARGS__();                  \
    }                                        \
  }()

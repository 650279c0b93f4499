// SA_TARGET_BEGIN(isa) / SA_TARGET_END: compile the functions between them for an extra
// instruction set without changing the extension's compile flags (-march is not allowed: the
// wheel must run on any x86-64). attention.cpp calls them only after checking the CPU at run
// time, as ATen's own per-capability kernels do.
//
// SA_TARGET_SUPPORTED is 0 where this is not available (non-x86 targets, MSVC); the ISA files
// then compile to a stub that reports the flavour as absent.
#pragma once

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define SA_TARGET_SUPPORTED 1
#else
#define SA_TARGET_SUPPORTED 0
#endif

#define SA_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define SA_TARGET_BEGIN(isa) SA_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define SA_TARGET_END SA_PRAGMA(clang attribute pop)
#else
#define SA_TARGET_BEGIN(isa) SA_PRAGMA(GCC push_options) SA_PRAGMA(GCC target(isa))
#define SA_TARGET_END SA_PRAGMA(GCC pop_options)
#endif

// edgesplit/core/kernels.hpp - element-wise and row-wise kernels, written once over xsimd batches.
//
// Every kernel here has two drivers: the SIMD one (full `xsimd::batch<T>` strides, then a scalar
// tail) and a plain scalar reference with the same signature. The reference is what tests compare
// the SIMD path against, on every length that exercises the tail; it is never used on a hot path.
// The same source builds for AVX2 here and NEON on the boards: xsimd picks the widest instruction
// set the compiler flags allow (see `simd_arch_name()`).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include "edgesplit/core/dtype.hpp"

/// Element-wise kernels written once over xsimd batches, with scalar references beside them.
namespace edgesplit::kernels {

/// The widest xsimd batch of `T` the build's flags allow.
template <class T>
using batch = xsimd::batch<T>;

/// Whether the target has SIMD registers for `T` (32-bit ARM NEON has none for double): where
/// it has none, every driver below runs its scalar reference instead.
/// (xsimd 8.1 declares a placeholder double register for 32-bit NEON, so its own trait says yes.)
template <class T>
inline constexpr bool has_simd = xsimd::has_simd_register<T>::value &&
                                 !(std::is_same_v<T, double> && std::is_same_v<xsimd::default_arch, xsimd::neon>);

/// Name of the instruction set the SIMD kernels were compiled for ("avx2", "neon64", ...).
inline const char* simd_arch_name() noexcept { return xsimd::default_arch::name(); }

/// The scalar type behind `V`, whether `V` is a scalar or an xsimd batch: lets one formula serve
/// the SIMD body and the scalar tail.
template <class V>
struct scalar_of {
  using type = V;  ///< a scalar is its own scalar type
};
/// The lane type of an xsimd batch.
template <class T, class A>
struct scalar_of<xsimd::batch<T, A>> {
  using type = T;  ///< the lane type
};
/// The scalar type behind `V` (see scalar_of).
template <class V>
using scalar_of_t = typename scalar_of<V>::type;

/// `x > 0 ? a : b`, lane-wise for batches.
template <class V>
inline V select_positive(const V& x, const V& a, const V& b) {
  if constexpr (std::is_arithmetic_v<V>)
    return x > V(0) ? a : b;
  else
    return xsimd::select(x > V(scalar_of_t<V>(0)), a, b);
}

/// y[i] = f(x[i]). `f` must accept both `T` and `batch<T>`. In-place (x == y) is allowed.
template <Real T, class F>
inline void map_scalar(const T* x, T* y, std::size_t n, F f);
/// y[i] = f(x[i]) for n elements: SIMD batches, then a scalar tail.
template <Real T, class F>
inline void map(const T* x, T* y, std::size_t n, F f) {
  if constexpr (!has_simd<T>) {
    map_scalar(x, y, n, f);
  } else {
    constexpr std::size_t W = batch<T>::size;
    std::size_t i = 0;
    for (; i + W <= n; i += W) f(batch<T>::load_unaligned(x + i)).store_unaligned(y + i);
    for (; i < n; ++i) y[i] = f(x[i]);
  }
}
/// Scalar reference for `map`.
template <Real T, class F>
inline void map_scalar(const T* x, T* y, std::size_t n, F f) {
  for (std::size_t i = 0; i < n; ++i) y[i] = f(x[i]);
}

/// out[i] = f(a[i], b[i]): sums of tensors (a residual Add, gradients meeting at a fork).
/// `out` may alias either input.
template <Real T, class F>
inline void map2_scalar(const T* a, const T* b, T* out, std::size_t n, F f);
/// out[i] = f(a[i], b[i]) for n elements: SIMD batches, then a scalar tail.
template <Real T, class F>
inline void map2(const T* a, const T* b, T* out, std::size_t n, F f) {
  if constexpr (!has_simd<T>) {
    map2_scalar(a, b, out, n, f);
  } else {
    constexpr std::size_t W = batch<T>::size;
    std::size_t i = 0;
    for (; i + W <= n; i += W)
      f(batch<T>::load_unaligned(a + i), batch<T>::load_unaligned(b + i)).store_unaligned(out + i);
    for (; i < n; ++i) out[i] = f(a[i], b[i]);
  }
}
/// Scalar reference for `map2`.
template <Real T, class F>
inline void map2_scalar(const T* a, const T* b, T* out, std::size_t n, F f) {
  for (std::size_t i = 0; i < n; ++i) out[i] = f(a[i], b[i]);
}

/// out[i] = f(a[i], b[i], c[i]): the shape of every activation's backward pass
/// (input, output, upstream gradient). `out` may alias any input.
template <Real T, class F>
inline void map3_scalar(const T* a, const T* b, const T* c, T* out, std::size_t n, F f);
/// out[i] = f(a[i], b[i], c[i]) for n elements: SIMD batches, then a scalar tail.
template <Real T, class F>
inline void map3(const T* a, const T* b, const T* c, T* out, std::size_t n, F f) {
  if constexpr (!has_simd<T>) {
    map3_scalar(a, b, c, out, n, f);
  } else {
    constexpr std::size_t W = batch<T>::size;
    std::size_t i = 0;
    for (; i + W <= n; i += W)
      f(batch<T>::load_unaligned(a + i), batch<T>::load_unaligned(b + i), batch<T>::load_unaligned(c + i))
          .store_unaligned(out + i);
    for (; i < n; ++i) out[i] = f(a[i], b[i], c[i]);
  }
}
/// Scalar reference for `map3`.
template <Real T, class F>
inline void map3_scalar(const T* a, const T* b, const T* c, T* out, std::size_t n, F f) {
  for (std::size_t i = 0; i < n; ++i) out[i] = f(a[i], b[i], c[i]);
}

/// Sum of x[0..n).
template <Real T>
inline T sum_scalar(const T* x, std::size_t n) {
  T s = 0;
  for (std::size_t i = 0; i < n; ++i) s += x[i];
  return s;
}
/// Sum of n elements (SIMD partial sums, then a horizontal add and the tail).
template <Real T>
inline T sum(const T* x, std::size_t n) {
  if constexpr (!has_simd<T>) {
    return sum_scalar(x, n);
  } else {
    constexpr std::size_t W = batch<T>::size;
    batch<T> acc(T(0));
    std::size_t i = 0;
    for (; i + W <= n; i += W) acc += batch<T>::load_unaligned(x + i);
    T s = xsimd::hadd(acc);
    for (; i < n; ++i) s += x[i];
    return s;
  }
}

/// Largest of x[0..n); -inf for n == 0.
template <Real T>
inline T max_scalar(const T* x, std::size_t n) {
  T m = -std::numeric_limits<T>::infinity();
  for (std::size_t i = 0; i < n; ++i) m = std::max(m, x[i]);
  return m;
}
/// Largest of n elements.
template <Real T>
inline T max(const T* x, std::size_t n) {
  if constexpr (!has_simd<T>) {
    return max_scalar(x, n);
  } else {
    constexpr std::size_t W = batch<T>::size;
    T m = -std::numeric_limits<T>::infinity();
    std::size_t i = 0;
    if (n >= W) {
      batch<T> acc = batch<T>::load_unaligned(x);
      for (i = W; i + W <= n; i += W) acc = xsimd::max(acc, batch<T>::load_unaligned(x + i));
      alignas(64) T lanes[W];
      acc.store_aligned(lanes);
      for (T v : lanes) m = std::max(m, v);
    }
    for (; i < n; ++i) m = std::max(m, x[i]);
    return m;
  }
}

/// Row-wise softmax of a rows x cols row-major matrix, numerically stable (the row maximum is
/// subtracted before exp, so logits of any finite size give finite probabilities summing to 1).
template <Real T>
inline void softmax_rows(const T* x, T* y, std::size_t rows, std::size_t cols) {
  for (std::size_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    const T m = max(xr, cols);
    map(xr, yr, cols, [m](auto v) { return xsimd::exp(v - decltype(v)(m)); });
    const T inv = T(1) / sum(yr, cols);
    map(yr, yr, cols, [inv](auto v) { return v * decltype(v)(inv); });
  }
}
/// Scalar reference for `softmax_rows`.
template <Real T>
inline void softmax_rows_scalar(const T* x, T* y, std::size_t rows, std::size_t cols) {
  for (std::size_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    const T m = max_scalar(xr, cols);
    for (std::size_t c = 0; c < cols; ++c) yr[c] = std::exp(xr[c] - m);
    const T inv = T(1) / sum_scalar(yr, cols);
    for (std::size_t c = 0; c < cols; ++c) yr[c] *= inv;
  }
}

/// Backward of row-wise softmax: dx = y * (g - <g, y>) per row.
template <Real T>
inline void softmax_rows_backward(const T* y, const T* g, T* dx, std::size_t rows, std::size_t cols) {
  for (std::size_t r = 0; r < rows; ++r) {
    const T* yr = y + r * cols;
    const T* gr = g + r * cols;
    T dot = 0;
    for (std::size_t c = 0; c < cols; ++c) dot += yr[c] * gr[c];
    T* dr = dx + r * cols;
    map3(yr, gr, gr, dr, cols, [dot](auto yv, auto gv, auto) { return yv * (gv - decltype(yv)(dot)); });
  }
}

/// Lanes of `word_checksum`: fixed, so every instruction set gives the same value.
inline constexpr std::size_t checksum_lanes = 16;

/// Folds the per-lane sums of `word_checksum` and the word count into 64 bits. Each step
/// (xor, then multiply by an odd constant) is invertible, so a change in any one input always
/// changes the result.
inline std::uint64_t fold_checksum_lanes(const std::uint32_t* a, const std::uint32_t* b, std::size_t words) {
  std::uint64_t h = 0xcbf29ce484222325ull ^ static_cast<std::uint64_t>(words);
  for (std::size_t j = 0; j < checksum_lanes; ++j) {
    h = (h ^ a[j]) * 0x100000001b3ull;
    h = (h ^ b[j]) * 0x100000001b3ull;
  }
  return h;
}

/// The per-word mix of `word_checksum`: a bijection on 32 bits (xor-shift, multiply by an odd
/// constant, xor-shift), lane-wise for batches. Without it the sums would be linear, and changes
/// that cancel in them (the sign bits of an even number of weights flipped, as negating a layer
/// does) would go unseen; after it, two changes cancel only by coincidence.
template <class V>
inline V checksum_mix(V x) {
  x = x ^ (x >> 16);
  x = x * V(std::uint32_t{0x7feb352du});
  return x ^ (x >> 15);
}

/// Scalar reference for `word_checksum`.
inline std::uint64_t word_checksum_scalar(const void* data, std::size_t words) {
  std::uint32_t a[checksum_lanes] = {}, b[checksum_lanes] = {};
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < words; ++i) {
    std::uint32_t w;
    std::memcpy(&w, p + 4 * i, 4);
    a[i % checksum_lanes] += checksum_mix(w);
    b[i % checksum_lanes] += a[i % checksum_lanes];
  }
  return fold_checksum_lanes(a, b, words);
}

/// A 64-bit checksum of `words` 32-bit words (any bytes: a float tensor's bit patterns), for
/// telling whether memory changed since it was last read, at the cost of one pass over it.
/// Word i, mixed (checksum_mix), goes to lane i mod 16, which keeps Fletcher's two running sums
/// modulo 2^32: the first changes with any one changed word, the second with words that trade
/// places. Not a hash against adversaries: a cache check on the process's own memory (Dense's
/// packed weights).
inline std::uint64_t word_checksum(const void* data, std::size_t words) {
  using U = std::uint32_t;
  if constexpr (!has_simd<U> || checksum_lanes % batch<U>::size != 0) {
    return word_checksum_scalar(data, words);
  } else {
    constexpr std::size_t W = batch<U>::size, R = checksum_lanes / W;
    const auto* p = static_cast<const unsigned char*>(data);
    batch<U> a[R], b[R];
    for (std::size_t r = 0; r < R; ++r) a[r] = b[r] = batch<U>(U(0));
    std::size_t i = 0;
    for (; i + checksum_lanes <= words; i += checksum_lanes)
      for (std::size_t r = 0; r < R; ++r) {
        // Unaligned vector loads of the bytes (the intrinsics may alias any type).
        a[r] += checksum_mix(batch<U>::load_unaligned(reinterpret_cast<const U*>(p + 4 * (i + r * W))));
        b[r] += a[r];
      }
    alignas(64) U al[checksum_lanes], bl[checksum_lanes];
    for (std::size_t r = 0; r < R; ++r) {
      a[r].store_aligned(al + r * W);
      b[r].store_aligned(bl + r * W);
    }
    for (std::size_t j = 0; i < words; ++i, ++j) {  // the tail: fewer than 16 words, lanes 0..
      U w;
      std::memcpy(&w, p + 4 * i, 4);
      al[j] += checksum_mix(w);
      bl[j] += al[j];
    }
    return fold_checksum_lanes(al, bl, words);
  }
}

}  // namespace edgesplit::kernels

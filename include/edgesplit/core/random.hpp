// edgesplit/core/random.hpp - seeded randomness that gives the same numbers on every platform.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <random>
#include <span>
#include <utility>

namespace edgesplit {

/// A seeded generator. The standard distributions are implementation-defined, so edgesplit maps
/// the raw 64-bit engine output itself: the same seed gives the same weights, shuffles and masks
/// with every compiler and on every board.
class Rng {
 public:
  /// Seeds the generator; the same seed gives the same sequence on every platform and compiler.
  explicit Rng(std::uint64_t seed = 0x5eed) : engine_(seed) {}

  /// The engine's next raw 64-bit value.
  std::uint64_t next() { return engine_(); }
  /// Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
  /// Uniform in [lo, hi).
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  /// Standard normal (Box-Muller; the second value of each pair is kept for the next call).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1 = 0;
    while (u1 <= 0) u1 = uniform();
    const double u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2 * std::numbers::pi * u2);
    has_spare_ = true;
    return r * std::cos(2 * std::numbers::pi * u2);
  }
  /// Uniform integer in [0, n), unbiased (rejection of the short last interval). n must be > 0.
  std::uint64_t below(std::uint64_t n) {
    const std::uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    std::uint64_t v;
    do v = engine_();
    while (v >= limit);
    return v % n;
  }
  /// Fisher-Yates shuffle.
  template <class T>
  void shuffle(std::span<T> items) {
    for (std::size_t i = items.size(); i > 1; --i) std::swap(items[i - 1], items[below(i)]);
  }

 private:
  std::mt19937_64 engine_;
  double spare_ = 0;
  bool has_spare_ = false;
};

}  // namespace edgesplit

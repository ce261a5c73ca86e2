// edgesplit/core/shape.hpp - tensor shapes with bounded rank and overflow-checked sizes.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <span>
#include <string>

#include "edgesplit/core/error.hpp"

namespace edgesplit {

/// A tensor shape: rank 1..8, dimensions stored inline (a Shape never allocates, so shape
/// arithmetic is free on the inference path). The element count is computed once, with overflow
/// checks, when the shape is made; a shape whose count does not fit in `std::size_t` cannot exist.
class Shape {
 public:
  /// Highest rank a Shape holds inline; deeper shapes are refused with errc::invalid_argument.
  static constexpr std::size_t max_rank = 8;

  Shape() = default;  ///< rank 0 placeholder: an empty tensor's shape, refused by layers.
  /// A shape from its dimensions, e.g. `Shape{batch, features}`; errc::too_large if the count overflows.
  Shape(std::initializer_list<std::size_t> dims) { assign(std::span(dims.begin(), dims.size())); }
  /// A shape from a span of dimensions (rank 1..8), with the same checks.
  explicit Shape(std::span<const std::size_t> dims) { assign(dims); }

  /// Number of dimensions (0 for the placeholder).
  std::size_t rank() const noexcept { return rank_; }
  /// Dimension `i`; unchecked, `i` must be below rank().
  std::size_t operator[](std::size_t i) const noexcept { return dims_[i]; }
  /// The dimensions, outermost first.
  std::span<const std::size_t> dims() const noexcept { return {dims_.data(), rank_}; }
  /// Product of all dimensions; 0 for the rank-0 placeholder.
  std::size_t count() const noexcept { return count_; }
  /// First dimension: the batch, by the library's convention.
  std::size_t batch() const noexcept { return rank_ ? dims_[0] : 0; }
  /// Product of the dimensions after the batch: the width a Dense layer sees.
  std::size_t features() const noexcept {
    std::size_t f = 1;
    for (std::size_t i = 1; i < rank_; ++i) f *= dims_[i];  // cannot overflow: count_ did not
    return rank_ ? f : 0;
  }
  /// The same shape with its first dimension replaced (used for batch-range views).
  Shape with_batch(std::size_t b) const {
    Shape s = *this;
    if (rank_ == 0) fail(errc::invalid_argument, "with_batch on a rank-0 shape");
    s.dims_[0] = b;
    s.count_ = checked_count(s.dims());
    return s;
  }

  /// This shape with a dimension `b` put in front: a per-sample shape made a batch's
  /// (`Shape{784}.with_leading(32)` is [32, 784]). errc::invalid_argument past max_rank.
  Shape with_leading(std::size_t b) const {
    std::array<std::size_t, max_rank + 1> d{};
    d[0] = b;
    for (std::size_t i = 0; i < rank_; ++i) d[i + 1] = dims_[i];
    return Shape(std::span<const std::size_t>(d.data(), rank_ + 1));
  }

  /// Same rank and the same dimensions.
  friend bool operator==(const Shape& a, const Shape& b) noexcept {
    if (a.rank_ != b.rank_) return false;
    for (std::size_t i = 0; i < a.rank_; ++i)
      if (a.dims_[i] != b.dims_[i]) return false;
    return true;
  }

  /// Readable form, e.g. "[32, 784]", for error messages and logs.
  std::string str() const {
    std::string s = "[";
    for (std::size_t i = 0; i < rank_; ++i) s += (i ? ", " : "") + std::to_string(dims_[i]);
    return s + "]";
  }

  /// Product of `dims`, or errc::too_large if it overflows `std::size_t`.
  static std::size_t checked_count(std::span<const std::size_t> dims) {
    std::size_t n = 1;
    for (std::size_t d : dims) {
      if (d != 0 && n > std::numeric_limits<std::size_t>::max() / d)
        fail(errc::too_large, "shape element count overflows");
      n *= d;
    }
    return n;
  }

  /// `count * elem_bytes`, or errc::too_large on overflow.
  static std::size_t checked_bytes(std::size_t count, std::size_t elem_bytes) {
    if (elem_bytes != 0 && count > std::numeric_limits<std::size_t>::max() / elem_bytes)
      fail(errc::too_large, "tensor byte size overflows");
    return count * elem_bytes;
  }

 private:
  void assign(std::span<const std::size_t> dims) {
    if (dims.empty() || dims.size() > max_rank)
      fail(errc::invalid_argument,
           "shape rank must be 1.." + std::to_string(max_rank) + ", got " + std::to_string(dims.size()));
    count_ = checked_count(dims);
    rank_ = dims.size();
    for (std::size_t i = 0; i < rank_; ++i) dims_[i] = dims[i];
  }

  std::array<std::size_t, max_rank> dims_{};
  std::size_t rank_ = 0;
  std::size_t count_ = 0;
};

}  // namespace edgesplit

// edgesplit/core/tensor.hpp - owning aligned tensors and the cheap views layers work on.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <new>
#include <span>
#include <type_traits>
#include <utility>

#include <Eigen/Core>

#include "edgesplit/core/dtype.hpp"
#include "edgesplit/core/error.hpp"
#include "edgesplit/core/shape.hpp"

namespace edgesplit {

/// Storage alignment: one cache line, and enough for every SIMD width up to AVX-512.
inline constexpr std::size_t tensor_alignment = 64;

/// A non-owning, row-major view of a tensor: a pointer and a shape. `T` may be const.
/// Views are what layers read and write, so the same code serves whole tensors, batch ranges of
/// them, and caller-owned buffers.
template <class T>
class TensorView {
  using value_type = std::remove_const_t<T>;
  static_assert(Element<value_type>, "TensorView element must be an edgesplit Element");

 public:
  /// The Eigen matrix type a view maps to: row-major, like the tensor.
  using Matrix = Eigen::Matrix<value_type, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  /// Map type of as_matrix(): read-only when the view is.
  using MatrixMap = Eigen::Map<std::conditional_t<std::is_const_v<T>, const Matrix, Matrix>>;

  TensorView() = default;
  /// Views `shape.count()` elements at `data`; the caller keeps them alive.
  TensorView(T* data, const Shape& shape) : data_(data), shape_(shape) {}
  /// A mutable view converts to a const one.
  template <class U>
    requires(std::is_const_v<T> && std::is_same_v<const U, T>)
  TensorView(TensorView<U> v) : data_(v.data()), shape_(v.shape()) {}

  T* data() const noexcept { return data_; }  ///< first element; the view does not own it
  const Shape& shape() const noexcept { return shape_; }  ///< the viewed shape
  std::size_t size() const noexcept { return shape_.count(); }  ///< element count
  /// Element count times the element size.
  std::size_t bytes() const noexcept { return shape_.count() * sizeof(T); }
  bool empty() const noexcept { return shape_.count() == 0; }  ///< true when the shape has no elements
  /// The elements as a span, for std algorithms and the kernels.
  std::span<T> span() const noexcept { return {data_, shape_.count()}; }
  /// Element `i` in row-major order; unchecked.
  T& operator[](std::size_t i) const noexcept { return data_[i]; }

  /// Zero-copy Eigen view as batch x features (row-major), the shape Dense works on.
  MatrixMap as_matrix() const noexcept {
    return MatrixMap(data_, static_cast<Eigen::Index>(shape_.batch()),
                     static_cast<Eigen::Index>(shape_.features()));
  }

  /// The view of batch rows [begin, end): no copy, the same storage.
  TensorView batch(std::size_t begin, std::size_t end) const {
    if (shape_.rank() == 0 || begin > end || end > shape_.batch())
      fail(errc::out_of_range, "batch range [" + std::to_string(begin) + ", " + std::to_string(end) +
                                   ") outside a tensor of shape " + shape_.str());
    return TensorView(data_ + begin * shape_.features(), shape_.with_batch(end - begin));
  }

  /// The same storage seen with another shape of the same element count.
  TensorView reshaped(const Shape& s) const {
    if (s.count() != shape_.count())
      fail(errc::shape_mismatch, "cannot reshape " + shape_.str() + " to " + s.str());
    return TensorView(data_, s);
  }

 private:
  T* data_ = nullptr;
  Shape shape_;
};

/// An owning tensor: row-major, 64-byte aligned. `resize` keeps its storage when the new shape
/// fits, which is what lets a model's workspace be reused with no allocation in steady state.
template <Element T>
class Tensor {
 public:
  using value_type = T;  ///< the element type, for generic code

  Tensor() = default;
  /// Allocates `shape`, zero-filled (errc::too_large if its byte count overflows).
  explicit Tensor(const Shape& shape) { resize(shape); }
  /// Allocates `shape` with every element set to `fill`.
  Tensor(const Shape& shape, T fill) {
    resize(shape);
    std::fill_n(data_, shape.count(), fill);
  }
  /// Deep copy, with storage of its own.
  Tensor(const Tensor& o) : Tensor(o.shape_) { std::copy_n(o.data_, o.size(), data_); }
  /// Takes the storage; `o` is left empty.
  Tensor(Tensor&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)),
        capacity_(std::exchange(o.capacity_, 0)),
        shape_(std::exchange(o.shape_, Shape{})) {}
  /// Deep copy; reuses this tensor's storage when it is large enough.
  Tensor& operator=(const Tensor& o) {
    if (this != &o) {
      resize(o.shape_);
      std::copy_n(o.data_, o.size(), data_);
    }
    return *this;
  }
  /// Takes the storage; `o` is left empty.
  Tensor& operator=(Tensor&& o) noexcept {
    if (this != &o) {
      release();
      data_ = std::exchange(o.data_, nullptr);
      capacity_ = std::exchange(o.capacity_, 0);
      shape_ = std::exchange(o.shape_, Shape{});
    }
    return *this;
  }
  ~Tensor() { release(); }

  /// Gives the tensor `shape`. Contents are unspecified afterwards unless the storage was kept and
  /// the count did not change; new storage is zero-filled. Allocates only when the count grows
  /// past the capacity.
  void resize(const Shape& shape) {
    const std::size_t n = shape.count();
    if (n > capacity_) {
      const std::size_t bytes = Shape::checked_bytes(n, sizeof(T));
      T* fresh = static_cast<T*>(::operator new(bytes, std::align_val_t{tensor_alignment}));
      std::memset(static_cast<void*>(fresh), 0, bytes);
      release();
      data_ = fresh;
      capacity_ = n;
    }
    shape_ = shape;
  }

  T* data() noexcept { return data_; }  ///< first element (64-byte aligned)
  const T* data() const noexcept { return data_; }  ///< first element (64-byte aligned)
  const Shape& shape() const noexcept { return shape_; }  ///< the current shape
  std::size_t size() const noexcept { return shape_.count(); }  ///< element count
  /// Element count times the element size.
  std::size_t bytes() const noexcept { return shape_.count() * sizeof(T); }
  /// Elements the storage holds: resize up to this allocates nothing.
  std::size_t capacity() const noexcept { return capacity_; }
  bool empty() const noexcept { return shape_.count() == 0; }  ///< true when the shape has no elements
  /// Element `i` in row-major order; unchecked.
  T& operator[](std::size_t i) noexcept { return data_[i]; }
  /// Element `i` in row-major order; unchecked.
  const T& operator[](std::size_t i) const noexcept { return data_[i]; }
  std::span<T> span() noexcept { return {data_, size()}; }  ///< the elements as a span
  std::span<const T> span() const noexcept { return {data_, size()}; }  ///< the elements as a span

  /// A non-owning view of the whole tensor, valid until it is resized or destroyed.
  TensorView<T> view() noexcept { return {data_, shape_}; }
  /// A read-only view of the whole tensor.
  TensorView<const T> view() const noexcept { return {data_, shape_}; }
  /// A read-only view, also from a non-const tensor (picks the const overloads of layers).
  TensorView<const T> cview() const noexcept { return {data_, shape_}; }
  /// Tensors pass wherever a view is taken.
  operator TensorView<T>() noexcept { return view(); }
  /// Tensors pass wherever a read-only view is taken.
  operator TensorView<const T>() const noexcept { return cview(); }

  /// Zero-copy Eigen map as batch x features (see TensorView::as_matrix).
  auto as_matrix() noexcept { return view().as_matrix(); }
  /// Zero-copy read-only Eigen map as batch x features.
  auto as_matrix() const noexcept { return cview().as_matrix(); }
  /// Rows [b, e) of the batch as a view, without copying; errc::out_of_range outside the batch.
  TensorView<T> batch(std::size_t b, std::size_t e) { return view().batch(b, e); }
  /// Rows [b, e) of the batch as a read-only view; errc::out_of_range outside the batch.
  TensorView<const T> batch(std::size_t b, std::size_t e) const { return cview().batch(b, e); }

 private:
  void release() noexcept {
    if (data_) ::operator delete(data_, std::align_val_t{tensor_alignment});
    data_ = nullptr;
    capacity_ = 0;
  }

  T* data_ = nullptr;
  std::size_t capacity_ = 0;
  Shape shape_;
};

/// Copies `src` into `dst`; their shapes must be equal.
template <class T>
void copy(TensorView<const T> src, TensorView<T> dst) {
  if (!(src.shape() == dst.shape()))
    fail(errc::shape_mismatch, "copy from " + src.shape().str() + " into " + dst.shape().str());
  if (src.size()) std::memmove(dst.data(), src.data(), src.bytes());
}

}  // namespace edgesplit

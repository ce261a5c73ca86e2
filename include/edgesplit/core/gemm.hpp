// edgesplit/core/gemm.hpp - the matrix products of Dense, with workspace kept across calls.
#pragma once

#include <cstddef>

#include <Eigen/Core>

#include "edgesplit/core/dtype.hpp"

namespace edgesplit {

/// The matrix products of a Dense layer, all into a row-major Y (rows x cols) with the product
/// accumulated onto what Y holds:
/// - forward:         Y += X W^T  (X: rows x depth, W: cols x depth, both row-major);
/// - weight gradient: Y += A^T B  (A: depth x rows, B: depth x cols, both row-major);
/// - input gradient:  Y += A B    (A: rows x depth, B: depth x cols, both row-major).
///
/// Eigen's GEMM packs its operands into blocking buffers; through the expression API it
/// allocates them on every call once they exceed Eigen's stack limit (128 KiB). This class calls
/// Eigen 3.4's internal `general_matrix_matrix_product` with the blocking sizes Eigen's own product
/// would use, over packing buffers that are kept instead: one pair per thread, shared by every
/// workspace of that thread and grown to the largest problem seen, so a steady stream of
/// same-sized (or smaller) batches allocates nothing, in inference and in training.
/// Sharing matters for speed, not only memory: the packed operands are as large as a layer's
/// weights (up to kc x out floats), and buffers kept per layer added that much to the cache
/// footprint of a model (the 784-512-256-10 MLP ran ~4% slower than raw Eigen at batch 64 with
/// per-layer buffers, ~1% with shared ones; docs/performance.md). Packing buffers are scratch for
/// the duration of one product, and one thread runs one product at a time, so sharing is safe.
/// Use one workspace per product (a Dense keeps three), so each keeps its own blocking sizes.
/// Batch 1 of the forward product goes to Eigen's row-major GEMV, which needs no workspace.
template <Real T>
class GemmWorkspace {
  using Index = Eigen::Index;
  template <int LhsOrder, int RhsOrder>
  using Gemm = Eigen::internal::general_matrix_matrix_product<Index, T, LhsOrder, false, T, RhsOrder, false,
                                                              Eigen::RowMajor, 1>;

 public:
  GemmWorkspace() = default;
  /// Copies start without the cached blocking sizes and compute their own: a cache, not state.
  GemmWorkspace(const GemmWorkspace&) {}
  /// Keeps this workspace's cached blocking sizes: they are a cache, not part of the value.
  GemmWorkspace& operator=(const GemmWorkspace&) { return *this; }
  /// Moves take the cache along.
  GemmWorkspace(GemmWorkspace&&) noexcept = default;
  /// Moves take the cache along.
  GemmWorkspace& operator=(GemmWorkspace&&) noexcept = default;

  /// Y {rows, cols} += X {rows, depth} W^T, W row-major {cols, depth}: a Dense forward (batch 1 as a GEMV).
  void xwt_accumulate(const T* x, const T* w, T* y, Index rows, Index cols, Index depth) {
    if (rows == 1) {
      Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> W(w, cols, depth);
      Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>> xv(x, depth);
      Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>> yv(y, cols);
      yv.noalias() += W * xv;
      return;
    }
    // X: lhs, row-major, stride depth. W^T: rhs, column-major view of row-major W, stride depth.
    Gemm<Eigen::RowMajor, Eigen::ColMajor>::run(rows, cols, depth, x, depth, w, depth, y, 1, cols, T(1),
                                                 blocking(rows, cols, depth), nullptr);
  }

  /// Y {rows, cols} += A^T B, A row-major {depth, rows}, B row-major {depth, cols}: a Dense weight gradient.
  void atb_accumulate(const T* a, const T* b, T* y, Index rows, Index cols, Index depth) {
    // A^T: lhs, column-major view of row-major A (depth x rows), stride rows. B: rhs, row-major.
    Gemm<Eigen::ColMajor, Eigen::RowMajor>::run(rows, cols, depth, a, rows, b, cols, y, 1, cols, T(1),
                                                 blocking(rows, cols, depth), nullptr);
  }

  /// Y {rows, cols} += A B, A row-major {rows, depth}, B row-major {depth, cols}: a Dense input gradient.
  void ab_accumulate(const T* a, const T* b, T* y, Index rows, Index cols, Index depth) {
    Gemm<Eigen::RowMajor, Eigen::RowMajor>::run(rows, cols, depth, a, depth, b, cols, y, 1, cols, T(1),
                                                 blocking(rows, cols, depth), nullptr);
  }

 private:
  using Level3 = Eigen::internal::level3_blocking<T, T>;

  // Blocking sizes as Eigen's gemm_blocking_space<RowMajor, T, T, Dynamic, Dynamic, Dynamic>
  // (rows, cols, depth, 1, true) computes them, over buffers it does not own.
  class Blocking : public Level3 {
   public:
    void configure(Index rows, Index cols, Index depth) {
      // A row-major result: Eigen computes the transposed product, so m and n swap.
      this->m_mc = cols;
      this->m_nc = rows;
      this->m_kc = depth;
      Eigen::internal::computeProductBlockingSizes<T, T, 1>(this->m_kc, this->m_mc, this->m_nc, Index(1));
    }
    Index size_a() const noexcept { return this->m_mc * this->m_kc; }
    Index size_b() const noexcept { return this->m_kc * this->m_nc; }
    void attach(T* a, T* b) noexcept {
      this->m_blockA = a;
      this->m_blockB = b;
    }
  };

  // The packing buffers of one thread, grown on demand and freed when the thread ends.
  struct Buffers {
    T* a = nullptr;
    T* b = nullptr;
    Index cap_a = 0, cap_b = 0;
    Buffers() = default;
    Buffers(const Buffers&) = delete;
    Buffers& operator=(const Buffers&) = delete;
    ~Buffers() {
      Eigen::internal::aligned_free(a);
      Eigen::internal::aligned_free(b);
    }
    static void grow(T*& p, Index& cap, Index want) {
      if (want <= cap) return;
      T* q = static_cast<T*>(Eigen::internal::aligned_malloc(static_cast<std::size_t>(want) * sizeof(T)));
      Eigen::internal::aligned_free(p);
      p = q;
      cap = want;
    }
  };

  Level3& blocking(Index rows, Index cols, Index depth) {
    if (!configured_ || rows > rows_ || cols != cols_ || depth != depth_) {
      blocking_.configure(rows, cols, depth);
      configured_ = true;
      rows_ = rows;
      cols_ = cols;
      depth_ = depth;
    }
    static thread_local Buffers buffers;
    Buffers::grow(buffers.a, buffers.cap_a, blocking_.size_a());
    Buffers::grow(buffers.b, buffers.cap_b, blocking_.size_b());
    blocking_.attach(buffers.a, buffers.b);
    return blocking_;
  }

  Blocking blocking_;
  bool configured_ = false;
  Index rows_ = 0, cols_ = 0, depth_ = 0;
};

}  // namespace edgesplit

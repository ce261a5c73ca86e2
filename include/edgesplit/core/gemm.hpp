// edgesplit/core/gemm.hpp - the matrix products of Dense, with workspace kept across calls.
#pragma once

#include <memory>

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
/// allocates them on every call once they exceed Eigen's stack limit (128 KiB). This class keeps
/// one blocking workspace for the largest problem seen and reuses it, so a steady stream of
/// same-sized (or smaller) batches allocates nothing, in inference and in training. It calls Eigen
/// 3.4's internal `general_matrix_matrix_product` with the same arguments Eigen's own product
/// would use. Use one workspace per product (a Dense keeps three), so each keeps its own size.
/// Batch 1 of the forward product goes to Eigen's row-major GEMV, which needs no workspace.
template <Real T>
class GemmWorkspace {
  using Index = Eigen::Index;
  using Blocking = Eigen::internal::gemm_blocking_space<Eigen::RowMajor, T, T, Eigen::Dynamic, Eigen::Dynamic,
                                                        Eigen::Dynamic, 1, false>;
  template <int LhsOrder, int RhsOrder>
  using Gemm = Eigen::internal::general_matrix_matrix_product<Index, T, LhsOrder, false, T, RhsOrder, false,
                                                              Eigen::RowMajor, 1>;

 public:
  GemmWorkspace() = default;
  // The workspace is scratch: copies start without one.
  GemmWorkspace(const GemmWorkspace&) {}
  GemmWorkspace& operator=(const GemmWorkspace&) { return *this; }
  GemmWorkspace(GemmWorkspace&&) noexcept = default;
  GemmWorkspace& operator=(GemmWorkspace&&) noexcept = default;

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

  void atb_accumulate(const T* a, const T* b, T* y, Index rows, Index cols, Index depth) {
    // A^T: lhs, column-major view of row-major A (depth x rows), stride rows. B: rhs, row-major.
    Gemm<Eigen::ColMajor, Eigen::RowMajor>::run(rows, cols, depth, a, rows, b, cols, y, 1, cols, T(1),
                                                 blocking(rows, cols, depth), nullptr);
  }

  void ab_accumulate(const T* a, const T* b, T* y, Index rows, Index cols, Index depth) {
    Gemm<Eigen::RowMajor, Eigen::RowMajor>::run(rows, cols, depth, a, depth, b, cols, y, 1, cols, T(1),
                                                 blocking(rows, cols, depth), nullptr);
  }

 private:
  Blocking& blocking(Index rows, Index cols, Index depth) {
    if (!blocking_ || rows > rows_ || cols != cols_ || depth != depth_) {
      blocking_ = std::make_unique<Blocking>(rows, cols, depth, 1, true);
      blocking_->allocateAll();
      rows_ = rows;
      cols_ = cols;
      depth_ = depth;
    }
    return *blocking_;
  }

  std::unique_ptr<Blocking> blocking_;
  Index rows_ = 0, cols_ = 0, depth_ = 0;
};

}  // namespace edgesplit

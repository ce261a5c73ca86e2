// edgesplit/core/gemm.hpp - the matrix products of Dense, with workspace kept across calls.
#pragma once

#include <memory>

#include <Eigen/Core>

#include "edgesplit/core/dtype.hpp"

namespace edgesplit {

/// Y += X * W^T for row-major X (rows x depth), W (cols x depth) and Y (rows x cols): the
/// product of a Dense layer, with the bias already in Y.
///
/// Eigen's GEMM packs its operands into blocking buffers; through the expression API it
/// allocates them on every call once they exceed Eigen's stack limit (128 KiB). This class keeps
/// one blocking workspace for the largest problem seen and reuses it, so a steady stream of
/// same-sized (or smaller) batches allocates nothing. It calls Eigen 3.4's internal
/// `general_matrix_matrix_product` with the same arguments Eigen's own product would use.
/// Batch 1 goes to Eigen's row-major GEMV, which needs no workspace.
template <Real T>
class GemmWorkspace {
  using Index = Eigen::Index;
  using Blocking = Eigen::internal::gemm_blocking_space<Eigen::RowMajor, T, T, Eigen::Dynamic, Eigen::Dynamic,
                                                        Eigen::Dynamic, 1, false>;
  using Gemm = Eigen::internal::general_matrix_matrix_product<Index, T, Eigen::RowMajor, false, T, Eigen::ColMajor,
                                                              false, Eigen::RowMajor, 1>;

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
    if (!blocking_ || rows > rows_ || cols != cols_ || depth != depth_) {
      blocking_ = std::make_unique<Blocking>(rows, cols, depth, 1, true);
      blocking_->allocateAll();
      rows_ = rows;
      cols_ = cols;
      depth_ = depth;
    }
    // X: lhs, row-major, stride depth. W^T: rhs, column-major view of row-major W, stride depth.
    Gemm::run(rows, cols, depth, x, depth, w, depth, y, 1, cols, T(1), *blocking_, nullptr);
  }

 private:
  std::unique_ptr<Blocking> blocking_;
  Index rows_ = 0, cols_ = 0, depth_ = 0;
};

}  // namespace edgesplit

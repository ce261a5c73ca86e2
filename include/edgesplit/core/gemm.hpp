// edgesplit/core/gemm.hpp - the matrix products of Dense, with workspace kept across calls.
#pragma once

#include <cstddef>
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
  /// Keeps this workspace's cached blocking sizes (a cache, not part of the value) and drops its
  /// packed weights: the layer assigned to now holds other weights.
  GemmWorkspace& operator=(const GemmWorkspace&) {
    pack_.reset();
    return *this;
  }
  /// Moves take the cache along.
  GemmWorkspace(GemmWorkspace&&) noexcept = default;
  /// Moves take the cache along.
  GemmWorkspace& operator=(GemmWorkspace&&) noexcept = default;

  /// Y {rows, cols} += X {rows, depth} W^T, W row-major {cols, depth}: a Dense forward (batch 1 as a GEMV).
  /// A pack of this W (pack()) is used unless `use_pack` is false.
  void xwt_accumulate(const T* x, const T* w, T* y, Index rows, Index cols, Index depth, bool use_pack = true) {
    if (rows == 1) {
      Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> W(w, cols, depth);
      Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>> xv(x, depth);
      Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>> yv(y, cols);
      yv.noalias() += W * xv;
      return;
    }
    Level3& b = blocking(rows, cols, depth);
    if (use_pack && pack_ && pack_->w == w && pack_->cols == cols && pack_->depth == depth && pack_->kc == b.kc() &&
        pack_->mc == std::min(cols, b.mc())) {
      xwt_packed(x, y, rows, b);
      return;
    }
    // X: lhs, row-major, stride depth. W^T: rhs, column-major view of row-major W, stride depth.
    Gemm<Eigen::RowMajor, Eigen::ColMajor>::run(rows, cols, depth, x, depth, w, depth, y, 1, cols, T(1), b, nullptr);
  }

  /// Packs W (row-major {cols, depth}) once into the layout Eigen's GEMM kernel reads, so that
  /// xwt_accumulate on this W at batch >= 2 skips re-packing it: about a fifth of a batched
  /// forward's time for the MLP's layers (docs/performance.md). The result is the same, bit for
  /// bit: the same kernel runs on the same blocks in the same order. The pack is a snapshot of
  /// W's values, used while xwt_accumulate is given the same pointer and shape: call drop_pack()
  /// (or pack() again) whenever W's values change.
  void pack(const T* w, Index cols, Index depth) {
    // kc and mc depend on the weights' shape only (Eigen sizes nc alone by the batch); any batch
    // size gives the blocking the unpacked product would use.
    // A pack of the same shape is overwritten in place: re-packing changed weights allocates
    // nothing.
    Blocking probe;
    probe.configure(64, cols, depth);
    const Index kc = probe.kc(), mc = std::min(cols, probe.mc());
    const bool reuse = pack_ && pack_->cols == cols && pack_->depth == depth && pack_->kc == kc && pack_->mc == mc;
    auto p = reuse ? std::move(pack_) : std::make_unique<Pack>();
    p->w = w;
    if (!reuse) {
      p->cols = cols;
      p->depth = depth;
      p->kc = kc;
      p->mc = mc;
      Index total = 0;
      p->for_each_block([&](Index, Index, Index, Index, Index end) { total = end; });
      p->data.reset(static_cast<T*>(Eigen::internal::aligned_malloc(static_cast<std::size_t>(total) * sizeof(T))));
    }
    PackLhs pack_lhs;
    const LhsMapper lhs(w, depth);
    p->for_each_block([&](Index i2, Index k2, Index mc, Index kc, Index end) {
      pack_lhs(p->data.get() + end - Pack::stored(mc, kc), lhs.getSubMapper(i2, k2), kc, mc);
    });
    pack_ = std::move(p);
  }
  /// Forgets the packed weights (their source changed or is going away).
  void drop_pack() noexcept { pack_.reset(); }
  /// True while packed weights are held.
  bool packed() const noexcept { return pack_ != nullptr; }

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
  // The forward product as Eigen runs it: the transposed, column-major Y^T = W X^T, with W as the
  // left-hand side (row-major, {cols, depth}) and X^T as the right (column-major, {depth, rows}).
  using Traits = Eigen::internal::gebp_traits<T, T>;
  using LhsMapper = Eigen::internal::const_blas_data_mapper<T, Index, Eigen::RowMajor>;
  using RhsMapper = Eigen::internal::const_blas_data_mapper<T, Index, Eigen::ColMajor>;
  using ResMapper = Eigen::internal::blas_data_mapper<T, Index, Eigen::ColMajor, Eigen::Unaligned, 1>;
  using PackLhs = Eigen::internal::gemm_pack_lhs<T, Index, LhsMapper, Traits::mr, Traits::LhsProgress,
                                                 typename Traits::LhsPacket4Packing, Eigen::RowMajor>;
  using PackRhs = Eigen::internal::gemm_pack_rhs<T, Index, RhsMapper, Traits::nr, Eigen::ColMajor>;
  using Kernel = Eigen::internal::gebp_kernel<T, T, Index, ResMapper, Traits::mr, Traits::nr, false, false>;

  struct AlignedFree {
    void operator()(T* p) const noexcept { Eigen::internal::aligned_free(p); }
  };
  struct Pack {
    const T* w = nullptr;  // the weights it was made from
    Index cols = 0, depth = 0, kc = 0, mc = 0;
    std::unique_ptr<T, AlignedFree> data;  // the blocks, in for_each_block's order

    // Floats a block of mc x kc takes in `data`: each block starts on a 64-byte boundary, as the
    // kernel reads packed blocks with aligned loads.
    static Index stored(Index mc, Index kc) { return (mc * kc + 15) / 16 * 16; }
    // Calls f(i2, k2, mc, kc, end) for each (row block, depth block) as Eigen's loop visits them,
    // row blocks outermost; `end` is where the block ends in `data`.
    template <class F>
    void for_each_block(F f) const {
      Index end = 0;
      for (Index i2 = 0; i2 < cols; i2 += mc)
        for (Index k2 = 0; k2 < depth; k2 += kc) {
          const Index m = std::min(mc, cols - i2), k = std::min(kc, depth - k2);
          end += stored(m, k);
          f(i2, k2, m, k, end);
        }
    }
  };

  // Eigen's sequential GEMM loop (GeneralMatrixMatrix.h) with the left-hand side already packed.
  void xwt_packed(const T* x, T* y, Index rows, Level3& b) {
    const Pack& p = *pack_;
    const Index nc = std::min(rows, b.nc());
    const RhsMapper rhs(x, p.depth);
    const ResMapper res(y, p.cols);
    PackRhs pack_rhs;
    Kernel gebp;
    p.for_each_block([&](Index i2, Index k2, Index mc, Index kc, Index end) {
      const T* block_a = p.data.get() + end - Pack::stored(mc, kc);
      for (Index j2 = 0; j2 < rows; j2 += nc) {
        const Index n = std::min(nc, rows - j2);
        pack_rhs(b.blockB(), rhs.getSubMapper(k2, j2), kc, n);
        gebp(res.getSubMapper(i2, j2), block_a, b.blockB(), mc, kc, n, T(1));
      }
    });
  }

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
  std::unique_ptr<Pack> pack_;
  bool configured_ = false;
  Index rows_ = 0, cols_ = 0, depth_ = 0;
};

}  // namespace edgesplit

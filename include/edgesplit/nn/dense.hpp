// edgesplit/nn/dense.hpp - the fully connected layer.
#pragma once

#include <cmath>
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include <Eigen/Core>

#include "edgesplit/core/gemm.hpp"
#include "edgesplit/core/kernels.hpp"
#include "edgesplit/core/random.hpp"
#include "edgesplit/nn/layer.hpp"

namespace edgesplit {

/// y = x W^T + b for a batch x of shape {batch, in} (any rank >= 2 whose trailing dimensions
/// multiply to `in`), giving {batch, out}.
///
/// Weight layout: W is stored row-major as {out, in} (the layout PyTorch's Linear uses too).
/// Batch 1 is a matrix-vector product and memory-bound: row-major W makes it a row-major GEMV,
/// which streams each weight row once at the memory limit (column-major reaches about half).
/// Batches >= 2 go to Eigen's GEMM as X * W^T, where W^T of a row-major W is a free column-major
/// view, so large batches pay nothing for the choice. The bias is written first and the product
/// accumulated onto it, so the bias costs no extra pass.
template <Real T>
class Dense final : public Layer<T> {
  using RowVector = Eigen::Matrix<T, 1, Eigen::Dynamic>;

 public:
  /// The seed of the weights of a Dense built without an Rng.
  static constexpr std::uint64_t default_seed = 0x5eed'0000'd3e5ull;

  /// A layer with He-uniform weights drawn from `default_seed` and the layer's shape, and zero
  /// bias: reproducible, and trainable as it is (all-zero weights would keep every unit equal and
  /// training would never start). Pass an Rng to draw different weights per layer or per run.
  Dense(std::size_t in, std::size_t out) : Dense(in, out, shape_only{}) {
    Rng rng(default_seed ^ (static_cast<std::uint64_t>(in) << 32) ^ static_cast<std::uint64_t>(out));
    init(rng);
  }
  /// A layer with He-uniform weights (suited to ReLU-family activations) from `rng`, zero bias.
  Dense(std::size_t in, std::size_t out, Rng& rng) : Dense(in, out, shape_only{}) { init(rng); }

  std::string_view name() const noexcept override { return "Dense"; }
  std::string describe() const override {
    return "Dense(" + std::to_string(in_) + " -> " + std::to_string(out_) + ")";
  }
  std::unique_ptr<Layer<T>> clone() const override { return std::make_unique<Dense>(*this); }
  LayerSpec spec() const override { return {"Dense", {{"in", in_}, {"out", out_}}, {}}; }

  std::size_t in_features() const noexcept { return in_; }  ///< input width
  std::size_t out_features() const noexcept { return out_; }  ///< output width
  /// Weights, row-major {out, in} like torch.nn.Linear, so batch 1 streams each row once.
  /// Mutable access ends WeightPacking::fixed (the next batched forward checks them again).
  Tensor<T>& weight() noexcept {
    weights_may_change();
    return weight_;
  }
  /// Weights, row-major {out, in}.
  const Tensor<T>& weight() const noexcept { return weight_; }
  Tensor<T>& bias() noexcept { return bias_; }  ///< bias, {out}
  const Tensor<T>& bias() const noexcept { return bias_; }  ///< bias, {out}
  std::size_t parameter_count() const override { return weight_.size() + bias_.size(); }
  /// How W is kept in the GEMM kernel's layout (WeightPacking; automatic by default). `fixed`
  /// packs now; `off` frees the pack.
  void set_weight_packing(WeightPacking mode) override {
    packing_.mode = mode;
    if (mode == WeightPacking::fixed) pack(0);  // never checked while fixed
    if (mode == WeightPacking::off) gemm_.drop_pack();
  }
  WeightPacking weight_packing() const noexcept { return packing_.mode; }  ///< the current mode
  bool weights_packed() const noexcept { return gemm_.packed(); }  ///< true while a pack is held

  void zero_grad() override {
    weight_grad_.resize(weight_.shape());
    bias_grad_.resize(bias_.shape());
    std::fill_n(weight_grad_.data(), weight_grad_.size(), T(0));
    std::fill_n(bias_grad_.data(), bias_grad_.size(), T(0));
  }

 protected:
  void check_input(const Shape& in) const override {
    Layer<T>::check_input(in);
    if (in.features() != in_)
      fail(errc::shape_mismatch, describe() + " got input " + in.str() + " with " +
                                     std::to_string(in.features()) + " features");
  }
  Shape output_shape_impl(const Shape& in) const override { return Shape{in.batch(), out_}; }
  std::uint64_t flops_impl(const Shape& in) const override {
    return static_cast<std::uint64_t>(in.batch()) * out_ * (2 * in_ + 1);
  }

  void forward_impl(TensorView<const T> in, TensorView<T> out) override {
    const std::size_t batch = in.shape().batch();
    // Training steps change the weights between passes: an automatic pack is neither made nor
    // used then (it stays allocated for the next inference pass to re-pack in place).
    const bool use_pack = !this->training() || packing_.mode == WeightPacking::fixed;
    if (batch >= 2 && !this->training()) refresh_pack();
    for (std::size_t r = 0; r < batch; ++r) std::copy_n(bias_.data(), out_, out.data() + r * out_);
    gemm_.xwt_accumulate(in.data(), weight_.data(), out.data(), static_cast<Eigen::Index>(batch),
                         static_cast<Eigen::Index>(out_), static_cast<Eigen::Index>(in_), use_pack);
  }

  void backward_impl(TensorView<const T> in, TensorView<const T>, TensorView<const T> grad_out,
                     TensorView<T> grad_in) override {
    weights_may_change();  // training steps are about to change the weights
    if (weight_grad_.shape() != weight_.shape()) zero_grad();
    using Index = Eigen::Index;
    const auto batch = static_cast<Index>(in.shape().batch()), out = static_cast<Index>(out_),
               in_features = static_cast<Index>(in_);
    // dW += G^T X and dX = G W through kept workspaces: Eigen's expression products would
    // allocate their packing buffers on every training step.
    gemm_dw_.atb_accumulate(grad_out.data(), in.data(), weight_grad_.data(), out, in_features, batch);
    Eigen::Map<RowVector> db(bias_grad_.data(), out);
    db += grad_out.as_matrix().colwise().sum();
    if (grad_in.data() != nullptr) {
      std::fill_n(grad_in.data(), grad_in.size(), T(0));
      gemm_dx_.ab_accumulate(grad_out.data(), weight_.data(), grad_in.data(), batch, in_features, out);
    }
  }

  // The views may be written through: a fixed pack can no longer be trusted unchecked. An
  // automatic one is kept (re-packed in place when its checksum shows a change).
  void weights_may_change() override {
    if (packing_.mode != WeightPacking::fixed) return;
    gemm_.drop_pack();
    packing_.mode = WeightPacking::automatic;
  }
  std::vector<Parameter<T>> parameters_impl() override {
    return {{"weight", weight_.view(), weight_grad_.view()}, {"bias", bias_.view(), bias_grad_.view()}};
  }

 private:
  struct shape_only {};
  Dense(std::size_t in, std::size_t out, shape_only) : in_(in), out_(out) {
    if (in == 0 || out == 0) fail(errc::invalid_argument, "Dense needs in > 0 and out > 0");
    weight_.resize(Shape{out, in});
    bias_.resize(Shape{out});
  }
  // Packs W, remembering `sum`, the checksum of the weights packed (read once by the caller).
  void pack(std::uint64_t sum) {
    gemm_.pack(weight_.data(), static_cast<Eigen::Index>(out_), static_cast<Eigen::Index>(in_));
    packing_.sum = sum;
  }
  std::uint64_t checksum() const { return kernels::word_checksum(weight_.data(), weight_.size() * sizeof(T) / 4); }
  // Before a batched inference pass: pack W, or check that the pack still matches it.
  void refresh_pack() {
    switch (packing_.mode) {
      case WeightPacking::off: return;
      case WeightPacking::fixed:
        if (!gemm_.packed()) pack(0);
        return;
      case WeightPacking::automatic: {
        const std::uint64_t sum = checksum();  // one read of the weights per pass, not two on a change
        if (!gemm_.packed() || sum != packing_.sum) pack(sum);
        return;
      }
    }
  }
  void init(Rng& rng) {
    const double limit = std::sqrt(6.0 / static_cast<double>(in_));
    for (T& w : weight_.span()) w = static_cast<T>(rng.uniform(-limit, limit));
  }

  std::size_t in_, out_;
  Tensor<T> weight_, bias_;
  Tensor<T> weight_grad_, bias_grad_;
  GemmWorkspace<T> gemm_, gemm_dw_, gemm_dx_;  // forward, weight gradient, input gradient
  // The packing mode and the checksum of the weights the pack was made from. A copy starts
  // automatic: a promise that weights stay fixed is made for one layer, not for its copies.
  struct Packing {
    WeightPacking mode = WeightPacking::automatic;
    std::uint64_t sum = 0;
    Packing() = default;
    Packing(const Packing&) noexcept {}
    Packing& operator=(const Packing&) noexcept {
      mode = WeightPacking::automatic;
      return *this;
    }
  } packing_;
};

}  // namespace edgesplit

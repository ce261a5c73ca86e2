// edgesplit/nn/batchnorm.hpp - batch normalisation per channel, with running statistics.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "edgesplit/core/kernels.hpp"
#include "edgesplit/nn/layer.hpp"

namespace edgesplit {

/// Batch normalisation per channel, as torch.nn.BatchNorm2d and ONNX BatchNormalization:
/// y = (x - mean_c) / sqrt(var_c + epsilon) * gamma_c + beta_c.
///
/// Inputs are {N, C, H, W}; {N, C} and {N, C, L} (BatchNorm1d's inputs) are accepted too, the
/// statistics then running over the batch (and L): each channel is normalised over every
/// dimension but the second, whatever the rank.
///
/// Training mode (set_training(true)) normalises with the batch's own statistics and, in the
/// same forward pass, moves the running statistics towards them with PyTorch's convention:
/// running = (1 - momentum) running + momentum batch_statistic, where the running variance takes
/// the unbiased batch variance (divided by M - 1, M = values per channel) while the
/// normalisation uses the biased one (divided by M). Training therefore needs M >= 2, as in
/// PyTorch. Inference mode (the default) normalises with the running statistics, so the layer is
/// a per-channel affine map that `fold_batchnorm` (nn/fold.hpp) can merge into a preceding Conv2D.
///
/// gamma and beta are the trainable parameters "weight" and "bias" (PyTorch's names); the
/// running statistics are the buffers "running_mean" and "running_var", saved with the model but
/// never trained. PyTorch's state_dict has a fifth entry, num_batches_tracked, used only when
/// momentum is None (a cumulative average), which this layer does not offer: drop it on import.
///
/// The statistics are accumulated in double, in two passes (the mean, then the squared
/// deviations from it), so a channel whose mean is large against its spread loses nothing to
/// cancellation; the normalisation itself runs element-wise over xsimd batches. The per-channel
/// workspaces are sized in the constructor, so no pass allocates (the gradients of gamma and beta
/// are allocated once, by zero_grad or the first backward pass).
template <Real T>
class BatchNorm2D final : public Layer<T> {
 public:
  /// Normalises `channels` channels; gamma = 1, beta = 0, running mean 0 and running variance 1
  /// (PyTorch's initial values). errc::invalid_argument for zero channels, an epsilon that is not
  /// finite and > 0, or a momentum outside [0, 1].
  explicit BatchNorm2D(std::size_t channels, double epsilon = 1e-5, double momentum = 0.1)
      : channels_(channels), epsilon_(epsilon), momentum_(momentum) {
    if (channels == 0) fail(errc::invalid_argument, "BatchNorm2D needs channels > 0");
    if (!(std::isfinite(epsilon) && epsilon > 0))
      fail(errc::invalid_argument, "BatchNorm2D epsilon must be finite and > 0, got " + number(epsilon));
    if (!(momentum >= 0 && momentum <= 1))
      fail(errc::invalid_argument, "BatchNorm2D momentum must be in [0, 1], got " + number(momentum));
    gamma_ = Tensor<T>(Shape{channels}, T(1));
    beta_ = Tensor<T>(Shape{channels}, T(0));
    running_mean_ = Tensor<T>(Shape{channels}, T(0));
    running_var_ = Tensor<T>(Shape{channels}, T(1));
    mean_.assign(channels, 0.0);
    var_.assign(channels, 0.0);
    sum_g_.assign(channels, 0.0);
    sum_gx_.assign(channels, 0.0);
  }

  std::string_view name() const noexcept override { return "BatchNorm2D"; }
  /// "BatchNorm2D(16, eps 1e-05, momentum 0.1)".
  std::string describe() const override {
    return "BatchNorm2D(" + std::to_string(channels_) + ", eps " + number(epsilon_) + ", momentum " +
           number(momentum_) + ")";
  }
  std::unique_ptr<Layer<T>> clone() const override { return std::make_unique<BatchNorm2D>(*this); }
  /// Keys: the integer "channels", the reals "epsilon" and "momentum".
  LayerSpec spec() const override {
    return {"BatchNorm2D", {{"channels", channels_}}, {{"epsilon", epsilon_}, {"momentum", momentum_}}};
  }

  std::size_t channels() const noexcept { return channels_; }  ///< the channel count C
  double epsilon() const noexcept { return epsilon_; }  ///< added to the variance before the square root
  double momentum() const noexcept { return momentum_; }  ///< the running statistics' update weight
  /// gamma, the per-channel scale {C} ("weight").
  Tensor<T>& weight() noexcept { return gamma_; }
  /// gamma, the per-channel scale {C}.
  const Tensor<T>& weight() const noexcept { return gamma_; }
  /// beta, the per-channel shift {C} ("bias").
  Tensor<T>& bias() noexcept { return beta_; }
  /// beta, the per-channel shift {C}.
  const Tensor<T>& bias() const noexcept { return beta_; }
  /// The running mean {C}, what inference subtracts.
  Tensor<T>& running_mean() noexcept { return running_mean_; }
  /// The running mean {C}.
  const Tensor<T>& running_mean() const noexcept { return running_mean_; }
  /// The running (unbiased) variance {C}, what inference divides by (its square root, with epsilon).
  Tensor<T>& running_var() noexcept { return running_var_; }
  /// The running variance {C}.
  const Tensor<T>& running_var() const noexcept { return running_var_; }
  std::size_t parameter_count() const override { return 2 * channels_; }

  void zero_grad() override {
    for (Tensor<T>* t : {&gamma_grad_, &beta_grad_}) {
      t->resize(Shape{channels_});  // allocates the first time only
      std::fill_n(t->data(), t->size(), T(0));
    }
  }

 protected:
  void check_input(const Shape& in) const override {
    Layer<T>::check_input(in);
    if (in.rank() > 4 || in[1] != channels_)
      fail(errc::shape_mismatch, describe() + " needs an input [N, " + std::to_string(channels_) + ", H, W] (or [N, " +
                                     std::to_string(channels_) + "] or [N, " + std::to_string(channels_) + ", L]), got " +
                                     in.str());
    if (in.count() == 0) fail(errc::shape_mismatch, describe() + " got an empty plane in input " + in.str());
    if (this->training() && in.count() / channels_ < 2)
      fail(errc::shape_mismatch, describe() + " in training mode needs more than one value per channel, got input " +
                                     in.str());
  }
  Shape output_shape_impl(const Shape& in) const override { return in; }
  /// Three per element (subtract, scale, shift); training mode adds four for the statistics
  /// (the mean's add, the deviation's subtract, multiply and add).
  std::uint64_t flops_impl(const Shape& in) const override {
    return static_cast<std::uint64_t>(in.count()) * (this->training() ? 7 : 3);
  }

  void forward_impl(TensorView<const T> in, TensorView<T> out) override {
    const Geometry g = geometry(in.shape());
    if (this->training()) {
      batch_statistics(in.data(), g);
      const double unbiased = static_cast<double>(g.values) / static_cast<double>(g.values - 1);
      for (std::size_t c = 0; c < channels_; ++c) {
        running_mean_[c] = static_cast<T>((1 - momentum_) * running_mean_[c] + momentum_ * mean_[c]);
        running_var_[c] = static_cast<T>((1 - momentum_) * running_var_[c] + momentum_ * var_[c] * unbiased);
      }
    } else {
      for (std::size_t c = 0; c < channels_; ++c) {
        mean_[c] = running_mean_[c];
        var_[c] = running_var_[c];
      }
    }
    for (std::size_t n = 0; n < g.batch; ++n)
      for (std::size_t c = 0; c < channels_; ++c) {
        const T m = static_cast<T>(mean_[c]), s = static_cast<T>(gamma_[c] / std::sqrt(var_[c] + epsilon_)),
                b = beta_[c];
        const std::size_t at = (n * channels_ + c) * g.plane;
        // (x - m) s + b rather than x s + (b - m s): x - m is exact when x is near m, so a
        // channel with a large mean keeps its small deviations.
        kernels::map(in.data() + at, out.data() + at, g.plane, [m, s, b](auto x) {
          using V = decltype(x);
          return (x - V(m)) * V(s) + V(b);
        });
      }
  }

  /// Training mode: the gradient through the batch statistics (which depend on every input of
  /// the channel), recomputed from `in` rather than kept from the forward pass; inference mode:
  /// the affine map's gradient, the running statistics being constants.
  void backward_impl(TensorView<const T> in, TensorView<const T>, TensorView<const T> grad_out,
                     TensorView<T> grad_in) override {
    if (gamma_grad_.shape() != gamma_.shape()) zero_grad();
    const Geometry g = geometry(in.shape());
    const bool batch_stats = this->training();
    if (batch_stats) {
      batch_statistics(in.data(), g);
    } else {
      for (std::size_t c = 0; c < channels_; ++c) {
        mean_[c] = running_mean_[c];
        var_[c] = running_var_[c];
      }
    }
    // Per channel: sum g and sum g (x - mean), both in double.
    for (std::size_t c = 0; c < channels_; ++c) sum_g_[c] = sum_gx_[c] = 0;
    const T* x = in.data();
    const T* dy = grad_out.data();
    for (std::size_t n = 0; n < g.batch; ++n)
      for (std::size_t c = 0; c < channels_; ++c) {
        const std::size_t at = (n * channels_ + c) * g.plane;
        const double m = mean_[c];
        double sg = 0, sgx = 0;
        for (std::size_t i = 0; i < g.plane; ++i) {
          sg += dy[at + i];
          sgx += static_cast<double>(dy[at + i]) * (static_cast<double>(x[at + i]) - m);
        }
        sum_g_[c] += sg;
        sum_gx_[c] += sgx;
      }
    const double count = static_cast<double>(g.values);
    for (std::size_t c = 0; c < channels_; ++c) {
      const double invstd = 1 / std::sqrt(var_[c] + epsilon_);
      gamma_grad_[c] += static_cast<T>(sum_gx_[c] * invstd);  // d/dgamma = sum g xhat
      beta_grad_[c] += static_cast<T>(sum_g_[c]);
    }
    if (grad_in.data() == nullptr) return;
    for (std::size_t n = 0; n < g.batch; ++n)
      for (std::size_t c = 0; c < channels_; ++c) {
        // dx = a g + b (x - mean) + k with a = gamma invstd. Inference has b = k = 0; training
        // subtracts the parts that flow through the two statistics (each input moves its
        // channel's mean and variance): b = -a invstd^2 sum(g (x - mean)) / M, k = -a sum(g) / M.
        const double invstd = 1 / std::sqrt(var_[c] + epsilon_), ad = gamma_[c] * invstd;
        const T m = static_cast<T>(mean_[c]), a = static_cast<T>(ad);
        const T b = batch_stats ? static_cast<T>(-ad * invstd * invstd * sum_gx_[c] / count) : T(0);
        const T k = batch_stats ? static_cast<T>(-ad * sum_g_[c] / count) : T(0);
        const std::size_t at = (n * channels_ + c) * g.plane;
        kernels::map3(x + at, dy + at, dy + at, grad_in.data() + at, g.plane, [m, a, b, k](auto xv, auto gv, auto) {
          using V = decltype(xv);
          return gv * V(a) + (xv - V(m)) * V(b) + V(k);
        });
      }
  }

  std::vector<Parameter<T>> parameters_impl() override {
    return {{"weight", gamma_.view(), gamma_grad_.view()}, {"bias", beta_.view(), beta_grad_.view()}};
  }
  std::vector<Parameter<T>> buffers_impl() override {
    return {{"running_mean", running_mean_.view(), {}}, {"running_var", running_var_.view(), {}}};
  }

 private:
  // The sizes of a pass over an input that passed check_input().
  struct Geometry {
    std::size_t batch;   // N
    std::size_t plane;   // values per (sample, channel): H * W, L or 1
    std::size_t values;  // values per channel, N * plane
  };
  Geometry geometry(const Shape& in) const noexcept {
    const std::size_t plane = in.count() / (in[0] * channels_);
    return {in[0], plane, in[0] * plane};
  }

  // The batch mean and biased variance of each channel of `x` into mean_ and var_, in double and
  // in two passes (the deviations are taken from the finished mean: no cancellation).
  void batch_statistics(const T* x, const Geometry& g) {
    for (std::size_t c = 0; c < channels_; ++c) mean_[c] = var_[c] = 0;
    for (std::size_t n = 0; n < g.batch; ++n)
      for (std::size_t c = 0; c < channels_; ++c) {
        const T* p = x + (n * channels_ + c) * g.plane;
        double s = 0;
        for (std::size_t i = 0; i < g.plane; ++i) s += p[i];
        mean_[c] += s;
      }
    const double count = static_cast<double>(g.values);
    for (std::size_t c = 0; c < channels_; ++c) mean_[c] /= count;
    for (std::size_t n = 0; n < g.batch; ++n)
      for (std::size_t c = 0; c < channels_; ++c) {
        const T* p = x + (n * channels_ + c) * g.plane;
        const double m = mean_[c];
        double s = 0;
        for (std::size_t i = 0; i < g.plane; ++i) s += (p[i] - m) * (p[i] - m);
        var_[c] += s;
      }
    for (std::size_t c = 0; c < channels_; ++c) var_[c] /= count;
  }

  // A setting as a short decimal ("1e-05", "0.1") for messages and describe().
  static std::string number(double v) {
    std::ostringstream s;
    s << v;
    return s.str();
  }

  std::size_t channels_;
  double epsilon_, momentum_;
  Tensor<T> gamma_, beta_, running_mean_, running_var_;
  Tensor<T> gamma_grad_, beta_grad_;
  // Per-channel workspaces, sized once: the statistics of the current pass (batch or running)
  // and the backward pass's two sums.
  std::vector<double> mean_, var_, sum_g_, sum_gx_;
};

}  // namespace edgesplit

// edgesplit/nn/standardizer.hpp - input standardisation fitted on training data, kept in the model.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "edgesplit/core/kernels.hpp"
#include "edgesplit/nn/layer.hpp"

namespace edgesplit {

/// Which statistics a Standardizer keeps.
enum class Standardize {
  per_feature,  ///< one mean and std per input feature
  global,       ///< one mean and std over all features (keeps images' relative contrast)
};

/// y = (x - mean) / std, with mean and std fitted on training data by `fit`.
///
/// It is a layer so that it travels with the model: it is saved in the weights file (as the
/// buffers "mean" and "std", never trained), a split puts it in the edge half, and inference
/// applies it with no separate preprocessing step to forget. Features whose std is below
/// `epsilon` (constant pixels, say) are only centred: their std is stored as 1.
template <Real T>
class Standardizer final : public Layer<T> {
 public:
  /// Normalises `features` inputs, per feature or with one global mean and std; `epsilon` is the smallest std
  /// that scales.
  explicit Standardizer(std::size_t features, Standardize mode = Standardize::per_feature,
                        double epsilon = 1e-6)
      : features_(features), mode_(mode), epsilon_(epsilon) {
    if (features == 0) fail(errc::invalid_argument, "Standardizer needs features > 0");
    if (!(epsilon > 0)) fail(errc::invalid_argument, "Standardizer epsilon must be > 0");
    const std::size_t n = mode == Standardize::global ? 1 : features;
    mean_ = Tensor<T>(Shape{n}, T(0));
    std_ = Tensor<T>(Shape{n}, T(1));
  }

  std::string_view name() const noexcept override { return "Standardizer"; }
  std::string describe() const override {
    return "Standardizer(" + std::to_string(features_) + (mode_ == Standardize::global ? ", global)" : ")");
  }
  std::unique_ptr<Layer<T>> clone() const override { return std::make_unique<Standardizer>(*this); }
  LayerSpec spec() const override {
    return {"Standardizer",
            {{"features", features_}, {"global", mode_ == Standardize::global ? 1u : 0u}},
            {{"epsilon", epsilon_}}};
  }

  std::size_t features() const noexcept { return features_; }  ///< the input width
  Standardize mode() const noexcept { return mode_; }  ///< per feature or global
  /// The fitted mean ({features}, or {1} when global).
  const Tensor<T>& mean() const noexcept { return mean_; }
  /// The fitted population standard deviation, same shape as mean().
  const Tensor<T>& stddev() const noexcept { return std_; }

  /// Fits mean and std (population std, two passes in double) on `data` of shape {N, features}.
  void fit(TensorView<const T> data) {
    check_input(data.shape());
    const std::size_t rows = data.shape().batch(), k = mean_.size(), per = features_ / k;
    std::vector<double> sum(k, 0.0), sq(k, 0.0);
    const T* x = data.data();
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t f = 0; f < features_; ++f) sum[f / per] += x[r * features_ + f];
    const double count = static_cast<double>(rows) * static_cast<double>(per);
    for (auto& s : sum) s /= count;
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t f = 0; f < features_; ++f) {
        const double d = x[r * features_ + f] - sum[f / per];
        sq[f / per] += d * d;
      }
    for (std::size_t i = 0; i < k; ++i) {
      const double sd = std::sqrt(sq[i] / count);
      mean_[i] = static_cast<T>(sum[i]);
      std_[i] = static_cast<T>(sd < epsilon_ ? 1.0 : sd);
    }
  }

  /// Standardises `data` in place (to preprocess a data set once instead of every batch).
  void transform(TensorView<T> data) { this->forward(data, data); }

 protected:
  void check_input(const Shape& in) const override {
    Layer<T>::check_input(in);
    if (in.features() != features_)
      fail(errc::shape_mismatch, describe() + " got input " + in.str());
  }
  Shape output_shape_impl(const Shape& in) const override { return in; }
  std::uint64_t flops_impl(const Shape& in) const override { return 2 * in.count(); }

  void forward_impl(TensorView<const T> in, TensorView<T> out) override {
    const std::size_t rows = in.shape().batch();
    if (mode_ == Standardize::global) {
      const T m = mean_[0], s = std_[0];
      kernels::map(in.data(), out.data(), in.size(), [m, s](auto x) {
        using V = decltype(x);
        return (x - V(m)) / V(s);
      });
      return;
    }
    for (std::size_t r = 0; r < rows; ++r)
      kernels::map3(in.data() + r * features_, mean_.data(), std_.data(), out.data() + r * features_,
                    features_, [](auto x, auto m, auto s) { return (x - m) / s; });
  }

  void backward_impl(TensorView<const T>, TensorView<const T>, TensorView<const T> grad_out,
                     TensorView<T> grad_in) override {
    if (grad_in.data() == nullptr) return;
    const std::size_t rows = grad_out.shape().batch(), per = features_ / std_.size();
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t f = 0; f < features_; ++f)
        grad_in[r * features_ + f] = grad_out[r * features_ + f] / std_[f / per];
  }

  std::vector<Parameter<T>> buffers_impl() override {
    return {{"mean", mean_.view(), {}}, {"std", std_.view(), {}}};
  }

 private:
  std::size_t features_;
  Standardize mode_;
  double epsilon_;
  Tensor<T> mean_, std_;
};

}  // namespace edgesplit

// edgesplit/nn/dropout.hpp - inverted dropout, seeded so training runs repeat bit for bit.
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

#include "edgesplit/core/kernels.hpp"
#include "edgesplit/core/random.hpp"
#include "edgesplit/nn/layer.hpp"

namespace edgesplit {

/// Zeroes each element with probability `p` in training mode and scales the survivors by
/// 1 / (1 - p), so the expected activation is unchanged and inference is the identity (no
/// rescaling at inference, and a split model's edge half needs no knowledge of dropout).
///
/// The mask comes from the layer's own `Rng`, seeded at construction: the same seed and the same
/// sequence of calls give the same masks on every platform. Copies (and `Sequential::split`)
/// carry the generator's state with them.
template <Real T>
class Dropout final : public Layer<T> {
 public:
  /// Drops each element with probability `p` in [0, 1) in training mode; `seed` makes the masks repeatable.
  explicit Dropout(double p, std::uint64_t seed = 0x5eed) : p_(p), seed_(seed), rng_(seed) {
    if (!(p >= 0 && p < 1)) fail(errc::invalid_argument, "Dropout p must be in [0, 1)");
    // Survival test on 32 random bits: keep when bits < (1 - p) 2^32.
    keep_below_ = static_cast<std::uint64_t>(std::ldexp(1.0 - p, 32));
    scale_ = static_cast<T>(1.0 / (1.0 - p));
  }

  std::string_view name() const noexcept override { return "Dropout"; }
  std::string describe() const override { return "Dropout(" + std::to_string(p_) + ")"; }
  std::unique_ptr<Layer<T>> clone() const override { return std::make_unique<Dropout>(*this); }
  LayerSpec spec() const override { return {"Dropout", {{"seed", seed_}}, {{"p", p_}}}; }

  double rate() const noexcept { return p_; }  ///< the drop probability p
  /// Restarts the mask sequence from `seed`.
  void reseed(std::uint64_t seed) {
    seed_ = seed;
    rng_ = Rng(seed);
  }
  /// While on, training-mode forward passes reuse the latest mask instead of drawing a new one
  /// (for gradient checks, which must see the same function on every evaluation).
  void hold_mask(bool on) noexcept { hold_ = on; }

 protected:
  Shape output_shape_impl(const Shape& in) const override { return in; }
  std::uint64_t flops_impl(const Shape& in) const override { return in.count(); }

  void forward_impl(TensorView<const T> in, TensorView<T> out) override {
    masked_ = this->training() && p_ > 0;
    if (!masked_) {
      copy(in, out);
      return;
    }
    if (!hold_ || !(mask_.shape() == in.shape())) draw_mask(in.shape());
    kernels::map3(in.data(), mask_.data(), mask_.data(), out.data(), in.size(),
                  [](auto x, auto m, auto) { return x * m; });
  }

  void backward_impl(TensorView<const T>, TensorView<const T>, TensorView<const T> grad_out,
                     TensorView<T> grad_in) override {
    if (grad_in.data() == nullptr) return;
    if (!masked_) {
      copy(grad_out, grad_in);
      return;
    }
    kernels::map3(grad_out.data(), mask_.data(), mask_.data(), grad_in.data(), grad_out.size(),
                  [](auto g, auto m, auto) { return g * m; });
  }

 private:
  // One draw from the layer's Rng seeds a SplitMix64 stream (Steele et al., 2014) for the whole
  // mask: the Mersenne Twister costs ~4x more per element and dominated the step with dropout on.
  // Each 64-bit output gives two 32-bit survival tests.
  void draw_mask(const Shape& s) {
    mask_.resize(s);
    T* m = mask_.data();
    const std::size_t n = mask_.size();
    std::uint64_t state = rng_.next();
    auto next = [&state] {
      std::uint64_t z = (state += 0x9e3779b97f4a7c15u);
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
      return z ^ (z >> 31);
    };
    std::size_t i = 0;
    for (; i + 2 <= n; i += 2) {
      const std::uint64_t r = next();
      m[i] = scale_ * static_cast<T>((r & 0xffffffffu) < keep_below_);
      m[i + 1] = scale_ * static_cast<T>((r >> 32) < keep_below_);
    }
    if (i < n) m[i] = scale_ * static_cast<T>((next() & 0xffffffffu) < keep_below_);
  }

  double p_;
  std::uint64_t seed_;
  Rng rng_;
  std::uint64_t keep_below_ = 0;
  T scale_ = 1;
  Tensor<T> mask_;
  bool masked_ = false;
  bool hold_ = false;
};

}  // namespace edgesplit

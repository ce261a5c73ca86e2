// edgesplit/nn/optimizer.hpp - SGD, Adam and AdamW, and learning-rate schedules.
//
// The update of each parameter is one element-wise formula (a "rule" over V, a scalar or an
// xsimd batch, like the activation policies), run by a SIMD driver with a scalar tail; a scalar
// reference driver beside it is what the tests compare the SIMD path against.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <span>
#include <string>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/kernels.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/nn/layer.hpp"

namespace edgesplit {

/// Optimizer update rules, one formula per rule for SIMD batches and scalars, and their drivers.
namespace optim {

/// Plain SGD with L2 weight decay: w -= lr (g + wd w).
template <Real T>
struct SgdRule {
  static constexpr std::size_t slots = 0;  ///< state tensors per parameter
  ///@{
  /// Learning rate and L2 weight decay, in the parameter type.
  T lr, weight_decay;
  ///@}
  /// One update of weights `w` from gradient `g` (scalar or SIMD batch).
  template <class V>
  void operator()(V& w, V g, V&, V&) const {
    w = w - V(lr) * (g + V(weight_decay) * w);
  }
};

/// SGD with momentum and L2 weight decay (PyTorch's SGD, dampening 0):
/// g' = g + wd w; buf = mu buf + g'; w -= lr (nesterov ? g' + mu buf : buf).
template <Real T>
struct MomentumRule {
  static constexpr std::size_t slots = 1;  ///< state tensors per parameter: the momentum buffer
  ///@{
  /// Learning rate, momentum and L2 weight decay.
  T lr, momentum, weight_decay;
  ///@}
  bool nesterov;  ///< Nesterov's look-ahead form
  /// One update of `w` and its momentum buffer `buf`.
  template <class V>
  void operator()(V& w, V g, V& buf, V&) const {
    g = g + V(weight_decay) * w;
    buf = V(momentum) * buf + g;
    w = w - V(lr) * (nesterov ? g + V(momentum) * buf : buf);
  }
};

/// Adam / AdamW with bias correction, in PyTorch's arrangement of the arithmetic:
/// (AdamW: w *= 1 - lr wd)  (Adam: g += wd w)
/// m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
/// w -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps).
/// `step_size` = lr / (1 - b1^t) and `inv_sqrt_bc2` = 1 / sqrt(1 - b2^t) are computed once per step.
template <Real T>
struct AdamRule {
  static constexpr std::size_t slots = 2;  ///< state tensors per parameter: first and second moments
  ///@{
  /// Per-step constants: betas, epsilon, the bias-corrected step size and 1/sqrt(1 - beta2^t), L2 decay,
  /// decoupled decay factor.
  T beta1, beta2, eps, step_size, inv_sqrt_bc2, l2, decay_factor;
  ///@}
  /// One update of `w` and its moments `m`, `v`.
  template <class V>
  void operator()(V& w, V g, V& m, V& v) const {
    g = g + V(l2) * w;
    w = w * V(decay_factor);
    m = V(beta1) * m + V(T(1) - beta1) * g;
    v = V(beta2) * v + V(T(1) - beta2) * g * g;
    w = w - V(step_size) * m / (xsimd::sqrt(v) * V(inv_sqrt_bc2) + V(eps));
  }
};

/// Scalar reference for `apply` (and its tail).
template <Real T, class Rule>
void apply_scalar(const Rule& rule, T* w, const T* g, T* s1, T* s2, std::size_t n) {
  T unused1 = 0, unused2 = 0;
  for (std::size_t i = 0; i < n; ++i)
    rule(w[i], g[i], Rule::slots >= 1 ? s1[i] : unused1, Rule::slots >= 2 ? s2[i] : unused2);
}

/// Applies `rule` to n elements: SIMD batches, then a scalar tail. The state arrays beyond
/// `Rule::slots` are never touched (and may be null).
/// Where the target has no SIMD register for T (double on 32-bit ARM) it is the scalar loop.
template <Real T, class Rule>
void apply(const Rule& rule, T* w, const T* g, T* s1, T* s2, std::size_t n) {
  std::size_t i = 0;
  if constexpr (kernels::has_simd<T>) {
    using B = xsimd::batch<T>;
    constexpr std::size_t W = B::size;
    for (; i + W <= n; i += W) {
      B wv = B::load_unaligned(w + i), s1v(T(0)), s2v(T(0));
      if constexpr (Rule::slots >= 1) s1v = B::load_unaligned(s1 + i);
      if constexpr (Rule::slots >= 2) s2v = B::load_unaligned(s2 + i);
      rule(wv, B::load_unaligned(g + i), s1v, s2v);
      wv.store_unaligned(w + i);
      if constexpr (Rule::slots >= 1) s1v.store_unaligned(s1 + i);
      if constexpr (Rule::slots >= 2) s2v.store_unaligned(s2 + i);
    }
  }
  apply_scalar(rule, w + i, g + i, Rule::slots >= 1 ? s1 + i : nullptr, Rule::slots >= 2 ? s2 + i : nullptr, n - i);
}

}  // namespace optim

/// Updates parameters from their gradients. State (momentum, moments) is kept per position in
/// the parameter list, so every `step` must get the same list: same length, same shapes, in the
/// same order (errc::shape_mismatch otherwise). Gradients must have been computed (non-empty).
template <Real T>
class Optimizer {
 public:
  virtual ~Optimizer() = default;

  /// The current learning rate (the Trainer's schedule sets it every step).
  double learning_rate() const noexcept { return lr_; }
  /// errc::invalid_argument unless `lr` is finite and >= 0.
  void set_learning_rate(double lr) {
    if (!(lr >= 0) || !std::isfinite(lr)) fail(errc::invalid_argument, "learning rate must be finite and >= 0");
    lr_ = lr;
  }
  /// Number of steps taken (Adam's t).
  std::uint64_t steps() const noexcept { return steps_; }
  /// Forgets all state, as if new.
  void reset() {
    state_.clear();
    shapes_.clear();
    steps_ = 0;
  }

  /// Applies one update to every parameter from its gradient; the list must be the same as on the first step.
  void step(std::span<const Parameter<T>> params) {
    bind(params);
    ++steps_;
    begin_step();
    for (std::size_t i = 0; i < params.size(); ++i) {
      const Parameter<T>& p = params[i];
      update(p.value.data(), p.grad.data(), state_[i * 2].data(), state_[i * 2 + 1].data(), p.value.size());
    }
  }
  /// Same as the span overload, for `model.parameters()`.
  void step(const std::vector<Parameter<T>>& params) { step(std::span<const Parameter<T>>(params)); }

 protected:
  /// For derived optimizers: `slots` state tensors per parameter (0, 1 or 2).
  Optimizer(double lr, std::size_t slots) : slots_(slots) { set_learning_rate(lr); }
  /// Called once per step after the step counter moves (bias corrections).
  virtual void begin_step() {}
  /// Updates `n` weights from their gradients and state slots (a SIMD kernel with a scalar tail).
  virtual void update(T* w, const T* g, T* s1, T* s2, std::size_t n) = 0;

 private:
  void bind(std::span<const Parameter<T>> params) {
    for (const auto& p : params)
      if (p.grad.data() == nullptr || !(p.grad.shape() == p.value.shape()))
        fail(errc::invalid_argument, "parameter '" + p.name + "' has no gradient: run a backward pass first");
    if (shapes_.empty() && steps_ == 0) {
      for (const auto& p : params) {
        shapes_.push_back(p.value.shape());
        for (std::size_t s = 0; s < 2; ++s) state_.push_back(s < slots_ ? Tensor<T>(p.value.shape(), T(0)) : Tensor<T>());
      }
      return;
    }
    if (params.size() != shapes_.size())
      fail(errc::shape_mismatch, "optimizer was given " + std::to_string(params.size()) + " parameters, it holds state for " +
                                     std::to_string(shapes_.size()));
    for (std::size_t i = 0; i < params.size(); ++i)
      if (!(params[i].value.shape() == shapes_[i]))
        fail(errc::shape_mismatch, "parameter '" + params[i].name + "' changed shape to " + params[i].value.shape().str() +
                                       " from " + shapes_[i].str());
  }

  double lr_ = 0;
  std::size_t slots_;
  std::uint64_t steps_ = 0;
  std::vector<Shape> shapes_;
  std::vector<Tensor<T>> state_;  // two per parameter, empty when the rule has fewer slots
};

/// Stochastic gradient descent with optional momentum (and Nesterov) and L2 weight decay.
template <Real T>
class SGD final : public Optimizer<T> {
 public:
  /// Plain SGD, or with momentum (PyTorch's, dampening 0), L2 weight decay and Nesterov's form.
  explicit SGD(double lr, double momentum = 0, double weight_decay = 0, bool nesterov = false)
      : Optimizer<T>(lr, momentum > 0 ? 1 : 0), momentum_(momentum), weight_decay_(weight_decay), nesterov_(nesterov) {
    if (!(momentum >= 0 && momentum < 1)) fail(errc::invalid_argument, "SGD momentum must be in [0, 1)");
    if (!(weight_decay >= 0)) fail(errc::invalid_argument, "SGD weight decay must be >= 0");
    if (nesterov && momentum == 0) fail(errc::invalid_argument, "Nesterov SGD needs momentum > 0");
  }

 protected:
  /// The SGD or momentum rule over the SIMD driver.
  void update(T* w, const T* g, T* s1, T*, std::size_t n) override {
    const T lr = static_cast<T>(this->learning_rate()), wd = static_cast<T>(weight_decay_);
    if (momentum_ > 0)
      optim::apply(optim::MomentumRule<T>{lr, static_cast<T>(momentum_), wd, nesterov_}, w, g, s1, static_cast<T*>(nullptr), n);
    else
      optim::apply(optim::SgdRule<T>{lr, wd}, w, g, static_cast<T*>(nullptr), static_cast<T*>(nullptr), n);
  }

 private:
  double momentum_, weight_decay_;
  bool nesterov_;
};

/// Adam (Kingma & Ba) with bias correction. `weight_decay` is L2 added to the gradient, or, with
/// `decoupled` (AdamW, Loshchilov & Hutter), a shrink of the weights by lr * wd each step.
template <Real T>
class Adam : public Optimizer<T> {
 public:
  /// Adam (Kingma & Ba); `decoupled` makes the decay AdamW's.
  explicit Adam(double lr = 1e-3, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8,
                double weight_decay = 0, bool decoupled = false)
      : Optimizer<T>(lr, 2), beta1_(beta1), beta2_(beta2), eps_(eps), weight_decay_(weight_decay), decoupled_(decoupled) {
    if (!(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1))
      fail(errc::invalid_argument, "Adam betas must be in [0, 1)");
    if (!(eps > 0)) fail(errc::invalid_argument, "Adam eps must be > 0");
    if (!(weight_decay >= 0)) fail(errc::invalid_argument, "Adam weight decay must be >= 0");
  }
  /// The rule of the current step (after `begin_step`), exposed for the SIMD-vs-scalar test.
  optim::AdamRule<T> rule() const { return rule_; }

 protected:
  void begin_step() override {
    const double t = static_cast<double>(this->steps()), lr = this->learning_rate();
    const double bc1 = 1 - std::pow(beta1_, t), bc2 = 1 - std::pow(beta2_, t);
    rule_ = {static_cast<T>(beta1_),
             static_cast<T>(beta2_),
             static_cast<T>(eps_),
             static_cast<T>(lr / bc1),
             static_cast<T>(1 / std::sqrt(bc2)),
             static_cast<T>(decoupled_ ? 0 : weight_decay_),
             static_cast<T>(decoupled_ ? 1 - lr * weight_decay_ : 1)};
  }
  /// The Adam rule over the SIMD driver.
  void update(T* w, const T* g, T* s1, T* s2, std::size_t n) override { optim::apply(rule_, w, g, s1, s2, n); }

 private:
  double beta1_, beta2_, eps_, weight_decay_;
  bool decoupled_;
  optim::AdamRule<T> rule_{};
};

/// Adam with decoupled weight decay (default 0.01, as in PyTorch).
template <Real T>
class AdamW final : public Adam<T> {
 public:
  /// Adam with decoupled weight decay (Loshchilov & Hutter).
  explicit AdamW(double lr = 1e-3, double weight_decay = 0.01, double beta1 = 0.9, double beta2 = 0.999,
                 double eps = 1e-8)
      : Adam<T>(lr, beta1, beta2, eps, weight_decay, true) {}
};

/// Learning rate as a function of training progress, a factor applied to the optimizer's base
/// rate. Progress is counted in epochs, fractional within an epoch (the Trainer updates the
/// rate before every step).
struct LrSchedule {
  /// The shape of the schedule.
  enum class Kind { constant, step, cosine };
  Kind kind = Kind::constant;  ///< which schedule
  std::size_t step_epochs = 1;  ///< step: multiply by `gamma` every `step_epochs` whole epochs
  double gamma = 0.1;  ///< step: the factor applied every `step_epochs`
  double min_factor = 0;        ///< cosine: the factor reached at the end of training

  /// The base rate throughout.
  static LrSchedule constant() { return {}; }
  /// The rate times `gamma` every `every_epochs` epochs; errc::invalid_argument unless both are positive.
  static LrSchedule step(std::size_t every_epochs, double gamma) {
    if (every_epochs == 0 || !(gamma > 0)) fail(errc::invalid_argument, "step schedule needs every > 0 and gamma > 0");
    return {Kind::step, every_epochs, gamma, 0};
  }
  /// Half a cosine from 1 to `min_factor` over the whole run (Loshchilov & Hutter, no restarts).
  static LrSchedule cosine(double min_factor = 0) {
    if (!(min_factor >= 0 && min_factor <= 1)) fail(errc::invalid_argument, "cosine min factor must be in [0, 1]");
    return {Kind::cosine, 1, 0.1, min_factor};
  }

  /// The factor at `epoch` (fractional, from 0) of a run of `total_epochs`.
  double factor(double epoch, double total_epochs) const {
    switch (kind) {
      case Kind::constant: return 1;
      case Kind::step: return std::pow(gamma, std::floor(epoch / static_cast<double>(step_epochs)));
      case Kind::cosine: {
        const double t = total_epochs > 0 ? std::min(epoch / total_epochs, 1.0) : 1.0;
        return min_factor + (1 - min_factor) * 0.5 * (1 + std::cos(std::numbers::pi * t));
      }
    }
    return 1;
  }
};

}  // namespace edgesplit

// edgesplit/nn/loss.hpp - losses on a batch of model outputs, with their gradients.
//
// Conventions shared by every loss here (docs/training.md has the formulas):
// - inputs are batch-first {N, C} (any rank whose trailing dimensions multiply to C);
// - the value returned is the mean over the N samples, computed in double;
// - a gradient view, when given (non-empty), receives `weight * dL/d(input)` ADDED to what it
//   holds, so several losses on the same output combine by calling each in turn on one buffer
//   (zero it first). An empty view skips that gradient.
// - nothing allocates: the losses run inside the training step, which reuses its buffers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/kernels.hpp"
#include "edgesplit/core/tensor.hpp"

namespace edgesplit {

namespace detail {
template <class T>
void check_same_shape(TensorView<const T> a, TensorView<const T> b, const char* what) {
  if (!(a.shape() == b.shape()))
    fail(errc::shape_mismatch, std::string(what) + ": shapes " + a.shape().str() + " and " + b.shape().str());
  if (a.shape().rank() < 2 || a.shape().batch() == 0)
    fail(errc::invalid_argument, std::string(what) + " needs a non-empty batch-first input, got " + a.shape().str());
}
template <class T>
void check_grad(TensorView<T> grad, const Shape& want, const char* what) {
  if (grad.data() != nullptr && !(grad.shape() == want))
    fail(errc::shape_mismatch, std::string(what) + " gradient has shape " + grad.shape().str() + ", expected " + want.str());
}
template <class T>
void check_labels(TensorView<const T> logits, std::span<const std::int32_t> labels, const char* what) {
  if (logits.shape().rank() < 2 || logits.shape().batch() == 0)
    fail(errc::invalid_argument, std::string(what) + " needs a non-empty batch-first input, got " + logits.shape().str());
  if (labels.size() != logits.shape().batch())
    fail(errc::shape_mismatch, std::string(what) + ": " + std::to_string(labels.size()) + " labels for a batch of " +
                                   std::to_string(logits.shape().batch()));
  const auto classes = static_cast<std::int64_t>(logits.shape().features());
  for (std::int32_t y : labels)
    if (y < 0 || y >= classes)
      fail(errc::invalid_argument, std::string(what) + ": label " + std::to_string(y) + " outside [0, " +
                                       std::to_string(classes) + ")");
}
/// log(sum(exp(x / temperature))) of one row, stable: the maximum is taken out first.
template <class T>
double log_sum_exp(const T* x, std::size_t n, double inv_temperature) {
  const double m = static_cast<double>(kernels::max(x, n)) * inv_temperature;
  double s = 0;
  for (std::size_t j = 0; j < n; ++j) s += std::exp(static_cast<double>(x[j]) * inv_temperature - m);
  return m + std::log(s);
}
}  // namespace detail

/// Mean squared error over all elements: L = 1/(N C) sum_ij (p_ij - t_ij)^2,
/// dL/dp = 2 (p - t) / (N C). (PyTorch's MSELoss with its default mean reduction.)
template <Real T>
double mse_loss(TensorView<const T> pred, TensorView<const T> target, TensorView<T> grad_pred = {},
                double weight = 1) {
  detail::check_same_shape(pred, target, "mse_loss");
  detail::check_grad(grad_pred, pred.shape(), "mse_loss");
  const std::size_t n = pred.size();
  double total = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(pred[i]) - static_cast<double>(target[i]);
    total += d * d;
  }
  if (grad_pred.data() != nullptr) {
    const T k = static_cast<T>(2 * weight / static_cast<double>(n));
    kernels::map3(pred.data(), target.data(), grad_pred.data(), grad_pred.data(), n,
                  [k](auto p, auto t, auto g) { return g + decltype(p)(k) * (p - t); });
  }
  return total / static_cast<double>(n);
}

/// Softmax cross-entropy of logits z against class labels, fused and stable:
/// L = 1/N sum_i (logsumexp(z_i) - z_i[y_i]), dL/dz = (softmax(z) - onehot(y)) / N.
/// Labels must be in [0, C) (errc::invalid_argument otherwise).
template <Real T>
double softmax_cross_entropy(TensorView<const T> logits, std::span<const std::int32_t> labels,
                             TensorView<T> grad = {}, double weight = 1) {
  detail::check_labels(logits, labels, "softmax_cross_entropy");
  detail::check_grad(grad, logits.shape(), "softmax_cross_entropy");
  const std::size_t rows = logits.shape().batch(), cols = logits.shape().features();
  const double k = weight / static_cast<double>(rows);
  double total = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    const T* z = logits.data() + r * cols;
    const double lse = detail::log_sum_exp(z, cols, 1.0);
    total += lse - static_cast<double>(z[labels[r]]);
    if (grad.data() == nullptr) continue;
    T* g = grad.data() + r * cols;
    for (std::size_t j = 0; j < cols; ++j) g[j] += static_cast<T>(k * std::exp(static_cast<double>(z[j]) - lse));
    g[labels[r]] -= static_cast<T>(k);
  }
  return total / static_cast<double>(rows);
}

/// Knowledge distillation (Hinton et al., 2015): with q = softmax(teacher / tau) and
/// p = softmax(student / tau),
///   L = tau^2 / N sum_i KL(q_i || p_i) = tau^2 / N sum_ij q_ij (log q_ij - log p_ij).
/// The tau^2 factor keeps the gradient's size independent of tau:
///   dL/d student = tau / N (p - q),
///   dL/d teacher = tau / N q (a - <q, a>) with a = log q - log p   (only when the teacher trains too).
template <Real T>
double kl_distillation(TensorView<const T> student, TensorView<const T> teacher, double temperature,
                       TensorView<T> grad_student = {}, TensorView<T> grad_teacher = {}, double weight = 1) {
  detail::check_same_shape(student, teacher, "kl_distillation");
  detail::check_grad(grad_student, student.shape(), "kl_distillation student");
  detail::check_grad(grad_teacher, teacher.shape(), "kl_distillation teacher");
  if (!(temperature > 0) || !std::isfinite(temperature))
    fail(errc::invalid_argument, "kl_distillation temperature must be > 0");
  const std::size_t rows = student.shape().batch(), cols = student.shape().features();
  const double inv_t = 1 / temperature, k = weight * temperature / static_cast<double>(rows);
  double total = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    const T* s = student.data() + r * cols;
    const T* t = teacher.data() + r * cols;
    const double lse_s = detail::log_sum_exp(s, cols, inv_t), lse_t = detail::log_sum_exp(t, cols, inv_t);
    double kl = 0;
    for (std::size_t j = 0; j < cols; ++j) {
      const double log_q = static_cast<double>(t[j]) * inv_t - lse_t;
      const double log_p = static_cast<double>(s[j]) * inv_t - lse_s;
      const double q = std::exp(log_q);
      kl += q * (log_q - log_p);
      if (grad_student.data() != nullptr)
        grad_student.data()[r * cols + j] += static_cast<T>(k * (std::exp(log_p) - q));
    }
    total += kl;
    if (grad_teacher.data() == nullptr) continue;
    for (std::size_t j = 0; j < cols; ++j) {
      const double log_q = static_cast<double>(t[j]) * inv_t - lse_t;
      const double log_p = static_cast<double>(s[j]) * inv_t - lse_s;
      grad_teacher.data()[r * cols + j] += static_cast<T>(k * std::exp(log_q) * (log_q - log_p - kl));
    }
  }
  return temperature * temperature * total / static_cast<double>(rows);
}

/// Index of the largest logit of row `r` (the first one on ties).
template <class T>
std::size_t argmax_row(TensorView<const T> logits, std::size_t r) {
  const std::size_t cols = logits.shape().features();
  const T* z = logits.data() + r * cols;
  return static_cast<std::size_t>(std::max_element(z, z + cols) - z);
}

/// Number of rows whose largest logit is at the label (top-1 hits).
template <Real T>
std::size_t count_correct(TensorView<const T> logits, std::span<const std::int32_t> labels) {
  detail::check_labels(logits, labels, "count_correct");
  std::size_t hits = 0;
  for (std::size_t r = 0; r < labels.size(); ++r)
    hits += argmax_row(logits, r) == static_cast<std::size_t>(labels[r]);
  return hits;
}

/// Number of rows where two models' top-1 classes differ: the edge-cloud disagreement.
template <Real T>
std::size_t count_disagreements(TensorView<const T> a, TensorView<const T> b) {
  detail::check_same_shape(a, b, "count_disagreements");
  std::size_t n = 0;
  for (std::size_t r = 0; r < a.shape().batch(); ++r) n += argmax_row(a, r) != argmax_row(b, r);
  return n;
}

}  // namespace edgesplit

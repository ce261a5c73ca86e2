// edgesplit/nn/testing.hpp - the gradient checker edgesplit's own tests use, for testing your
// layers: every gradient a backward pass computes, against central differences of the loss.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "edgesplit/core/random.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/nn/graph.hpp"
#include "edgesplit/nn/layer.hpp"
#include "edgesplit/nn/sequential.hpp"

/// Tools for testing layers and models: gradient checks by central differences.
///
/// Why these numbers: (f(x + h) - f(x - h)) / 2h = f'(x) + h^2 f'''(x) / 6 + O(h^4), and rounding
/// f's value (computed in double, unit roundoff u = 1.1e-16) adds about u |f| / h. With the step
/// h = 1e-5 and |f| ~ 10 both are near 1e-10 against derivatives of order 0.1 to 1, so a correct
/// gradient shows a relative error near 1e-9; `default_tolerance` (1e-6) leaves three orders of
/// margin and any wrong term gives an error of order 1. Check in double (Layer<double>): in float
/// the rounding term alone is ~1e-2. Kinks (ReLU at 0, a max between equal inputs) are not
/// differentiable: draw inputs away from them (a max pooling test should use distinct inputs).
namespace edgesplit::testing {

inline constexpr double default_step = 1e-5;       ///< the central-difference step h
inline constexpr double default_tolerance = 1e-6;  ///< the largest relative error of a correct gradient

/// ||a - b|| / max(||a||, ||b||), Euclidean norms; 0 when both are zero. The error measure of a
/// whole gradient tensor: independent of its scale, and not fooled by a few tiny elements.
inline double relative_error(std::span<const double> a, std::span<const double> b) {
  double diff = 0, na = 0, nb = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    diff += (a[i] - b[i]) * (a[i] - b[i]);
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  const double scale = std::max(std::sqrt(na), std::sqrt(nb));
  return scale == 0 ? 0 : std::sqrt(diff) / scale;
}

/// The gradient of `loss` with respect to every element of `x` by central differences: each
/// element perturbed in place by +-`step` and restored.
inline std::vector<double> numeric_gradient(const std::function<double()>& loss, TensorView<double> x,
                                            double step = default_step) {
  std::vector<double> g(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + step;
    const double up = loss();
    x[i] = keep - step;
    const double down = loss();
    x[i] = keep;
    g[i] = (up - down) / (2 * step);
  }
  return g;
}

/// The outcome of a gradient check: one entry per tensor checked.
struct GradientReport {
  /// One checked tensor: a parameter ("weight", "conv1.bias") or an input ("input").
  struct Entry {
    std::string name;           ///< what was checked
    double relative_error = 0;  ///< analytic against numeric, see relative_error()
    double norm = 0;            ///< the larger of the two gradients' norms (0: nothing flows there)
  };
  std::vector<Entry> entries;  ///< parameters first, in the model's order, then inputs

  /// The largest relative error over every entry.
  double worst() const {
    double w = 0;
    for (const auto& e : entries) w = std::max(w, e.relative_error);
    return w;
  }
  /// Whether every gradient is within `tolerance` of its central difference.
  bool ok(double tolerance = default_tolerance) const { return worst() < tolerance; }
  /// One line per entry ("weight: relative error 3.1e-10"), for a test's failure message.
  std::string str() const {
    std::string s;
    for (const auto& e : entries) {
      char line[64];
      std::snprintf(line, sizeof line, ": relative error %.3g, norm %.3g\n", e.relative_error, e.norm);
      s += e.name + line;
    }
    return s;
  }
};

/// The general check: `analytic()` must run a backward pass that fills the gradients of
/// `params` (zeroed first) and of the inputs `xs` into `grad_xs`; each is compared with central
/// differences of `loss()`, which must read the current values of the parameters and inputs.
inline GradientReport check_gradients(const std::function<double()>& loss, const std::function<void()>& analytic,
                                      const std::vector<Parameter<double>>& params,
                                      const std::vector<TensorView<double>>& xs = {},
                                      const std::vector<TensorView<const double>>& grad_xs = {},
                                      double step = default_step) {
  analytic();
  std::vector<std::vector<double>> want;
  for (const auto& p : params) want.emplace_back(p.grad.data(), p.grad.data() + p.grad.size());
  for (const auto& g : grad_xs) want.emplace_back(g.data(), g.data() + g.size());
  GradientReport r;
  const auto add = [&](const std::string& name, const std::vector<double>& a, const std::vector<double>& n) {
    double na = 0, nn = 0;
    for (double v : a) na += v * v;
    for (double v : n) nn += v * v;
    r.entries.push_back({name, relative_error(a, n), std::sqrt(std::max(na, nn))});
  };
  for (std::size_t k = 0; k < params.size(); ++k)
    add(params[k].name, want[k], numeric_gradient(loss, params[k].value, step));
  for (std::size_t k = 0; k < xs.size() && k < grad_xs.size(); ++k)
    add(xs.size() == 1 ? std::string("input") : "input " + std::to_string(k), want[params.size() + k],
        numeric_gradient(loss, xs[k], step));
  return r;
}

/// Checks `layer`'s backward pass on the input `x`: the scalar L = sum(out * R), R fixed and
/// uniform in [-1, 1] from `seed`, so that dL/dout = R; compares dL/dx and every dL/dparameter.
/// Pass the input to keep it away from kinks (see the namespace's comment).
inline GradientReport check_layer_gradients(Layer<double>& layer, Tensor<double> x, std::uint64_t seed = 1) {
  const Shape in_shape = x.shape(), out_shape = layer.output_shape(in_shape);
  Rng rng(seed + 1);
  Tensor<double> r(out_shape), out(out_shape), grad_in(in_shape);
  for (double& v : r.span()) v = rng.uniform(-1, 1);
  const auto loss = [&] {
    layer.forward(x.cview(), out.view());
    double s = 0;
    for (std::size_t i = 0; i < out.size(); ++i) s += out[i] * r[i];
    return s;
  };
  const auto analytic = [&] {
    layer.zero_grad();
    layer.forward(x.cview(), out.view());
    layer.backward(x.cview(), out.cview(), r.cview(), grad_in.view());
  };
  return check_gradients(loss, analytic, layer.parameters(), {x.view()}, {grad_in.cview()});
}

/// check_layer_gradients on a random input of shape `input_shape` (batch first), uniform in
/// [-2, 2] from `seed`.
inline GradientReport check_layer_gradients(Layer<double>& layer, const Shape& input_shape, std::uint64_t seed = 1) {
  Rng rng(seed);
  Tensor<double> x(input_shape);
  for (double& v : x.span()) v = rng.uniform(-2, 2);
  return check_layer_gradients(layer, std::move(x), seed);
}

/// The same check for a whole Sequential, through its backward pass.
inline GradientReport check_model_gradients(Sequential<double>& model, const Shape& input_shape, std::uint64_t seed = 1) {
  Rng rng(seed);
  Tensor<double> x(input_shape), grad_in(input_shape);
  for (double& v : x.span()) v = rng.uniform(-2, 2);
  Tensor<double> r(model.output_shape(input_shape));
  for (double& v : r.span()) v = rng.uniform(-1, 1);
  const auto loss = [&] {
    const auto out = model.forward(x.cview());
    double s = 0;
    for (std::size_t i = 0; i < out.size(); ++i) s += out[i] * r[i];
    return s;
  };
  const auto analytic = [&] {
    model.zero_grad();
    (void)model.forward(x.cview());
    model.backward(x.cview(), r.cview(), grad_in.view());
  };
  return check_gradients(loss, analytic, model.parameters(), {x.view()}, {grad_in.cview()});
}

/// The same check for a Graph (in training mode) at `batch` samples: L = sum over outputs k of
/// sum(out_k * R_k); every parameter and every input's gradient.
inline GradientReport check_graph_gradients(Graph<double>& g, std::size_t batch, std::uint64_t seed = 1) {
  g.set_training(true);
  Rng rng(seed);
  std::vector<Tensor<double>> xs, rs, outs, gxs;
  for (const auto& name : g.input_names()) {
    xs.emplace_back(g.shape(name, batch));
    for (double& v : xs.back().span()) v = rng.uniform(-2, 2);
    gxs.emplace_back(g.shape(name, batch));
  }
  for (const auto& name : g.output_names()) {
    rs.emplace_back(g.shape(name, batch));
    for (double& v : rs.back().span()) v = rng.uniform(-1, 1);
    outs.emplace_back(g.shape(name, batch));
  }
  std::vector<TensorView<const double>> in(xs.begin(), xs.end()), r(rs.begin(), rs.end()), gx_c(gxs.begin(), gxs.end());
  std::vector<TensorView<double>> out(outs.begin(), outs.end()), gx(gxs.begin(), gxs.end()), x_mut;
  for (auto& t : xs) x_mut.push_back(t.view());
  const auto loss = [&] {
    g.forward(in, out);
    double s = 0;
    for (std::size_t k = 0; k < outs.size(); ++k)
      for (std::size_t i = 0; i < outs[k].size(); ++i) s += outs[k][i] * rs[k][i];
    return s;
  };
  const auto analytic = [&] {
    g.zero_grad();
    (void)loss();
    g.backward(in, r, gx);
  };
  GradientReport rep = check_gradients(loss, analytic, g.parameters(), x_mut, gx_c);
  const auto names = g.input_names();
  for (std::size_t k = 0; k < names.size(); ++k) rep.entries[rep.entries.size() - names.size() + k].name = "input " + names[k];
  return rep;
}

}  // namespace edgesplit::testing

// Tests for training: the generic gradient checker run on every layer, a whole model and every
// objective; losses against hand-computed values; optimizers (SIMD against scalar, against
// textbook formulas); schedules; the Trainer (synthetic task, determinism, early stopping,
// progress); collaborative and multi-exit training; Standardizer, Dropout, parameter sync and the
// layer factory.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <sstream>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "alloc_counter.hpp"
#include "edgesplit/edgesplit.hpp"
#if EDGESPLIT_TEST_JSON
#include "edgesplit/io/safetensors.hpp"
#endif
#include "edgesplit/nn/testing.hpp"
#include "test_util.hpp"

using namespace edgesplit;
using edgesplit_test::expect_errc;

namespace {

// ---------------------------------------------------------------------------------------------
// The generic gradient checker: edgesplit/nn/testing.hpp (its comment gives the step and the
// tolerance). Inputs are drawn away from 0 only by chance: ReLU's kink is hit when |x| < h,
// probability ~1e-5 per element, and the fixed seeds below are known not to hit it.

/// Checks every parameter gradient of `params` (and of `x` when `grad_x` is given) against
/// central differences of `loss`; `analytic` must fill the gradients.
void check_against_numeric(const std::string& what, const std::function<double()>& loss,
                           const std::function<void()>& analytic, std::vector<Parameter<double>> params,
                           TensorView<double> x = {}, TensorView<const double> grad_x = {}) {
  std::vector<TensorView<double>> xs;
  std::vector<TensorView<const double>> gxs;
  if (x.data()) xs.push_back(x), gxs.push_back(grad_x);
  const testing::GradientReport r = testing::check_gradients(loss, analytic, params, xs, gxs);
  INFO(what << ":\n" << r.str());
  CHECK(r.entries.size() == params.size() + xs.size());
  CHECK(r.ok());
}

Tensor<double> random_tensor_d(const Shape& s, std::uint64_t seed, double lo = -2, double hi = 2) {
  Rng rng(seed);
  Tensor<double> t(s);
  for (double& v : t.span()) v = rng.uniform(lo, hi);
  return t;
}

/// The layer checker: the scalar L = sum(out * R) for a fixed random R, so dL/dout = R; checks
/// dL/dx and every dL/dparameter, and the output shape rule. Every layer's test calls this. This
/// form takes the input `x`: a max is not differentiable where two inputs tie, so max pooling is
/// checked on inputs whose values stand far apart.
void check_layer(Layer<double>& layer, Tensor<double> x, std::uint64_t seed) {
  const testing::GradientReport r = testing::check_layer_gradients(layer, std::move(x), seed);
  INFO(layer.describe() << ":\n" << r.str());
  CHECK(r.entries.size() == layer.parameters().size() + 1);
  CHECK(r.ok());
}
/// The layer checker on a random input of shape `in_shape`, uniform in [-2, 2].
void check_layer(Layer<double>& layer, const Shape& in_shape, std::uint64_t seed) {
  check_layer(layer, random_tensor_d(in_shape, seed), seed);
}

/// The values 0, 0.05, 0.1, ... (minus the middle one), shuffled: no two within a window are
/// closer than 0.05, far beyond the finite-difference step, so perturbing one input never changes
/// which input a max picks.
Tensor<double> distinct_tensor(const Shape& s, std::uint64_t seed) {
  Tensor<double> t(s);
  for (std::size_t i = 0; i < t.size(); ++i) t[i] = 0.05 * (static_cast<double>(i) - static_cast<double>(t.size()) / 2);
  Rng rng(seed);
  rng.shuffle(t.span());
  return t;
}

/// The same check for a whole model, through Sequential::backward.
void check_model(Sequential<double>& model, const Shape& in_shape, std::uint64_t seed) {
  const testing::GradientReport r = testing::check_model_gradients(model, in_shape, seed);
  INFO("model:\n" << r.str());
  CHECK(r.entries.size() == model.parameters().size() + 1);
  CHECK(r.ok());
}

/// The same check for a Trainer objective: train_step's gradients against central differences
/// of the loss `evaluate` reports (equal to the training loss when nothing is random). With
/// `prefix`, only parameters whose names start with it (the others' gradients are detached on
/// purpose in that configuration).
template <class O>
void check_objective(const std::string& what, O& objective, const Tensor<double>& x, const std::vector<std::int32_t>& y,
                     const std::string& prefix = "") {
  std::vector<std::size_t> hits(objective.output_names().size());
  auto loss = [&] { return objective.evaluate(x.cview(), y, hits); };
  auto analytic = [&] {
    objective.zero_grad();
    (void)objective.train_step(x.cview(), y);
  };
  objective.zero_grad();
  std::vector<Parameter<double>> params;
  for (auto& p : objective.parameters())
    if (p.name.rfind(prefix, 0) == 0) params.push_back(p);
  REQUIRE(!params.empty());
  check_against_numeric(what, loss, analytic, params);
}

/// Dense layers of the given widths with activation `Act` between them (and Dropout after each
/// activation when `dropout` > 0), He-uniform weights, biases uniform in [-bias, bias].
template <Real T, class Act>
Sequential<T> make_mlp(std::initializer_list<std::size_t> widths, std::uint64_t seed, double dropout = 0,
                       double bias = 0) {
  Rng rng(seed);
  Sequential<T> m;
  auto it = widths.begin();
  std::size_t prev = *it++;
  for (; it != widths.end(); ++it) {
    if (m.size()) {
      m.template add<Act>();
      if (dropout > 0) m.template add<Dropout<T>>(dropout, seed + m.size());
    }
    auto& d = m.template add<Dense<T>>(prev, *it, rng);
    for (T& b : d.bias().span()) b = static_cast<T>(rng.uniform(-bias, bias));
    prev = *it;
  }
  return m;
}

Sequential<double> mlp_d(std::initializer_list<std::size_t> widths, std::uint64_t seed) {
  return make_mlp<double, Tanh<double>>(widths, seed, 0, 0.5);
}
Sequential<float> mlp_f(std::initializer_list<std::size_t> widths, std::uint64_t seed, double dropout = 0) {
  return make_mlp<float, ReLU<float>>(widths, seed, dropout);
}

std::vector<std::int32_t> random_labels(std::size_t n, std::size_t classes, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<std::int32_t> y(n);
  for (auto& v : y) v = static_cast<std::int32_t>(rng.below(classes));
  return y;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Gradients

TEST_CASE("Gradient check: Dense", "[train][grad]") {
  Rng rng(3);
  Dense<double> d(7, 5, rng);
  for (double& b : d.bias().span()) b = rng.uniform(-1, 1);
  check_layer(d, Shape{4, 7}, 10);
  check_layer(d, Shape{1, 7}, 11);      // batch 1 takes the GEMV path forward
  check_layer(d, Shape{3, 7, 1}, 12);   // rank 3, flattened features
}

TEST_CASE("Gradient check: every activation and Softmax", "[train][grad]") {
  const Shape s{4, 9};
  ReLU<double> relu;
  LeakyReLU<double> leaky(0.1);
  Identity<double> id;
  Sigmoid<double> sig;
  Tanh<double> tanh_;
  GELU<double> gelu;
  GELUTanh<double> gelu_tanh;
  Erf<double> erf;
  Softmax<double> softmax;
  for (Layer<double>* l : std::initializer_list<Layer<double>*>{&relu, &leaky, &id, &sig, &tanh_, &gelu, &gelu_tanh, &erf, &softmax})
    check_layer(*l, s, 20);
}

TEST_CASE("Gradient check: ReLU6, Clip, HardSigmoid, HardSwish and SiLU away from their kinks",
          "[train][grad][activations]") {
  // check_layer draws inputs in [-2, 2], where Clip(-1, 1.5) and HardSigmoid(0.5, 0.5) (kinks at
  // -1 and 1) show both their flat and their sloped parts. A kink is hit only by an input within
  // the step h = 1e-5 of it (probability ~1e-5 per element); these seeds do not.
  const Shape s{4, 9};
  ReLU6<double> relu6;
  Clip<double> clip(-1, 1.5);
  HardSigmoid<double> steep(0.5, 0.5), onnx;
  HardSwish<double> hswish;
  SiLU<double> silu;
  const std::initializer_list<Layer<double>*> acts{&relu6, &clip, &steep, &onnx, &hswish, &silu};
  for (Layer<double>* l : acts) check_layer(*l, s, 21);

  // ReLU6's upper kink, HardSwish's outer pieces and ONNX HardSigmoid's flat parts lie outside
  // [-2, 2]: a Dense with weights scaled by 4 in front spreads the activations' inputs over them.
  for (Layer<double>* l : acts) {
    Rng rng(22);
    Sequential<double> m;
    auto& spread = m.add<Dense<double>>(5, 12, rng);
    for (double& w : spread.weight().span()) w *= 4;
    m.add(l->clone());
    m.add<Dense<double>>(12, 3, rng);
    const auto pre = m.split(1).first.predict(random_tensor_d(Shape{4, 5}, 23).cview());
    CHECK(*std::min_element(pre.data(), pre.data() + pre.size()) < -3);
    CHECK(*std::max_element(pre.data(), pre.data() + pre.size()) > 6);
    INFO(l->describe());
    check_model(m, Shape{4, 5}, 23);
  }
}

TEST_CASE("Gradient check: BatchNorm2D in training mode (batch statistics) and inference mode",
          "[train][grad][batchnorm]") {
  // Training mode: each output depends on every input of its channel through the batch mean and
  // variance. forward also moves the running statistics on every call, but training-mode outputs
  // never read them, so the central differences of sum(out * R) see one fixed function.
  Rng rng(40);
  BatchNorm2D<double> bn(3, 1e-5, 0.1);
  for (std::size_t c = 0; c < 3; ++c) {
    bn.weight()[c] = rng.uniform(0.5, 2) * (c == 1 ? -1 : 1);
    bn.bias()[c] = rng.uniform(-1, 1);
    bn.running_mean()[c] = rng.uniform(-1, 1);
    bn.running_var()[c] = rng.uniform(0.2, 2);
  }
  bn.set_training(true);
  check_layer(bn, Shape{4, 3, 2, 3}, 40);
  check_layer(bn, Shape{5, 3}, 41);     // BatchNorm1d's {N, C}
  check_layer(bn, Shape{2, 3, 4}, 42);  // and {N, C, L}
  check_layer(bn, Shape{1, 3, 2, 1}, 43);  // two values per channel, the fewest training takes
  bn.set_training(false);  // an affine map of the running statistics
  check_layer(bn, Shape{2, 3, 2, 2}, 44);
  check_layer(bn, Shape{1, 3}, 45);

  // inside a model, in training mode, after a Conv2D without bias: the batch mean would remove a
  // bias exactly, so its gradient is zero and a central difference of it only noise
  Sequential<double> m;
  Conv2DOptions same;
  same.padding = same_padding(3, 3);
  same.bias = false;
  m.add<Conv2D<double>>(2, 3, 3, 3, same, rng);
  m.add<BatchNorm2D<double>>(3);
  m.add<SiLU<double>>();
  m.add<Dense<double>>(3 * 4 * 4, 2, rng);
  for (auto& p : m.parameters())
    for (double& v : p.value.span()) v += rng.uniform(-0.2, 0.2);
  m.set_training(true);
  check_model(m, Shape{3, 2, 4, 4}, 46);
}

TEST_CASE("Gradient check: Dropout (training mode, mask held) and Standardizer", "[train][grad]") {
  Dropout<double> drop(0.4, 77);
  drop.set_training(true);
  Tensor<double> x(Shape{5, 6}), y(Shape{5, 6});
  drop.forward(x.cview(), y.view());  // draws the mask
  drop.hold_mask(true);
  check_layer(drop, Shape{5, 6}, 30);
  drop.set_training(false);
  check_layer(drop, Shape{5, 6}, 31);  // identity

  for (auto mode : {Standardize::per_feature, Standardize::global}) {
    Standardizer<double> st(6, mode);
    st.fit(random_tensor_d(Shape{50, 6}, 32, -3, 5).cview());
    check_layer(st, Shape{5, 6}, 33);
  }
}

TEST_CASE("Gradient check: pooling and Flatten", "[train][grad][pool]") {
  // MaxPool2D and GlobalMaxPool run on inputs without ties (distinct_tensor): where two inputs of
  // a window tie, the max has no derivative and a central difference straddles the kink.
  Pool2DOptions a;  // overlapping 3x3 windows, asymmetric padding, ceil_mode
  a.stride_h = a.stride_w = 2;
  a.padding = {1, 0, 1, 1};
  a.ceil_mode = true;
  MaxPool2D<double> max_a(3, 3, a);
  check_layer(max_a, distinct_tensor(Shape{2, 2, 7, 6}, 60), 60);
  Pool2DOptions b;  // dilated rows, strides differing per axis
  b.stride_h = 1;
  b.padding = {1, 1, 0, 1};
  b.dilation_h = 2;
  MaxPool2D<double> max_b(2, 3, b);
  check_layer(max_b, distinct_tensor(Shape{1, 3, 6, 7}, 61), 61);
  MaxPool2D<double> max_c(2, 2);  // floor mode: the last row and column get no gradient
  check_layer(max_c, distinct_tensor(Shape{2, 1, 5, 5}, 62), 62);
  GlobalMaxPool<double> gmax;
  check_layer(gmax, distinct_tensor(Shape{2, 3, 4, 5}, 63), 63);

  for (bool include : {true, false}) {
    a.count_include_pad = include;
    AvgPool2D<double> avg_a(3, 3, a);
    check_layer(avg_a, Shape{2, 2, 7, 6}, 64);
    Pool2DOptions c;  // overlapping rows, asymmetric padding
    c.stride_h = 1;
    c.padding = {0, 1, 1, 1};
    c.count_include_pad = include;
    AvgPool2D<double> avg_c(2, 3, c);
    check_layer(avg_c, Shape{1, 3, 5, 6}, 65);
  }
  GlobalAvgPool<double> gavg;
  check_layer(gavg, Shape{2, 3, 4, 5}, 66);
  Flatten<double> flat;
  check_layer(flat, Shape{3, 2, 3, 4}, 67);
}

TEST_CASE("Gradient check: a whole 3-layer model through Sequential::backward", "[train][grad]") {
  Rng rng(5);
  Sequential<double> m;
  m.add<Dense<double>>(6, 8, rng);
  m.add<ReLU<double>>();
  m.add<Dense<double>>(8, 7, rng);
  m.add<GELU<double>>();
  m.add<Dropout<double>>(0.3);  // inference mode: identity
  m.add<Dense<double>>(7, 4, rng);
  m.add<Softmax<double>>();
  for (auto& p : m.parameters())
    for (double& v : p.value.span()) v += rng.uniform(-0.1, 0.1);
  check_model(m, Shape{5, 6}, 40);
}

TEST_CASE("Gradient check: the objectives (classifier, collaborative, multi-exit)", "[train][grad]") {
  const auto x = random_tensor_d(Shape{6, 5}, 50);
  const auto y = random_labels(6, 4, 51);
  {
    auto m = mlp_d({5, 6, 4}, 52);
    Classifier<double> obj(m);
    check_objective("classifier", obj, x, y);
  }
  for (auto kind : {Consistency::mse_logits, Consistency::kl_softened}) {
    auto cloud = mlp_d({5, 7, 4}, 53), e1 = mlp_d({5, 3, 4}, 54), e2 = mlp_d({5, 4}, 55);
    CollaborativeLoss loss;
    loss.consistency = kind;
    loss.temperature = 2.5;
    loss.weight = 0.7;
    loss.task_weight = 0.6;
    loss.cloud_weight = 1;  // the joint objective: the cloud gets the exact gradient of L
    Collaborative<double> obj(cloud, {&e1, &e2}, loss);
    check_objective(kind == Consistency::mse_logits ? "collaborative mse" : "collaborative kl", obj, x, y);
    loss.train_cloud = false;  // distillation from a fixed teacher
    Collaborative<double> frozen(cloud, {&e1}, loss);
    CHECK(frozen.parameters().size() == e1.parameters().size());
    check_objective("distillation", frozen, x, y);
  }
  {
    auto head = mlp_d({5, 6}, 56), exit = mlp_d({6, 4}, 57), tail = mlp_d({6, 5, 4}, 58);
    head.add<Tanh<double>>();
    MultiExit<double> obj(head, exit, tail, {0.3, 1.0, 0.0, Consistency::kl_softened, 2});
    check_objective("multi-exit", obj, x, y);
    CHECK(obj.edge_model().size() == head.size() + exit.size());
    CHECK(obj.full_model().size() == head.size() + tail.size());
    // with self-distillation the final output is a detached teacher: only the exit's gradient
    // is the exact gradient of the reported loss
    for (auto kind : {Consistency::kl_softened, Consistency::mse_logits}) {
      MultiExit<double> distilled(head, exit, tail, {0.3, 1.0, 0.5, kind, 2});
      check_objective("multi-exit distilled", distilled, x, y, "exit.");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Losses

TEST_CASE("Losses equal hand-computed values", "[train][loss]") {
  Tensor<double> p(Shape{2, 2}), t(Shape{2, 2}), g(Shape{2, 2}, 0.0);
  for (std::size_t i = 0; i < 4; ++i) {
    p[i] = std::vector<double>{1, 2, 3, 4}[i];
    t[i] = std::vector<double>{0, 2, 5, 4}[i];
  }
  // differences 1, 0, -2, 0: mean of squares 5/4; gradient 2 d / 4
  CHECK(mse_loss(p.cview(), t.cview(), g.view()) == Approx(1.25));
  CHECK(g[0] == Approx(0.5));
  CHECK(g[2] == Approx(-1.0));
  CHECK(g[1] == 0.0);
  (void)mse_loss(p.cview(), t.cview(), g.view(), 2.0);  // accumulates, weighted
  CHECK(g[0] == Approx(1.5));

  Tensor<double> z(Shape{2, 3});
  for (std::size_t i = 0; i < 6; ++i) z[i] = std::vector<double>{0, 0, 0, 1, 2, 3}[i];
  const std::vector<std::int32_t> labels{0, 2};
  Tensor<double> gz(Shape{2, 3}, 0.0);
  // row 0: ln 3; row 1: logsumexp(1,2,3) - 3 = ln(1 + e^-1 + e^-2)
  const double row1 = std::log(1 + std::exp(-1.0) + std::exp(-2.0));
  CHECK(softmax_cross_entropy(z.cview(), labels, gz.view()) == Approx((std::log(3.0) + row1) / 2).epsilon(1e-14));
  CHECK(gz[0] == Approx((1.0 / 3 - 1) / 2));
  CHECK(gz[1] == Approx(1.0 / 6));
  CHECK(gz[5] == Approx((std::exp(3 - (3 + row1)) - 1) / 2));

  // KL distillation: q = (0.75, 0.25) from teacher logits (tau ln 3, 0), p = (0.5, 0.5):
  // KL = 0.75 ln 1.5 + 0.25 ln 0.5; times tau^2; student gradient tau (p - q) / N.
  for (double tau : {1.0, 2.0, 4.0}) {
    Tensor<double> s(Shape{1, 2}, 0.0), te(Shape{1, 2}, 0.0), gs(Shape{1, 2}, 0.0);
    te[0] = tau * std::log(3.0);
    const double kl = 0.75 * std::log(1.5) + 0.25 * std::log(0.5);
    CHECK(kl_distillation(s.cview(), te.cview(), tau, gs.view()) == Approx(tau * tau * kl).epsilon(1e-14));
    CHECK(gs[0] == Approx(tau * -0.25));
    CHECK(gs[1] == Approx(tau * 0.25));
    CHECK(kl_distillation(te.cview(), te.cview(), tau) == Approx(0.0).margin(1e-15));
  }
}

TEST_CASE("Softmax cross-entropy is stable on extreme logits", "[train][loss]") {
  Tensor<float> z(Shape{3, 4});
  const float big = 1e30f;
  for (std::size_t i = 0; i < 4; ++i) {
    z[i] = i == 1 ? big : -big;  // confident and right
    z[4 + i] = i == 0 ? 1e4f : 0.0f;  // confident and wrong: loss ~ 1e4
    z[8 + i] = -1e4f;  // all equal and very negative: ln 4
  }
  const std::vector<std::int32_t> y{1, 2, 3};
  Tensor<float> g(Shape{3, 4}, 0.0f);
  const double l = softmax_cross_entropy(z.cview(), y, g.view());
  REQUIRE(std::isfinite(l));
  CHECK(l == Approx((0 + 1e4 + std::log(4.0)) / 3).epsilon(1e-6));
  for (float v : g.span()) CHECK(std::isfinite(v));
  CHECK(g[4] == Approx(1.0f / 3));       // softmax 1 on the wrong class
  CHECK(g[6] == Approx(-1.0f / 3));
  CHECK(g[8] == Approx(0.25f / 3));
}

TEST_CASE("Losses reject bad arguments", "[train][loss]") {
  Tensor<float> z(Shape{2, 3}), other(Shape{2, 4}), g(Shape{3, 3});
  expect_errc(errc::invalid_argument, [&] { (void)softmax_cross_entropy(z.cview(), std::vector<std::int32_t>{0, 3}); });
  expect_errc(errc::invalid_argument, [&] { (void)softmax_cross_entropy(z.cview(), std::vector<std::int32_t>{-1, 0}); });
  expect_errc(errc::shape_mismatch, [&] { (void)softmax_cross_entropy(z.cview(), std::vector<std::int32_t>{0}); });
  expect_errc(errc::shape_mismatch, [&] {
    (void)softmax_cross_entropy(z.cview(), std::vector<std::int32_t>{0, 1}, g.view());
  });
  expect_errc(errc::shape_mismatch, [&] { (void)mse_loss(z.cview(), other.cview()); });
  expect_errc(errc::shape_mismatch, [&] { (void)kl_distillation(z.cview(), other.cview(), 2.0); });
  expect_errc(errc::invalid_argument, [&] { (void)kl_distillation(z.cview(), z.cview(), 0.0); });
  expect_errc(errc::invalid_argument, [&] {
    CollaborativeLoss c;
    c.weight = -1;
    c.validate();
  });
}

// ---------------------------------------------------------------------------------------------
// Optimizers

namespace {
template <class Rule>
void compare_simd_scalar(const Rule& rule, std::uint64_t seed) {
  const std::size_t n = 1031;  // not a multiple of any SIMD width: the tail runs
  Rng rng(seed);
  std::vector<float> w(n), g(n), m(n), v(n);
  for (std::size_t i = 0; i < n; ++i) {
    w[i] = static_cast<float>(rng.uniform(-1, 1));
    g[i] = static_cast<float>(rng.uniform(-1, 1));
    m[i] = static_cast<float>(rng.uniform(-0.1, 0.1));
    v[i] = static_cast<float>(rng.uniform(0, 0.01));
  }
  auto w2 = w, m2 = m, v2 = v;
  optim::apply(rule, w.data(), g.data(), m.data(), v.data(), n);
  optim::apply_scalar(rule, w2.data(), g.data(), m2.data(), v2.data(), n);
  // Same formula, same operation order; the only licence the compiler has is contracting a*b+c
  // into one FMA in one path and not the other, which changes a result by at most one rounding
  // of each intermediate (a few ulp of the operands' magnitude, |w|, |m| <= 1 here): 8 ulp of 1.
  const float tol = 8 * std::numeric_limits<float>::epsilon();
  for (std::size_t i = 0; i < n; ++i) {
    INFO("element " << i);
    CHECK(std::abs(w[i] - w2[i]) <= tol);
    CHECK(std::abs(m[i] - m2[i]) <= tol);
    CHECK(std::abs(v[i] - v2[i]) <= tol);
  }
}
}  // namespace

TEST_CASE("Optimizer update kernels: SIMD equals the scalar reference", "[train][optim][simd]") {
  compare_simd_scalar(optim::SgdRule<float>{0.1f, 0.01f}, 1);
  compare_simd_scalar(optim::MomentumRule<float>{0.1f, 0.9f, 0.01f, false}, 2);
  compare_simd_scalar(optim::MomentumRule<float>{0.1f, 0.9f, 0.0f, true}, 3);
  compare_simd_scalar(optim::AdamRule<float>{0.9f, 0.999f, 1e-8f, 1e-3f / 0.1f, 1 / std::sqrt(0.001f), 0.0f, 1.0f}, 4);
  compare_simd_scalar(optim::AdamRule<float>{0.9f, 0.999f, 1e-8f, 1e-3f, 1.2f, 0.01f, 1.0f}, 5);
  compare_simd_scalar(optim::AdamRule<float>{0.8f, 0.99f, 1e-6f, 1e-2f, 1.1f, 0.0f, 0.999f}, 6);
}

namespace {
/// One parameter with a fixed gradient, for stepping optimizers by hand.
struct OneParam {
  Tensor<double> w, g;
  OneParam(std::vector<double> w0, std::vector<double> g0) : w(Shape{w0.size()}), g(Shape{g0.size()}) {
    std::copy(w0.begin(), w0.end(), w.data());
    std::copy(g0.begin(), g0.end(), g.data());
  }
  std::vector<Parameter<double>> params() { return {{"w", w.view(), g.view()}}; }
};
}  // namespace

TEST_CASE("SGD and momentum follow the textbook recurrences", "[train][optim]") {
  OneParam p({1.0}, {1.0});
  SGD<double> plain(0.1);
  plain.step(p.params());
  CHECK(p.w[0] == Approx(0.9).epsilon(1e-15));

  OneParam q({1.0}, {1.0});
  SGD<double> mom(0.1, 0.9);
  // buf: 1, 1.9, 2.71 ; w: 1 - 0.1, - 0.19, - 0.271
  for (double want : {0.9, 0.71, 0.439}) {
    mom.step(q.params());
    CHECK(q.w[0] == Approx(want).epsilon(1e-14));
  }
  OneParam r({2.0}, {0.0});
  SGD<double> decay(0.1, 0, 0.5);  // g' = 0 + 0.5 * 2 = 1: w = 2 - 0.1
  decay.step(r.params());
  CHECK(r.w[0] == Approx(1.9).epsilon(1e-15));
  expect_errc(errc::invalid_argument, [] { SGD<double>(0.1, 1.0); });
  expect_errc(errc::invalid_argument, [] { SGD<double>(-0.1); });
  expect_errc(errc::invalid_argument, [] { SGD<double>(0.1, 0.0, 0.0, true); });
}

TEST_CASE("Adam and AdamW equal a double-precision textbook implementation", "[train][optim]") {
  const std::vector<double> w0{0.5, -1.5, 2.0, 0.0, 3.0}, grads{0.3, -0.2, 1e-3, 5.0, -0.7};
  for (bool decoupled : {false, true}) {
    const double lr = 0.01, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
    OneParam p(w0, grads);
    Adam<double> adam(lr, b1, b2, eps, wd, decoupled);
    std::vector<double> w = w0, m(5, 0), v(5, 0);
    for (int t = 1; t <= 6; ++t) {
      for (std::size_t i = 0; i < 5; ++i) p.g[i] = grads[i] * t;  // changing gradients
      adam.step(p.params());
      for (std::size_t i = 0; i < 5; ++i) {
        double g = grads[i] * t;
        if (decoupled) w[i] -= lr * wd * w[i]; else g += wd * w[i];
        m[i] = b1 * m[i] + (1 - b1) * g;
        v[i] = b2 * v[i] + (1 - b2) * g * g;
        const double mhat = m[i] / (1 - std::pow(b1, t)), vhat = v[i] / (1 - std::pow(b2, t));
        w[i] -= lr * mhat / (std::sqrt(vhat) + eps);
      }
    }
    // Same maths arranged differently (PyTorch's order): a few ulp per step, over 6 steps.
    for (std::size_t i = 0; i < 5; ++i) CHECK(p.w[i] == Approx(w[i]).epsilon(1e-12).margin(1e-14));
    CHECK(adam.steps() == 6);
  }
  // AdamW with a zero gradient only decays: w_t = w0 (1 - lr wd)^t.
  OneParam z({2.0}, {0.0});
  AdamW<double> adamw(0.1, 0.5);
  for (int t = 0; t < 3; ++t) adamw.step(z.params());
  CHECK(z.w[0] == Approx(2.0 * std::pow(0.95, 3)).epsilon(1e-14));
}

TEST_CASE("Optimizers keep state per parameter and reject a changed parameter list", "[train][optim]") {
  OneParam a({1.0, 2.0}, {0.1, 0.1}), b({1.0}, {0.1});
  Adam<double> adam;
  adam.step(a.params());
  expect_errc(errc::shape_mismatch, [&] { adam.step(b.params()); });
  auto two = a.params();
  two.push_back(b.params()[0]);
  expect_errc(errc::shape_mismatch, [&] { adam.step(two); });
  adam.reset();
  adam.step(b.params());  // a fresh start binds anew
  std::vector<Parameter<double>> no_grad{{"w", a.w.view(), {}}};
  expect_errc(errc::invalid_argument, [&] { SGD<double>(0.1).step(no_grad); });
}

TEST_CASE("Learning-rate schedules", "[train][optim]") {
  CHECK(LrSchedule::constant().factor(7.3, 10) == 1.0);
  const auto step = LrSchedule::step(5, 0.5);
  CHECK(step.factor(0, 20) == 1.0);
  CHECK(step.factor(4.99, 20) == 1.0);
  CHECK(step.factor(5, 20) == 0.5);
  CHECK(step.factor(12, 20) == 0.25);
  const auto cos = LrSchedule::cosine(0.1);
  CHECK(cos.factor(0, 10) == Approx(1.0));
  CHECK(cos.factor(5, 10) == Approx(0.55));  // halfway: min + (1 - min) / 2
  CHECK(cos.factor(10, 10) == Approx(0.1));
  CHECK(cos.factor(12, 10) == Approx(0.1));
  expect_errc(errc::invalid_argument, [] { (void)LrSchedule::step(0, 0.5); });
  expect_errc(errc::invalid_argument, [] { (void)LrSchedule::cosine(2); });
}

// ---------------------------------------------------------------------------------------------
// Trainer

namespace {

/// XOR of the signs of the first two of `dims` coordinates (the rest is noise), with points within
/// `margin` of an axis left out: not linearly separable, easy for one hidden layer.
Dataset<float> xor_task(std::size_t n, std::size_t dims, std::uint64_t seed, double margin = 0.1) {
  Rng rng(seed);
  Dataset<float> d;
  d.inputs = Tensor<float>(Shape{n, dims});
  d.labels.resize(n);
  d.classes = 2;
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t k = 0; k < dims; ++k) {
      double v = rng.uniform(-1, 1);
      while (k < 2 && std::abs(v) < margin) v = rng.uniform(-1, 1);
      d.inputs[i * dims + k] = static_cast<float>(v);
    }
    d.labels[i] = (d.inputs[i * dims] > 0) != (d.inputs[i * dims + 1] > 0);
  }
  return d;
}

}  // namespace

TEST_CASE("shift_and_flip moves and mirrors each image by one of its allowed amounts, and the Trainer applies it",
          "[train][trainer]") {
  const std::size_t n = 64, c = 2, h = 3, w = 4;
  Tensor<float> x(Shape{n, c, h, w});
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(1 + i % (c * h * w));  // no zeros
  // every image each call may give: shifts in [-1, 1]^2, mirrored or not
  auto candidate = [&](const float* img, std::ptrdiff_t dy, std::ptrdiff_t dx, bool mirror) {
    std::vector<float> out(c * h * w);
    for (std::size_t ch = 0; ch < c; ++ch)
      for (std::size_t y = 0; y < h; ++y)
        for (std::size_t xx = 0; xx < w; ++xx) {
          const std::ptrdiff_t sy = std::ptrdiff_t(y) - dy, sx = std::ptrdiff_t(mirror ? w - 1 - xx : xx) - dx;
          out[(ch * h + y) * w + xx] = sy >= 0 && sx >= 0 && sy < std::ptrdiff_t(h) && sx < std::ptrdiff_t(w)
                                           ? img[(ch * h + std::size_t(sy)) * w + std::size_t(sx)]
                                           : 0.0f;
        }
    return out;
  };
  Rng rng(4);
  std::vector<float> scratch;
  Tensor<float> y = x;
  shift_and_flip(y.view(), rng, 1, true, scratch);
  std::set<std::tuple<int, int, bool>> seen;
  for (std::size_t i = 0; i < n; ++i) {
    const std::vector<float> got(y.data() + i * c * h * w, y.data() + (i + 1) * c * h * w);
    int matches = 0;
    for (int dy = -1; dy <= 1; ++dy)
      for (int dx = -1; dx <= 1; ++dx)
        for (bool m : {false, true})
          if (candidate(x.data() + i * c * h * w, dy, dx, m) == got) ++matches, seen.insert({dy, dx, m});
    CHECK(matches >= 1);
  }
  CHECK(seen.size() >= 12);  // 64 draws of 18 equally likely moves cover most of them
  Tensor<float> same = x;
  shift_and_flip(same.view(), rng, 0, false, scratch);
  CHECK(std::equal(same.data(), same.data() + same.size(), x.data()));
  expect_errc(errc::shape_mismatch, [&] {
    Tensor<float> flat(Shape{2, 12});
    shift_and_flip(flat.view(), rng, 1, true, scratch);
  });

  // The Trainer hands each training batch to the augmentation, from its own seeded stream.
  Dataset<float> d;
  d.classes = 2;
  d.inputs = x;
  d.labels.assign(n, 0);
  Sequential<float> model;
  Rng init(1);
  model.add<Dense<float>>(c * h * w, 2, init);
  Classifier<float> objective(model);
  Adam<float> adam(1e-3);
  TrainOptions o;
  o.epochs = 2;
  o.batch_size = 16;
  Trainer<float> trainer(o, {});
  std::size_t batches = 0, rows = 0;
  trainer.set_augment([&](TensorView<float> b, Rng& r) {
    ++batches;
    rows += b.shape().batch();
    shift_and_flip(b, r, 1, true, scratch);
  });
  trainer.fit(objective, adam, d);
  CHECK(batches == 8);
  CHECK(rows == 2 * n);
}

TEST_CASE("Trainer learns a non-linear synthetic task to >= 99% in seconds", "[train][trainer]") {
  const auto train = xor_task(4000, 8, 1), test = xor_task(2000, 8, 2);
  auto model = mlp_f({8, 32, 2}, 3);
  Classifier<float> obj(model);
  Adam<float> adam(1e-2);
  TrainOptions o;
  o.epochs = 15;
  o.batch_size = 64;
  std::vector<EpochReport> seen;
  Trainer<float> trainer(o, [&](const EpochReport& r) { seen.push_back(r); });
  const auto h = trainer.fit(obj, adam, train, &test);
  const auto e = evaluate<float>(obj, test);
  INFO("test accuracy " << e.accuracy[0] << " loss " << e.loss);
  CHECK(e.accuracy[0] >= 0.99);
  REQUIRE(seen.size() == 15);
  CHECK(seen.front().epoch == 1);
  CHECK(seen.back().epoch == 15);
  CHECK(seen.back().train_loss < seen.front().train_loss);
  CHECK(seen.back().samples_per_second > 0);
  CHECK(seen.back().validation.accuracy[0] == e.accuracy[0]);
  CHECK(h.epochs.size() == 15);
  CHECK_FALSE(h.stopped_early);
}

TEST_CASE("Dense and Conv2D without an Rng start from seeded He-uniform weights and such a model trains", "[train][trainer]") {
  // Dense(in, out) once gave all-zero weights: every hidden unit equal, accuracy stuck at chance.
  const Dense<float> a(8, 32), b(8, 32), c(32, 8);
  float lo = 0, hi = 0;
  for (float w : a.weight().span()) lo = std::min(lo, w), hi = std::max(hi, w);
  const float limit = static_cast<float>(std::sqrt(6.0 / 8));  // He-uniform over 8 inputs
  CHECK(lo < -0.5f * limit);
  CHECK(hi > 0.5f * limit);
  CHECK(lo >= -limit);
  CHECK(hi <= limit);
  CHECK(std::equal(a.weight().span().begin(), a.weight().span().end(), b.weight().span().begin()));
  for (float v : a.bias().span()) CHECK(v == 0);
  CHECK(c.weight().cview()[0] != a.weight().cview()[0]);  // another shape, another draw

  // Conv2D likewise: He-uniform over fan_in = in / groups x kernel_h x kernel_w.
  const Conv2D<float> k1(3, 8, 3, 3), k2(3, 8, 3, 3), k3(8, 3, 3, 3);
  const float klimit = static_cast<float>(std::sqrt(6.0 / 27));
  float klo = 0, khi = 0;
  for (float w : k1.weight().span()) klo = std::min(klo, w), khi = std::max(khi, w);
  CHECK(klo < -0.5f * klimit);
  CHECK(khi > 0.5f * klimit);
  CHECK(klo >= -klimit);
  CHECK(khi <= klimit);
  CHECK(std::equal(k1.weight().span().begin(), k1.weight().span().end(), k2.weight().span().begin()));
  CHECK(k3.weight().cview()[0] != k1.weight().cview()[0]);

  const auto train = xor_task(4000, 8, 1), test = xor_task(2000, 8, 2);
  Sequential<float> model;
  model.add<Dense<float>>(8, 32);
  model.add<ReLU<float>>();
  model.add<Dense<float>>(32, 2);
  Classifier<float> obj(model);
  Adam<float> adam(1e-2);
  TrainOptions o;
  o.epochs = 15;
  o.batch_size = 64;
  Trainer<float> trainer(o, ProgressCallback{});
  (void)trainer.fit(obj, adam, train);
  CHECK(evaluate<float>(obj, test).accuracy[0] >= 0.99);
}

TEST_CASE("Sequential::summary lists shapes, parameters, FLOPs and every split point's bytes", "[train][nn]") {
  Rng rng(3);
  Sequential<float> m;
  m.add<Dense<float>>(784, 16, rng);
  m.add<ReLU<float>>();
  m.add<Dense<float>>(16, 10, rng);
  const std::string s = m.summary(Shape{784});
  INFO(s);
  CHECK(s.find("k=0: 3136 bytes") != std::string::npos);                         // the input, 784 floats
  CHECK(s.find("Dense(784 -> 16)") != std::string::npos);
  CHECK(s.find("[16]") != std::string::npos);
  CHECK(s.find(" 12560 ") != std::string::npos);                                  // 784 x 16 + 16
  CHECK(s.find("k=1: 64 bytes") != std::string::npos);
  CHECK(s.find("k=3: 40 bytes (all on the edge)") != std::string::npos);
  CHECK(s.find("total: 3 layers, 12730 parameters") != std::string::npos);        // + 16 x 10 + 10
  CHECK(std::count(s.begin(), s.end(), '\n') == 6);                               // header, input, 3 layers, total
}

TEST_CASE("A declared input shape: Dense layers take their input width from the model, split and summary keep it", "[train][nn]") {
  // The Keras way: the input shape once, then output widths only.
  Sequential<float> m(Shape{784});
  m.add<Dense<float>>(300);
  m.add<ReLU<float>>();
  m.add<Dense<float>>(100);
  m.add<Dense<float>>(10);
  auto dense = [&](std::size_t i) { return dynamic_cast<const Dense<float>&>(m[i]); };
  CHECK(dense(0).in_features() == 784);
  CHECK(dense(2).in_features() == 300);
  CHECK(dense(3).in_features() == 100);
  // The same layers as the two-argument form: the same default weights, drawn from the same seed.
  Dense<float> explicit_first(784, 300);
  CHECK(m.parameters()[0].value.span().size() == explicit_first.parameters()[0].value.span().size());
  CHECK(std::equal(m.parameters()[0].value.span().begin(), m.parameters()[0].value.span().end(),
                   explicit_first.parameters()[0].value.span().begin()));
  CHECK(m.predict(Tensor<float>(Shape{2, 784}, 0.5f).cview()).shape() == Shape{2, 10});

  // split(): the head keeps the input shape, the tail's is what the head outputs.
  const auto [head, tail] = m.split(2);
  REQUIRE(head.input());
  CHECK(*head.input() == Shape{784});
  REQUIRE(tail.input());
  CHECK(*tail.input() == Shape{300});
  CHECK(m.summary() == m.summary(Shape{784}));
  CHECK(Sequential<float>(m).input() == m.input());  // copies keep it

  // Without a declared shape: the width of the last Dense, through element-wise layers, with an Rng.
  Rng rng(5);
  Sequential<float> plain;
  plain.add<Dense<float>>(784, 64, rng);
  plain.add<ReLU<float>>();
  plain.add<Dropout<float>>(0.5, 1);
  CHECK(plain.add<Dense<float>>(10, rng).in_features() == 64);
  expect_errc(errc::invalid_argument, [] { Sequential<float>().add<Dense<float>>(10); });  // nothing to take it from
  try {
    Sequential<float>().add<Dense<float>>(10);
  } catch (const error& e) {
    CHECK(std::string(e.what()).find("declare the model's input shape") != std::string::npos);
  }
  expect_errc(errc::invalid_argument, [] { (void)Sequential<float>().summary(); });

  // Images: a Dense after a convolution flattens it, as it does when it runs.
  Sequential<float> cnn(Shape{1, 28, 28});
  cnn.add<Conv2D<float>>(1, 8, 3, 3);
  cnn.add<ReLU<float>>();
  CHECK(cnn.add<Dense<float>>(10).in_features() == 8u * 26u * 26u);
  CHECK(cnn.predict(Tensor<float>(Shape{3, 1, 28, 28}, 0.25f).cview()).shape() == Shape{3, 10});
  Sequential<float> after_conv;  // no declared shape: a Conv2D's output size is not known
  after_conv.add<Conv2D<float>>(1, 8, 3, 3);
  expect_errc(errc::invalid_argument, [&] { after_conv.add<Dense<float>>(3); });
  Sequential<float> after_dense_conv;  // nor after a Dense whose output a layer reshapes
  after_dense_conv.add<Dense<float>>(4, 8);
  after_dense_conv.add<GlobalAvgPool<float>>();
  expect_errc(errc::invalid_argument, [&] { after_dense_conv.add<Dense<float>>(3); });

  expect_errc(errc::invalid_argument, [] { Sequential<float>(Shape{0}); });
  CHECK(Shape{784}.with_leading(32) == Shape{32, 784});
  expect_errc(errc::invalid_argument, [] { (void)Shape{1, 1, 1, 1, 1, 1, 1, 1}.with_leading(1); });
}

TEST_CASE("Dataset::split and validation_split hold out the last rows of the training set", "[train][trainer]") {
  const auto data = xor_task(1000, 8, 7);
  const auto parts = data.split(0.2);  // not bound by name: clang 14 cannot capture such bindings
  const Dataset<float>& rest = parts.first;
  const Dataset<float>& held = parts.second;
  REQUIRE(rest.size() == 800);
  REQUIRE(held.size() == 200);
  CHECK(held.labels.front() == data.labels[800]);
  CHECK(held.inputs.cview()[0] == data.inputs.cview()[800 * 8]);
  CHECK(rest.classes == data.classes);
  expect_errc(errc::invalid_argument, [&] { (void)data.split(0); });
  expect_errc(errc::invalid_argument, [&] { (void)data.split(1); });
  expect_errc(errc::invalid_argument, [&] { (void)data.split(0.0001); });  // rounds to no row
  TrainOptions bad;
  bad.validation_split = 1;
  expect_errc(errc::invalid_argument, [&] { Trainer<float> t(bad); });

  // fit(train) with validation_split 0.2 is fit(first 80%, &last 20%), bit for bit.
  const auto run = [&](bool by_option) {
    auto model = mlp_f({8, 16, 2}, 9);
    Classifier<float> obj(model);
    Adam<float> adam(1e-2);
    TrainOptions o;
    o.epochs = 3;
    o.batch_size = 50;
    if (by_option) o.validation_split = 0.2;
    Trainer<float> trainer(o, ProgressCallback{});
    const TrainHistory h = by_option ? trainer.fit(obj, adam, data) : trainer.fit(obj, adam, rest, &held);
    return std::pair{h.epochs.back().validation.loss, Weights<float>(model).entries()[0].value};
  };
  const auto a = run(true), b = run(false);
  CHECK(a.first == b.first);
  CHECK(a.first > 0);
  REQUIRE(a.second.size() == b.second.size());
  CHECK(std::memcmp(a.second.data(), b.second.data(), a.second.bytes()) == 0);
}

TEST_CASE("Trainer: the same seeds give the same weights bit for bit", "[train][trainer]") {
  const auto train = xor_task(500, 6, 4);
  auto run = [&](std::uint64_t shuffle_seed) {
    auto model = mlp_f({6, 16, 16, 2}, 5, 0.25);  // with dropout: its masks must repeat too
    Classifier<float> obj(model);
    Adam<float> adam(3e-3);
    TrainOptions o;
    o.epochs = 3;
    o.batch_size = 32;
    o.seed = shuffle_seed;
    o.schedule = LrSchedule::cosine();
    Trainer<float>(o, {}).fit(obj, adam, train);
    return Weights<float>(model);
  };
  const auto a = run(9), b = run(9), c = run(10);
  REQUIRE(a.size() == b.size());
  bool all_equal = true, any_differs = false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const auto& x = a.entries()[i].value;
    all_equal = all_equal && std::memcmp(x.data(), b.entries()[i].value.data(), x.bytes()) == 0;
    any_differs = any_differs || std::memcmp(x.data(), c.entries()[i].value.data(), x.bytes()) != 0;
  }
  CHECK(all_equal);
  CHECK(any_differs);  // another shuffle seed changes the result: the seed is really used
}

TEST_CASE("Trainer: early stopping restores the best epoch's weights", "[train][trainer]") {
  // Validation labels are the opposite of the rule the training set teaches, so the validation
  // loss can only rise once training makes progress: the best epoch is the first.
  const auto train = xor_task(1000, 4, 6);
  auto val = xor_task(300, 4, 7);
  for (auto& y : val.labels) y = 1 - y;
  auto model = mlp_f({4, 16, 2}, 8);
  Classifier<float> obj(model);
  Adam<float> adam(1e-2);
  TrainOptions o;
  o.epochs = 20;
  o.patience = 2;
  std::ostringstream log;
  Trainer<float> trainer(o, print_progress(log));
  const auto h = trainer.fit(obj, adam, train, &val);
  REQUIRE(h.stopped_early);
  CHECK(h.epochs.size() == h.best_epoch + o.patience);
  const double best_loss = h.epochs[h.best_epoch - 1].validation.loss;
  CHECK(evaluate<float>(obj, val).loss == Approx(best_loss).epsilon(1e-12));
  CHECK(log.str().find("epoch 1/20  loss ") == 0);
  CHECK(log.str().find("samples/s") != std::string::npos);
  // The run's last report says why it ended and which weights the model keeps; so does the log.
  REQUIRE(h.best_epoch < h.epochs.size());
  CHECK(h.epochs.back().stopping_early);
  CHECK(h.epochs.back().restored_epoch == h.best_epoch);
  for (std::size_t e = 0; e + 1 < h.epochs.size(); ++e) CHECK_FALSE(h.epochs[e].stopping_early);
  const std::string said = "early stopping after epoch " + std::to_string(h.epochs.size()) +
                           ": val_loss did not improve for 2 epochs; the weights of epoch " +
                           std::to_string(h.best_epoch) + " (the best) are restored\n";
  CHECK(log.str().size() >= said.size());
  CHECK(log.str().compare(log.str().size() - said.size(), said.size(), said) == 0);
  {
    TrainOptions keep = o;
    keep.restore_best = false;
    auto fresh = mlp_f({4, 16, 2}, 8);
    Classifier<float> fresh_obj(fresh);
    Adam<float> fresh_adam(1e-2);
    std::ostringstream log2;
    const auto h3 = Trainer<float>(keep, print_progress(log2)).fit(fresh_obj, fresh_adam, train, &val);
    REQUIRE(h3.stopped_early);
    CHECK(h3.epochs.back().restored_epoch == 0);
    CHECK(log2.str().find("did not improve for 2 epochs; the model keeps this epoch's weights\n") != std::string::npos);
  }

  // monitoring an accuracy that can only fall behaves the same way
  o.monitor = Monitor::validation_accuracy;
  Trainer<float> by_accuracy(o, {});
  const auto h2 = by_accuracy.fit(obj, adam, train, &val);
  CHECK(h2.stopped_early);
}

TEST_CASE("Trainer: a report per step for a progress bar, and a stop on request", "[train][trainer]") {
  const auto train = xor_task(100, 4, 6);  // batches of 32: 4 steps per epoch (32, 32, 32, 4)
  auto model = mlp_f({4, 8, 2}, 8);
  Classifier<float> obj(model);
  SGD<float> sgd(0.1);
  TrainOptions o;
  o.epochs = 3;
  o.batch_size = 32;
  Trainer<float> trainer(o, {});
  std::vector<BatchReport> steps;
  trainer.set_batch_progress([&](const BatchReport& r) { steps.push_back(r); });
  const auto h = trainer.fit(obj, sgd, train);
  REQUIRE(steps.size() == 12);
  CHECK(steps[0].step == 1);
  CHECK(steps[0].samples == 32);
  CHECK(steps[3].epoch == 1);
  CHECK(steps[3].step == 4);
  CHECK(steps[3].steps == 4);
  CHECK(steps[3].samples == 100);
  CHECK(steps[3].eta_seconds == 0);
  CHECK(steps[4].epoch == 2);
  CHECK(steps[4].step == 1);
  for (std::size_t e = 0; e < 3; ++e) {
    // at an epoch's last step the running loss is the epoch's training loss, the same sum
    CHECK(steps[4 * e + 3].running_loss == h.epochs[e].train_loss);
    CHECK(steps[4 * e + 3].epochs == 3);
  }

  BatchReport br;
  br.epoch = 2;
  br.epochs = 10;
  br.step = 5;
  br.steps = 10;
  br.running_loss = 0.41234;
  br.samples_per_second = 5321;
  br.eta_seconds = 3.2;
  CHECK(format_progress_bar(br, 10) == "epoch 2/10 [=====>    ] 5/10  loss 0.4123  5321 samples/s  eta 3 s");
  br.step = 10;
  CHECK(format_progress_bar(br, 4).find("[====] 10/10") != std::string::npos);
  std::ostringstream not_a_terminal;
  CHECK_FALSE(print_batch_progress(not_a_terminal));  // a log gets the epoch lines only

  // A callback ends the run after the step it asked in; the weights stay as they are.
  Trainer<float> stopper(o, {});
  std::size_t calls = 0;
  stopper.set_batch_progress([&](const BatchReport& r) {
    ++calls;
    if (r.epoch == 2 && r.step == 2) stopper.request_stop();
  });
  const auto hs = stopper.fit(obj, sgd, train);
  CHECK(hs.stopped_by_request);
  CHECK_FALSE(hs.stopped_early);
  CHECK(hs.epochs.size() == 2);
  CHECK(calls == 6);
  stopper.set_batch_progress({});
  const auto again = stopper.fit(obj, sgd, train);  // a new fit starts afresh
  CHECK(again.epochs.size() == 3);
  CHECK_FALSE(again.stopped_by_request);
}

TEST_CASE("Trainer rejects bad data and options", "[train][trainer]") {
  auto d = xor_task(10, 2, 1);
  auto model = mlp_f({2, 2}, 1);
  Classifier<float> obj(model);
  SGD<float> sgd(0.1);
  Trainer<float> t({}, {});
  d.labels[3] = 2;
  expect_errc(errc::invalid_argument, [&] { t.fit(obj, sgd, d); });
  d.labels.pop_back();
  expect_errc(errc::invalid_argument, [&] { t.fit(obj, sgd, d); });
  TrainOptions bad;
  bad.batch_size = 0;
  expect_errc(errc::invalid_argument, [&] { Trainer<float>(bad, {}); });
}

TEST_CASE("A steady-state training step allocates nothing", "[train][alloc]") {
  if (edgesplit_test::allocations() < 0) {
    WARN("allocation counting is unavailable in this build (sanitizer allocator)");
    return;
  }
  // The cloud model of the Fashion-MNIST example at its batch size: its GEMM packing buffers are
  // past Eigen's 128 KiB stack limit, so only the kept workspaces make this zero.
  auto model = mlp_f({784, 512, 256, 10}, 1, 0.2);
  Classifier<float> obj(model);
  Adam<float> adam;
  const auto x = Tensor<float>(Shape{128, 784}, 0.5f);
  const auto y = random_labels(128, 10, 2);
  obj.set_training(true);
  obj.zero_grad();
  const auto params = obj.parameters();
  for (int i = 0; i < 2; ++i) {  // warm-up: workspaces and optimizer state
    obj.zero_grad();
    (void)obj.train_step(x.cview(), y);
    adam.step(params);
  }
  const long long before = edgesplit_test::allocations();
  for (int i = 0; i < 3; ++i) {
    obj.zero_grad();
    (void)obj.train_step(x.cview(), y);
    adam.step(params);
  }
  const long long made = edgesplit_test::allocations() - before;
  CHECK(made == 0);
}

// ---------------------------------------------------------------------------------------------
// Collaborative training

TEST_CASE("Collaborative loss lowers edge-cloud disagreement on a synthetic task", "[train][collaborative]") {
  // The cloud model learns the rule "class = x0 > 0" from clean labels. The edge's training
  // labels are flipped wherever x1 > 0.4 (30% of the points), as if its data were labelled
  // differently there. Trained alone, the edge model learns the flipped rule and disagrees with
  // the cloud on about 30% of test points; trained with the collaborative loss (frozen cloud,
  // consistency weight 2 against task weight 1) it follows the cloud. Measured: alone 0.301,
  // collaborative 0.005 (MSE on logits) and 0.009 (KL, T = 4); the check asks for half.
  const auto test = xor_task(2000, 4, 12, 0.0);
  auto clean = xor_task(3000, 4, 11, 0.0);
  for (std::size_t i = 0; i < clean.size(); ++i) clean.labels[i] = clean.inputs[i * 4] > 0;
  auto noisy = clean;
  for (std::size_t i = 0; i < noisy.size(); ++i)
    if (noisy.inputs[i * 4 + 1] > 0.4f) noisy.labels[i] = 1 - noisy.labels[i];
  TrainOptions o;
  o.epochs = 10;
  auto cloud = mlp_f({4, 32, 2}, 13);
  {
    Classifier<float> obj(cloud);
    Adam<float> adam(1e-2);
    Trainer<float>(o, {}).fit(obj, adam, clean);
  }
  auto disagreement = [&](Sequential<float>& edge) {
    const auto zc = cloud.predict(test.inputs.cview());
    const auto ze = edge.predict(test.inputs.cview());
    return static_cast<double>(count_disagreements(ze.cview(), zc.cview())) / static_cast<double>(test.size());
  };
  auto alone = mlp_f({4, 8, 2}, 14);
  {
    Classifier<float> obj(alone);
    Adam<float> adam(1e-2);
    Trainer<float>(o, {}).fit(obj, adam, noisy);
  }
  for (auto kind : {Consistency::mse_logits, Consistency::kl_softened}) {
    auto together = mlp_f({4, 8, 2}, 14);  // same initial weights
    CollaborativeLoss loss;
    loss.consistency = kind;
    loss.weight = 2;
    loss.train_cloud = false;
    Collaborative<float> obj(cloud, {&together}, loss);
    Adam<float> adam(1e-2);
    Trainer<float>(o, {}).fit(obj, adam, noisy);
    const double d_alone = disagreement(alone), d_together = disagreement(together);
    INFO("disagreement with the cloud: alone " << d_alone << ", collaborative " << d_together);
    CHECK(d_together < 0.5 * d_alone);
  }
}

// ---------------------------------------------------------------------------------------------
// Dropout, Standardizer

TEST_CASE("Dropout: identity at inference, seeded masks with the right rate and scale", "[train][dropout]") {
  const std::size_t n = 100000;
  Tensor<float> x(Shape{10, n / 10}, 1.0f), y(x.shape()), y2(x.shape());
  Dropout<float> d(0.3, 42);
  d.forward(x.cview(), y.view());
  CHECK(std::memcmp(x.data(), y.data(), x.bytes()) == 0);

  d.set_training(true);
  Dropout<float> same = d;  // copies carry the generator state
  d.forward(x.cview(), y.view());
  same.forward(x.cview(), y2.view());
  CHECK(std::memcmp(y.data(), y2.data(), y.bytes()) == 0);
  std::size_t zeros = 0;
  for (float v : y.span()) {
    if (v == 0) ++zeros;
    else CHECK(v == Approx(1 / 0.7));
  }
  // Binomial(n, 0.3): std of the rate sqrt(0.3 * 0.7 / n) = 0.00145; 5 sigma = 0.0073.
  CHECK(std::abs(static_cast<double>(zeros) / n - 0.3) < 0.0073);
  d.forward(x.cview(), y2.view());
  CHECK(std::memcmp(y.data(), y2.data(), y.bytes()) != 0);  // a fresh mask each step
  expect_errc(errc::invalid_argument, [] { Dropout<float>(1.0); });
  expect_errc(errc::invalid_argument, [] { Dropout<float>(-0.1); });
}

TEST_CASE("Standardizer: fitted statistics, constant features, saved and applied in the model", "[train][standardizer]") {
  Rng rng(1);
  Tensor<float> data(Shape{1000, 3});
  for (std::size_t i = 0; i < 1000; ++i) {
    data[i * 3] = static_cast<float>(rng.normal() * 4 + 10);
    data[i * 3 + 1] = static_cast<float>(rng.uniform(-1, 1));
    data[i * 3 + 2] = 7.0f;  // constant
  }
  Standardizer<float> st(3);
  st.fit(data.cview());
  CHECK(st.stddev()[2] == 1.0f);
  CHECK(st.mean()[2] == 7.0f);
  Tensor<float> z = data;
  st.transform(z.view());
  for (std::size_t f = 0; f < 3; ++f) {
    double s = 0, sq = 0;
    for (std::size_t i = 0; i < 1000; ++i) s += z[i * 3 + f];
    s /= 1000;
    for (std::size_t i = 0; i < 1000; ++i) sq += (z[i * 3 + f] - s) * (z[i * 3 + f] - s);
    // float rounding of (x - m) / s: a few ulp of values of order 3 (10 std devs of headroom)
    CHECK(std::abs(s) < 1e-5);
    CHECK(std::sqrt(sq / 1000) == Approx(f == 2 ? 0.0 : 1.0).margin(1e-5));
  }
  Standardizer<float> global(3, Standardize::global);
  global.fit(data.cview());
  CHECK(global.mean().size() == 1);

  // in a model: raw inputs through the standardizer equal standardized inputs without it
  Rng r2(2);
  Sequential<float> with, without;
  with.add<Standardizer<float>>(st);
  auto& d1 = with.add<Dense<float>>(3, 2, r2);
  without.add<Dense<float>>(d1);
  const auto a = with.predict(data.cview()), b = without.predict(z.cview());
  CHECK(std::memcmp(a.data(), b.data(), a.bytes()) == 0);
  const auto state = model_state(with);
  REQUIRE(state.size() == 4);
  CHECK(state[0].name == "0.mean");
  CHECK(state[1].name == "0.std");
  CHECK(state[2].name == "1.weight");
  expect_errc(errc::shape_mismatch, [&] { st.fit(Tensor<float>(Shape{4, 2}).cview()); });
  expect_errc(errc::invalid_argument, [] { Standardizer<float>(0); });
}

// ---------------------------------------------------------------------------------------------
// Parameter sync

TEST_CASE("Weights: get, set, copy, average, shape mismatches are typed errors", "[train][sync]") {
  auto a = mlp_f({5, 4, 3}, 1), b = mlp_f({5, 4, 3}, 2), c = mlp_f({5, 4, 3}, 3);
  const Weights<float> wa(a);
  REQUIRE(wa.size() == 4);
  CHECK(wa.entries()[0].name == "0.weight");
  CHECK(wa.find("2.bias") != nullptr);
  CHECK(wa.find("1.weight") == nullptr);
  // Looping over a temporary's entries: they are moved out, not viewed (ASan would catch a view).
  std::size_t seen = 0;
  for (const auto& e : Weights<float>(a).entries()) seen += e.value.size() > 0 && e.name == wa.entries()[seen].name;
  CHECK(seen == 4);

  wa.apply_to(b);
  CHECK(std::memcmp(Weights<float>(b).entries()[0].value.data(), wa.entries()[0].value.data(),
                    wa.entries()[0].value.bytes()) == 0);
  copy_weights(c, b);
  const auto x = Tensor<float>(Shape{2, 5}, 0.25f);
  const auto yc = c.predict(x.cview()), yb = b.predict(x.cview());
  CHECK(std::memcmp(yc.data(), yb.data(), yc.bytes()) == 0);

  // average of a and c, weighted 1:3, into b
  std::vector<Sequential<float>*> ms{&a, &c};
  const std::vector<double> shares{1, 3};
  average_weights<float>(ms, b, shares);
  const Weights<float> wb(b), wc(c);
  for (std::size_t i = 0; i < wb.size(); ++i)
    for (std::size_t j = 0; j < wb.entries()[i].value.size(); ++j)
      CHECK(wb.entries()[i].value[j] ==
            static_cast<float>(0.25 * wa.entries()[i].value[j] + 0.75 * wc.entries()[i].value[j]));
  average_weights<float>(ms, a);  // into one of the inputs
  CHECK(Weights<float>(a).entries()[1].value[0] ==
        static_cast<float>(0.5 * wa.entries()[1].value[0] + 0.5 * wc.entries()[1].value[0]));

  auto wider = mlp_f({5, 6, 3}, 4), deeper = mlp_f({5, 4, 4, 3}, 5);
  expect_errc(errc::shape_mismatch, [&] { copy_weights(a, wider); });
  expect_errc(errc::shape_mismatch, [&] { copy_weights(a, deeper); });
  expect_errc(errc::shape_mismatch, [&] { copy_weights(deeper, a); });
  std::vector<Sequential<float>*> mixed{&a, &wider};
  expect_errc(errc::shape_mismatch, [&] { average_weights<float>(mixed, a); });
  expect_errc(errc::invalid_argument, [&] { average_weights<float>(ms, a, std::vector<double>{1}); });
  expect_errc(errc::invalid_argument, [&] { average_weights<float>(ms, a, std::vector<double>{0, 0}); });
  const auto before = Weights<float>(a);
  expect_errc(errc::shape_mismatch, [&] { Weights<float>(wider).apply_to(a); });
  CHECK(std::memcmp(Weights<float>(a).entries()[0].value.data(), before.entries()[0].value.data(),
                    before.entries()[0].value.bytes()) == 0);  // unchanged on error

  // partial: push the first layer only (the edge half of a split model)
  auto halves = c.split(1);
  auto& head = halves.first;
  Weights<float> first;
  first.add("0.weight", wa.entries()[0].value);
  first.apply_to(head, true);
  expect_errc(errc::shape_mismatch, [&] { first.apply_to(head); });  // exact needs the bias too
  expect_errc(errc::invalid_argument, [&] { first.add("0.weight", wa.entries()[0].value); });
}

// ---------------------------------------------------------------------------------------------
// Layer specs and the factory

TEST_CASE("Every layer rebuilds from its spec", "[train][factory]") {
  Rng rng(1);
  std::vector<std::unique_ptr<Layer<float>>> layers;
  layers.push_back(std::make_unique<Dense<float>>(7, 3, rng));
  layers.push_back(std::make_unique<ReLU<float>>());
  layers.push_back(std::make_unique<LeakyReLU<float>>(0.125));
  layers.push_back(std::make_unique<Identity<float>>());
  layers.push_back(std::make_unique<Sigmoid<float>>());
  layers.push_back(std::make_unique<Tanh<float>>());
  layers.push_back(std::make_unique<GELU<float>>());
  layers.push_back(std::make_unique<GELUTanh<float>>());
  layers.push_back(std::make_unique<Softmax<float>>());
  layers.push_back(std::make_unique<Dropout<float>>(0.25, 99));
  layers.push_back(std::make_unique<Standardizer<float>>(12, Standardize::global, 1e-4));
  layers.push_back(std::make_unique<ReLU6<float>>());
  layers.push_back(std::make_unique<Clip<float>>(-2.5, 0.5));
  layers.push_back(std::make_unique<HardSigmoid<float>>(1.0 / 6, 0.5));
  layers.push_back(std::make_unique<HardSwish<float>>());
  layers.push_back(std::make_unique<SiLU<float>>());
  layers.push_back(std::make_unique<BatchNorm2D<float>>(6, 1e-3, 0.01));
  for (const auto& l : layers) {
    const auto rebuilt = make_layer<float>(l->spec());
    INFO(l->describe());
    CHECK(rebuilt->spec() == l->spec());
    CHECK(rebuilt->describe() == l->describe());
    CHECK(rebuilt->parameter_count() == l->parameter_count());
  }
  CHECK(layer_storage(layers[0]->spec()) == 8u * 3u);
  expect_errc(errc::unsupported, [] { (void)make_layer<float>({"Conv2d", {}, {}}); });
  expect_errc(errc::invalid_argument, [] { (void)make_layer<float>({"Dense", {{"in", 3}}, {}}); });
  expect_errc(errc::invalid_argument, [] { (void)make_layer<float>({"Dense", {{"in", 3}, {"out", 0}}, {}}); });
  expect_errc(errc::too_large, [] {
    (void)make_layer<float>({"Dense", {{"in", std::uint64_t{1} << 40}, {"out", std::uint64_t{1} << 40}}, {}});
  });
  expect_errc(errc::invalid_argument, [] { (void)make_layer<float>({"LeakyReLU", {}, {{"alpha", 2.0}}}); });
}

TEST_CASE("A const model's weights: read, copied and saved without a mutable model, packs kept", "[train][sync]") {
  Sequential<float> model = mlp_f({6, 5, 3}, 4);
  const Sequential<float> reference = model;  // unpacked, same weights
  model.pack_weights();                       // as a server's tail is
  const Sequential<float>& served = model;
  const auto packed = [&] {
    return static_cast<const Dense<float>&>(served[0]).weights_packed() &&
           static_cast<const Dense<float>&>(served[2]).weights_packed();
  };
  REQUIRE(packed());

  const std::vector<ConstParameter<float>> ro = served.parameters();
  Sequential<float> mutable_copy = reference;
  const std::vector<Parameter<float>> rw = mutable_copy.parameters();
  REQUIRE(ro.size() == 4);
  REQUIRE(rw.size() == 4);
  for (std::size_t i = 0; i < ro.size(); ++i) {
    CHECK(ro[i].name == rw[i].name);
    REQUIRE(ro[i].value.shape() == rw[i].value.shape());
    CHECK(std::memcmp(ro[i].value.data(), rw[i].value.data(), ro[i].value.bytes()) == 0);
  }
  CHECK(served.buffers().empty());
  CHECK(packed());

  const Weights<float> w(served);
  CHECK(w.size() == 4);
  Sequential<float> target = mlp_f({6, 5, 3}, 99);
  copy_weights(served, target);
  const Tensor<float> x = [] {
    Tensor<float> t(Shape{3, 6});
    Rng rng(5);
    for (auto& v : t.span()) v = static_cast<float>(rng.uniform(-1, 1));
    return t;
  }();
  Sequential<float> ref = reference;
  const Tensor<float> want = ref.predict(x.cview());
  const Tensor<float> got = target.predict(x.cview());
  CHECK(std::memcmp(want.data(), got.data(), want.bytes()) == 0);
  CHECK(packed());
#if EDGESPLIT_TEST_JSON
  CHECK(to_safetensors(served) == to_safetensors(reference));
  CHECK(packed());
#endif

  // A graph inside a Sequential (GraphLayer) reads its nodes' tensors through const access too.
  Graph<float> g;
  Rng rng(8);
  std::string y = g.input("x", Shape{6});
  y = g.add<Dense<float>>(y, 6, 4, rng);
  y = g.add<ReLU<float>>(y);
  g.output(g.add<Dense<float>>(y, 4, 3, rng));
  const Graph<float>& cg = g;
  const auto graph_state = cg.state();
  REQUIRE(graph_state.size() == 4);
  CHECK(graph_state[0].name == g.state()[0].name);
  Sequential<float> wrapped = as_sequential(g);
  wrapped.pack_weights();
  const Sequential<float>& cw = wrapped;
  const auto wrapped_params = cw.parameters();
  REQUIRE(wrapped_params.size() == 4);
  CHECK(wrapped_params[0].name.find(graph_state[0].name) != std::string::npos);
  CHECK(std::memcmp(wrapped_params[3].value.data(), graph_state[3].value.data(), graph_state[3].value.bytes()) == 0);

  // The mutable overload is for writing: it drops the pack, so that a write is seen.
  (void)model.parameters();
  CHECK_FALSE(packed());
}

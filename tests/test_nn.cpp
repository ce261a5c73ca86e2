// Tests for nn/: Dense, Conv2D and activations against double-precision references, Sequential,
// split, shape errors, Conv2D's gradients, and the no-allocation promise of steady-state inference.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <limits>
#include <memory>
#include <numbers>
#include <string>
#include <vector>

#include "alloc_counter.hpp"
#include "edgesplit/edgesplit.hpp"
#include "test_util.hpp"

using namespace edgesplit;
using edgesplit_test::expect_errc;

namespace {

constexpr double u32 = std::numeric_limits<float>::epsilon() / 2;  // unit roundoff of float

Tensor<float> random_tensor(const Shape& s, std::uint64_t seed, double lo = -1, double hi = 1) {
  Rng rng(seed);
  Tensor<float> t(s);
  for (float& v : t.span()) v = static_cast<float>(rng.uniform(lo, hi));
  return t;
}

Sequential<float> mlp(std::initializer_list<std::size_t> widths, std::uint64_t seed) {
  Rng rng(seed);
  Sequential<float> m;
  auto it = widths.begin();
  std::size_t prev = *it++;
  for (; it != widths.end(); ++it) {
    if (m.size()) m.add<ReLU<float>>();
    auto& d = m.add<Dense<float>>(prev, *it, rng);
    for (float& b : d.bias().span()) b = static_cast<float>(rng.uniform(-0.1, 0.1));
    prev = *it;
  }
  return m;
}

}  // namespace

TEST_CASE("Dense equals a double-precision reference within the dot-product error bound", "[nn][dense]") {
  for (std::size_t batch : {1, 2, 7, 64}) {
    for (auto [in, out] : {std::pair<std::size_t, std::size_t>{1, 1}, {3, 5}, {784, 64}, {257, 33}}) {
      Rng rng(42 + in + out);
      Dense<float> d(in, out, rng);
      for (float& b : d.bias().span()) b = static_cast<float>(rng.uniform(-1, 1));
      const auto x = random_tensor(Shape{batch, in}, 7 * batch + in);
      Tensor<float> y(d.output_shape(x.shape()));
      d.forward(x, y);
      // Each output is a sum of in + 1 float terms (products exact in double). Any evaluation
      // order, FMA or not, stays within gamma_{in+1} * sum |terms| of the exact value (Higham,
      // Accuracy and Stability, eq. 3.5), plus half an ulp for rounding the result to float.
      const double gamma = (in + 1) * u32 / (1 - (in + 1) * u32);
      for (std::size_t b = 0; b < batch; ++b)
        for (std::size_t o = 0; o < out; ++o) {
          double exact = d.bias()[o], mag = std::abs(double(d.bias()[o]));
          for (std::size_t i = 0; i < in; ++i) {
            const double t = double(x[b * in + i]) * double(d.weight()[o * in + i]);
            exact += t;
            mag += std::abs(t);
          }
          INFO("batch " << batch << " " << d.describe() << " b=" << b << " o=" << o);
          CHECK(std::abs(double(y[b * out + o]) - exact) <= gamma * mag + u32 * std::abs(exact));
        }
    }
  }
}

TEST_CASE("Dense reports shapes, FLOPs and parameters and accepts any rank with matching width", "[nn][dense]") {
  Dense<float> d(12, 4);
  CHECK(d.output_shape(Shape{5, 12}) == Shape{5, 4});
  CHECK(d.output_shape(Shape{5, 3, 4}) == Shape{5, 4});  // flattened features
  CHECK(d.flops(Shape{5, 12}) == 5u * 4u * (2u * 12u + 1u));
  CHECK(d.parameter_count() == 12u * 4u + 4u);
  CHECK(d.describe() == "Dense(12 -> 4)");
  expect_errc(errc::shape_mismatch, [&] { (void)d.output_shape(Shape{5, 11}); });
  expect_errc(errc::shape_mismatch, [&] { (void)d.output_shape(Shape{12}); });
  expect_errc(errc::invalid_argument, [&] { (void)d.output_shape(Shape{0, 12}); });
  expect_errc(errc::invalid_argument, [] { Dense<float>(0, 3); });

  Tensor<float> x(Shape{2, 12}), bad_out(Shape{2, 5});
  expect_errc(errc::shape_mismatch, [&] { d.forward(x, bad_out); });
}

namespace {

double ref_sigmoid(double x) { return 1 / (1 + std::exp(-x)); }
double ref_gelu(double x) { return 0.5 * x * std::erfc(-x / std::numbers::sqrt2); }
double ref_gelu_tanh(double x) {
  return 0.5 * x * (1 + std::tanh(std::sqrt(2 / std::numbers::pi) * (x + 0.044715 * x * x * x)));
}

template <class L>
void check_activation(L layer, double (*ref)(double), double rel_ulps, double abs_x_ulps) {
  const std::size_t n = 4099;  // odd: the SIMD tail runs too
  auto x = random_tensor(Shape{1, n}, 5, -12, 12);
  x[0] = 0;
  x[1] = -0.0f;
  x[2] = 1e-30f;
  Tensor<float> y(x.shape());
  layer.forward(x, y);
  for (std::size_t i = 0; i < n; ++i) {
    const double r = ref(x[i]);
    INFO(layer.name() << " x=" << x[i] << " got " << y[i] << " want " << r);
    CHECK(std::abs(double(y[i]) - r) <=
          rel_ulps * u32 * std::abs(r) + abs_x_ulps * u32 * std::abs(double(x[i])) +
              std::numeric_limits<float>::denorm_min());
  }
}

}  // namespace

TEST_CASE("Activations equal double-precision references", "[nn][activations]") {
  // ReLU and LeakyReLU are exact. The transcendental ones are bounded by a few ulp of the result
  // (the exp/tanh/erf approximations are ~1-2 ulp, the surrounding arithmetic adds one rounding
  // per operation); GELU's 1 + erf(x) and Sigmoid's 1 + exp(-x) lose relative accuracy only where
  // the result is small, where an ulp of x bounds the error instead (the abs_x term).
  check_activation(ReLU<float>{}, [](double x) { return x > 0 ? x : 0.0; }, 0, 0);
  check_activation(LeakyReLU<float>(0.2), [](double x) { return x > 0 ? x : 0.2 * double(float(0.2)) / 0.2 * x; },
                   1, 0);
  check_activation(Identity<float>{}, [](double x) { return x; }, 0, 0);
  check_activation(Sigmoid<float>{}, ref_sigmoid, 8, 0);
  check_activation(Tanh<float>{}, [](double x) { return std::tanh(x); }, 8, 0);
  check_activation(GELU<float>{}, ref_gelu, 8, 8);
  check_activation(GELUTanh<float>{}, ref_gelu_tanh, 8, 8);
  expect_errc(errc::invalid_argument, [] { LeakyReLU<float>(1.5); });
  expect_errc(errc::invalid_argument, [] { LeakyReLU<float>(-0.1); });
}

TEST_CASE("Softmax is stable on huge logits and sums to one", "[nn][activations]") {
  Softmax<float> sm;
  const std::size_t cols = 37;
  Tensor<float> x(Shape{4, cols});
  for (std::size_t c = 0; c < cols; ++c) {
    x[c] = c % 2 ? 1e4f : -1e4f;                   // extreme, mixed
    x[cols + c] = 1e4f;                             // all huge: uniform
    x[2 * cols + c] = -1e4f + static_cast<float>(c);  // all very negative
    x[3 * cols + c] = static_cast<float>(c) * 0.1f;   // ordinary
  }
  Tensor<float> y(x.shape());
  sm.forward(x, y);
  for (std::size_t r = 0; r < 4; ++r) {
    double total = 0;
    for (std::size_t c = 0; c < cols; ++c) {
      const float p = y[r * cols + c];
      REQUIRE(std::isfinite(p));
      CHECK(p >= 0.0f);
      total += p;
    }
    // cols roundings in the sum, one in each division: within (cols + 1) u of 1.
    CHECK(std::abs(total - 1.0) <= (cols + 1) * u32);
  }
  CHECK(y[1] == Approx(1.0 / 18).epsilon(1e-5));  // 18 odd columns share the mass
  CHECK(y[cols] == Approx(1.0 / cols).epsilon(1e-5));
  // ordinary row against the double reference
  double z = 0;
  for (std::size_t c = 0; c < cols; ++c) z += std::exp(double(x[3 * cols + c]) - double(x[3 * cols + cols - 1]));
  for (std::size_t c = 0; c < cols; ++c) {
    const double r = std::exp(double(x[3 * cols + c]) - double(x[3 * cols + cols - 1])) / z;
    CHECK(std::abs(y[3 * cols + c] - r) <= (16 + 2.0 * cols) * u32 * r);
  }
}

TEST_CASE("Sequential: split(k) at every k equals the whole model bit for bit", "[nn][sequential]") {
  auto model = mlp({20, 16, 12, 8, 3}, 11);
  model.add<Softmax<float>>();
  REQUIRE(model.size() == 8);
  for (std::size_t batch : {1, 5}) {
    const auto x = random_tensor(Shape{batch, 20}, 3 + batch);
    const Tensor<float> whole = model.predict(x);
    for (std::size_t k = 0; k <= model.size(); ++k) {
      auto [head, tail] = model.split(k);
      CHECK(head.size() == k);
      CHECK(tail.size() == model.size() - k);
      const Tensor<float> mid = head.predict(x);
      const Tensor<float> out = tail.predict(mid);
      REQUIRE(out.shape() == whole.shape());
      for (std::size_t i = 0; i < out.size(); ++i) {
        INFO("k=" << k << " batch=" << batch << " i=" << i);
        CHECK(out[i] == whole[i]);
      }
    }
  }
  expect_errc(errc::out_of_range, [&] { (void)model.split(9); });
}

TEST_CASE("Sequential: per-layer description for the planner", "[nn][sequential]") {
  auto model = mlp({784, 512, 256, 10}, 1);
  const auto info = model.describe(Shape{32, 784});
  REQUIRE(info.size() == 5);
  CHECK(info[0].name == "Dense(784 -> 512)");
  CHECK(info[0].output == Shape{32, 512});
  CHECK(info[0].output_bytes == 32u * 512u * 4u);
  CHECK(info[0].flops == 32u * 512u * (2u * 784u + 1u));
  CHECK(info[0].parameters == 784u * 512u + 512u);
  CHECK(info[1].name == "ReLU");
  CHECK(info[1].parameters == 0);
  CHECK(info[4].output == Shape{32, 10});
  CHECK(model.parameter_count() == 784u * 512u + 512u + 512u * 256u + 256u + 256u * 10u + 10u);
  std::uint64_t f = 0;
  for (const auto& l : info) f += l.flops;
  CHECK(model.flops(Shape{32, 784}) == f);
  const auto params = model.parameters();
  REQUIRE(params.size() == 6);
  CHECK(params[0].name == "0.weight");
  CHECK(params[0].value.shape() == Shape{512, 784});
  CHECK(params[5].name == "4.bias");
}

TEST_CASE("Sequential: bad inputs give typed errors", "[nn][sequential]") {
  auto model = mlp({8, 4, 2}, 2);
  Tensor<float> wrong_width(Shape{3, 7}), wrong_rank(Shape{8}), empty_batch(Shape{0, 8}), out(Shape{3, 3});
  expect_errc(errc::shape_mismatch, [&] { (void)model.forward(wrong_width.cview()); });
  expect_errc(errc::shape_mismatch, [&] { (void)model.forward(wrong_rank.cview()); });
  expect_errc(errc::invalid_argument, [&] { (void)model.forward(empty_batch.cview()); });
  Tensor<float> good(Shape{3, 8});
  expect_errc(errc::shape_mismatch, [&] { model.forward(good.cview(), out.view()); });
  expect_errc(errc::invalid_argument, [&] { model.add(nullptr); });

  Sequential<float> empty;
  CHECK(empty.forward(good.cview()).data() == good.data());  // an empty model passes its input on
}

TEST_CASE("Sequential: copies are deep", "[nn][sequential]") {
  auto a = mlp({4, 3}, 9);
  Sequential<float> b = a;
  static_cast<Dense<float>&>(b[0]).weight()[0] += 1;
  CHECK(static_cast<Dense<float>&>(a[0]).weight()[0] != static_cast<Dense<float>&>(b[0]).weight()[0]);
}

TEST_CASE("Steady-state forward allocates nothing", "[nn][alloc]") {
  if (edgesplit_test::allocations() < 0) {
    WARN("allocation counting is unavailable in this build (sanitizer allocator)");
    return;
  }
  {  // the counter itself must see allocations, or the zero below would prove nothing
    const long long before = edgesplit_test::allocations();
    auto probe = std::make_unique<std::vector<float>>(100);
    Tensor<float> t(Shape{3, 3});
    CHECK(edgesplit_test::allocations() - before >= 3);
  }
  auto model = mlp({784, 512, 256, 10}, 4);
  model.add<Softmax<float>>();
  for (std::size_t batch : {64, 1, 256}) {
    const auto x = random_tensor(Shape{batch, 784}, batch);
    Tensor<float> out(model.output_shape(x.shape()));
    model.forward(x, out);  // warm-up: the workspace grows to this batch
    const long long before = edgesplit_test::allocations();
    for (int i = 0; i < 5; ++i) model.forward(x, out);
    // a smaller batch reuses the larger workspace
    const auto half = x.batch(0, batch / 2 + 1);
    (void)model.forward(half);
    const long long made = edgesplit_test::allocations() - before;  // read before INFO allocates
    INFO("batch " << batch);
    CHECK(made == 0);
  }
}

TEST_CASE("Dense: packed weights give the same outputs bit for bit and are dropped when weights may change",
          "[nn][dense]") {
  // 784 inputs span two of the kernel's depth blocks; batch 1000 spans several column blocks.
  const auto model = mlp({784, 512, 256, 10}, 21);
  Sequential<float> packed = model;
  packed.pack_weights();
  auto dense = [](Sequential<float>& m, std::size_t i) -> Dense<float>& { return static_cast<Dense<float>&>(m[i]); };
  for (std::size_t i : {0, 2, 4}) CHECK(dense(packed, i).weights_packed());
  Sequential<float> plain = model;
  for (std::size_t batch : {1, 2, 3, 7, 45, 64, 1000}) {
    const auto x = random_tensor(Shape{batch, 784}, 100 + batch);
    const Tensor<float> want = plain.predict(x.cview());
    const Tensor<float> got = packed.predict(x.cview());
    std::size_t differ = 0;
    for (std::size_t j = 0; j < want.size(); ++j) differ += want[j] != got[j];
    INFO("batch " << batch);
    CHECK(differ == 0);  // the same kernel on the same blocks in the same order
  }
  if (edgesplit_test::allocations() >= 0) {  // packed forward passes allocate nothing either
    const auto x = random_tensor(Shape{64, 784}, 7);
    (void)packed.forward(x.cview());
    const long long before = edgesplit_test::allocations();
    for (int i = 0; i < 3; ++i) (void)packed.forward(x.cview());
    CHECK(edgesplit_test::allocations() - before == 0);
  }
  // Copies start unpacked; assigning weights drops the pack of the layer assigned to.
  Sequential<float> copy = packed;
  CHECK_FALSE(dense(copy, 0).weights_packed());
  Dense<float> d0 = dense(packed, 0);
  d0.pack_weights();
  d0 = dense(plain, 0);
  CHECK_FALSE(d0.weights_packed());
  // Anything that hands out the weights for writing drops the pack, so the write is seen.
  auto params = packed.parameters();
  for (std::size_t i : {0, 2, 4}) CHECK_FALSE(dense(packed, i).weights_packed());
  packed.pack_weights();
  params = packed.parameters();
  params[0].value[5] += 0.25f;  // "0.weight"
  auto plain_params = plain.parameters();
  plain_params[0].value[5] += 0.25f;
  const auto x = random_tensor(Shape{16, 784}, 3);
  const Tensor<float> want = plain.predict(x.cview());
  const Tensor<float> got = packed.predict(x.cview());
  for (std::size_t j = 0; j < want.size(); ++j) CHECK(got[j] == want[j]);
  packed.pack_weights();
  dense(packed, 2).weight()[0] += 1.0f;
  CHECK_FALSE(dense(packed, 2).weights_packed());
  CHECK(dense(packed, 0).weights_packed());
  packed.zero_grad();
  (void)packed.forward(x.cview());
  packed.backward(x.cview(), Tensor<float>(Shape{16, 10}, 1.0f).cview());
  CHECK_FALSE(dense(packed, 0).weights_packed());
}

// ---------------------------------------------------------------------------------------------
// Conv2D

namespace {

/// One Conv2D configuration of the test grid, with the input plane it runs on.
struct ConvCase {
  std::size_t in, out, kh, kw;
  Conv2DOptions options;
  std::size_t batch, height, width;
};

std::string conv_case_str(const ConvCase& c) {
  const Padding2D& p = c.options.padding;
  return "in " + std::to_string(c.in) + " out " + std::to_string(c.out) + " k " + std::to_string(c.kh) + "x" +
         std::to_string(c.kw) + " s " + std::to_string(c.options.stride_h) + "x" + std::to_string(c.options.stride_w) +
         " pad " + std::to_string(p.top) + "," + std::to_string(p.left) + "," + std::to_string(p.bottom) + "," +
         std::to_string(p.right) + " d " + std::to_string(c.options.dilation_h) + "x" +
         std::to_string(c.options.dilation_w) + " groups " + std::to_string(c.options.groups) + " bias " +
         std::to_string(c.options.bias) + " batch " + std::to_string(c.batch) + " plane " + std::to_string(c.height) +
         "x" + std::to_string(c.width);
}

/// The grid: stride 1/2, padding none/1/asymmetric, dilation 1/2, groups 1/2/depthwise (with a
/// channel multiplier of 2), bias on/off, batch 1/3; plus a 1x1 kernel (no unfolding), a kernel
/// wider than the unpadded plane, and a deep one (K = 32 * 3 * 3 = 288) for the error bound.
std::vector<ConvCase> conv_grid() {
  std::vector<ConvCase> cases;
  const Padding2D pads[] = {{0, 0, 0, 0}, {1, 1, 1, 1}, {0, 2, 1, 1}};
  for (std::size_t stride : {1, 2})
    for (const Padding2D& pad : pads)
      for (std::size_t dilation : {1, 2})
        for (std::size_t groups : {1, 2, 4})
          for (bool bias : {true, false})
            for (std::size_t batch : {1, 3}) {
              ConvCase c{4, groups == 4 ? 8u : 6u, 3, 2, {}, batch, 9, 7};
              c.options.stride_h = stride;
              c.options.stride_w = stride == 1 ? 1 : 3;  // strides differ per axis too
              c.options.padding = pad;
              c.options.dilation_h = dilation;
              c.options.dilation_w = 1;
              c.options.groups = groups;
              c.options.bias = bias;
              cases.push_back(c);
            }
  ConvCase one{6, 4, 1, 1, {}, 3, 5, 4};  // 1x1, stride 1, no padding: the direct path
  cases.push_back(one);
  one.options.groups = 2;
  one.options.bias = false;
  cases.push_back(one);
  ConvCase wide{2, 3, 5, 5, {}, 2, 3, 4};  // kernel larger than the plane, padding makes it fit
  wide.options.padding = same_padding(5, 5);
  cases.push_back(wide);
  ConvCase deep{32, 16, 3, 3, {}, 2, 12, 11};
  deep.options.padding = same_padding(3, 3);
  deep.options.stride_h = 2;
  cases.push_back(deep);
  return cases;
}

template <class T>
Tensor<T> random_tensor_t(const Shape& s, std::uint64_t seed, double lo = -1, double hi = 1) {
  Rng rng(seed);
  Tensor<T> t(s);
  for (T& v : t.span()) v = static_cast<T>(rng.uniform(lo, hi));
  return t;
}

/// The plain convolution, by its definition, in long double: out[n][o][y][x] = bias[o] +
/// sum over c in o's group, i, j of in[n][c][y*sh - top + i*dh][x*sw - left + j*dw] * w[o][c][i][j]
/// (terms in the padding are zero). Also returns, per output, the sum of |terms| (bias included).
template <class T>
void reference_conv(const Conv2D<T>& conv, const Tensor<T>& x, std::vector<long double>& exact,
                    std::vector<long double>& magnitude) {
  const Window2D& w = conv.window();
  const std::size_t N = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
  const std::size_t O = conv.out_channels(), G = conv.groups(), Cg = C / G, Og = O / G;
  const std::size_t OH = w.out_h(H), OW = w.out_w(W);
  exact.assign(N * O * OH * OW, 0);
  magnitude.assign(exact.size(), 0);
  for (std::size_t n = 0; n < N; ++n)
    for (std::size_t o = 0; o < O; ++o)
      for (std::size_t oy = 0; oy < OH; ++oy)
        for (std::size_t ox = 0; ox < OW; ++ox) {
          long double s = conv.has_bias() ? conv.bias()[o] : T(0);
          long double m = std::abs(s);
          for (std::size_t c = 0; c < Cg; ++c)
            for (std::size_t i = 0; i < w.kernel_h; ++i)
              for (std::size_t j = 0; j < w.kernel_w; ++j) {
                const long long iy = static_cast<long long>(oy * w.stride_h + i * w.dilation_h) -
                                     static_cast<long long>(w.padding.top);
                const long long ix = static_cast<long long>(ox * w.stride_w + j * w.dilation_w) -
                                     static_cast<long long>(w.padding.left);
                if (iy < 0 || ix < 0 || iy >= static_cast<long long>(H) || ix >= static_cast<long long>(W)) continue;
                const std::size_t ci = (o / Og) * Cg + c;
                const long double t =
                    static_cast<long double>(x[((n * C + ci) * H + static_cast<std::size_t>(iy)) * W + static_cast<std::size_t>(ix)]) *
                    static_cast<long double>(conv.weight()[((o * Cg + c) * w.kernel_h + i) * w.kernel_w + j]);
                s += t;
                m += std::abs(t);
              }
          const std::size_t k = ((n * O + o) * OH + oy) * OW + ox;
          exact[k] = s;
          magnitude[k] = m;
        }
}

template <class T>
void check_conv_against_reference() {
  const double u = std::numeric_limits<T>::epsilon() / 2;
  const double u_ref = std::numeric_limits<long double>::epsilon() / 2;
  std::uint64_t seed = 1000;
  std::size_t checked = 0;
  for (const ConvCase& c : conv_grid()) {
    Rng rng(++seed);
    Conv2D<T> conv(c.in, c.out, c.kh, c.kw, c.options, rng);
    if (conv.has_bias())
      for (T& b : conv.bias().span()) b = static_cast<T>(rng.uniform(-1, 1));
    const auto x = random_tensor_t<T>(Shape{c.batch, c.in, c.height, c.width}, seed * 7);
    Tensor<T> y(conv.output_shape(x.shape()));
    conv.forward(x, y);
    std::vector<long double> exact, mag;
    reference_conv(conv, x, exact, mag);
    REQUIRE(exact.size() == y.size());
    // Each output is a sum of at most K + 1 terms (K = in/groups * kh * kw, the bias), each a
    // product of two T values. Whatever the order and FMA use, the computed sum stays within
    // gamma_{K+1} * sum |terms| of the exact one (Higham, eq. 3.5), where a product's rounding is
    // one of the K + 1 factors (1 + delta); the long double reference's own error is
    // gamma_{2(K+1)} in its unit roundoff times the same magnitude.
    const double k = static_cast<double>(c.in / c.options.groups * c.kh * c.kw + 1);
    const double gamma = k * u / (1 - k * u), gamma_ref = 2 * k * u_ref / (1 - 2 * k * u_ref);
    std::size_t bad = 0;
    for (std::size_t i = 0; i < y.size(); ++i) {
      const long double err = std::abs(static_cast<long double>(y[i]) - exact[i]);
      if (err > (gamma + gamma_ref) * mag[i]) {
        if (bad++ == 0) {
          INFO(conv_case_str(c) << " " << conv.describe() << " i=" << i << " got " << double(y[i]) << " want "
                                << double(exact[i]) << " bound " << double((gamma + gamma_ref) * mag[i]));
          CHECK(false);
        }
      }
    }
    INFO(conv_case_str(c));
    CHECK(bad == 0);
    ++checked;
  }
  CHECK(checked == conv_grid().size());
}

}  // namespace

TEST_CASE("Conv2D equals a plain reference convolution within the dot-product error bound", "[nn][conv]") {
  SECTION("float") { check_conv_against_reference<float>(); }
  SECTION("double") { check_conv_against_reference<double>(); }
}

TEST_CASE("Conv2D: shapes, FLOPs, parameters, same padding and its spec", "[nn][conv]") {
  Conv2DOptions o;
  o.stride_h = 2;
  o.padding = {1, 0, 2, 1};
  o.dilation_w = 2;
  o.groups = 2;
  Conv2D<float> conv(4, 6, 3, 2, o);
  // OH = (10 + 1 + 2 - 3) / 2 + 1 = 6; OW = (7 + 0 + 1 - 3) / 1 + 1 = 6
  CHECK(conv.output_shape(Shape{3, 4, 10, 7}) == Shape{3, 6, 6, 6});
  CHECK(conv.weight().shape() == Shape{6, 2, 3, 2});
  CHECK(conv.parameter_count() == 6u * 2u * 3u * 2u + 6u);
  CHECK(conv.flops(Shape{3, 4, 10, 7}) == 3u * 6u * 6u * 6u * (2u * 12u + 1u));
  CHECK(conv.describe() == "Conv2D(4 -> 6, 3x2, stride 2x1, pad 1,0,2,1, dilation 1x2, groups 2)");

  // "same" at stride 1: H x W kept, the odd zero at the bottom / right, dilation included
  CHECK(same_padding(3, 3) == Padding2D{1, 1, 1, 1});
  CHECK(same_padding(4, 2) == Padding2D{1, 0, 2, 1});
  CHECK(same_padding(4, 3, 2, 3) == Padding2D{3, 3, 3, 3});
  for (auto [kh, kw, dh, dw] : {std::array<std::size_t, 4>{3, 3, 1, 1}, {4, 2, 1, 1}, {4, 5, 2, 3}, {1, 2, 1, 4}}) {
    Conv2DOptions s;
    s.padding = same_padding(kh, kw, dh, dw);
    s.dilation_h = dh;
    s.dilation_w = dw;
    Conv2D<float> same(2, 2, kh, kw, s);
    CHECK(same.output_shape(Shape{1, 2, 9, 8}) == Shape{1, 2, 9, 8});
  }

  // spec -> make_layer -> the same layer; the factory's storage count is the parameter count
  Conv2DOptions nb;
  nb.groups = 3;
  nb.bias = false;
  nb.padding = {0, 1, 2, 3};
  nb.dilation_h = 2;
  nb.stride_w = 2;
  for (const Conv2D<double>& layer : {Conv2D<double>(4, 6, 3, 2, o), Conv2D<double>(3, 6, 2, 3, nb)}) {
    const auto rebuilt = make_layer<double>(layer.spec());
    CHECK(rebuilt->spec() == layer.spec());
    CHECK(rebuilt->describe() == layer.describe());
    CHECK(layer_storage(layer.spec()) == layer.parameter_count());
    CHECK(rebuilt->parameter_count() == layer.parameter_count());
  }
  Conv2D<double> no_bias(3, 6, 2, 3, nb);
  const auto params = no_bias.parameters();
  REQUIRE(params.size() == 1);
  CHECK(params[0].name == "weight");
  CHECK(no_bias.describe() == "Conv2D(3 -> 6, 2x3, stride 1x2, pad 0,1,2,3, dilation 2x1, groups 3, no bias)");
  LayerSpec broken = no_bias.spec();
  broken.integers["groups"] = 4;
  expect_errc(errc::invalid_argument, [&] { (void)make_layer<float>(broken); });
  broken = no_bias.spec();
  broken.integers["bias"] = 2;
  expect_errc(errc::invalid_argument, [&] { (void)make_layer<float>(broken); });
  broken = no_bias.spec();
  broken.integers.erase("pt");
  expect_errc(errc::invalid_argument, [&] { (void)make_layer<float>(broken); });
  broken = no_bias.spec();
  broken.integers["kh"] = 0;
  expect_errc(errc::invalid_argument, [&] { (void)layer_storage(broken); });
}

namespace {

/// Central-difference check of every gradient of a Conv2D<double> (see test_train.cpp's checker
/// for the choice of step and tolerance): the loss sum(out * R) is bilinear in input and weights,
/// so the differences are exact but for rounding, near 1e-10 relative.
void check_conv_gradients(Conv2D<double>& conv, const Shape& in_shape, std::uint64_t seed) {
  constexpr double h = 1e-5, tolerance = 1e-6;
  auto x = random_tensor_t<double>(in_shape, seed, -2, 2);
  Rng rng(seed + 3);
  for (double& b : conv.bias().span()) b = rng.uniform(-1, 1);  // none without a bias
  const Shape os = conv.output_shape(in_shape);
  const auto r = random_tensor_t<double>(os, seed + 1);
  Tensor<double> out(os), grad_in(in_shape);
  auto loss = [&] {
    conv.forward(x.cview(), out.view());
    double s = 0;
    for (std::size_t i = 0; i < out.size(); ++i) s += out[i] * r[i];
    return s;
  };
  auto compare = [&](const std::string& what, TensorView<double> v, const std::vector<double>& analytic) {
    double diff = 0, na = 0, nn = 0;
    for (std::size_t i = 0; i < v.size(); ++i) {
      const double keep = v[i];
      v[i] = keep + h;
      const double up = loss();
      v[i] = keep - h;
      const double down = loss();
      v[i] = keep;
      const double numeric = (up - down) / (2 * h);
      diff += (numeric - analytic[i]) * (numeric - analytic[i]);
      na += analytic[i] * analytic[i];
      nn += numeric * numeric;
    }
    const double scale = std::max(std::sqrt(na), std::sqrt(nn));
    const double err = scale == 0 ? 0 : std::sqrt(diff) / scale;
    INFO(conv.describe() << " on " << in_shape.str() << ": " << what << " relative error " << err);
    CHECK(scale > 0);
    CHECK(err < tolerance);
  };
  conv.zero_grad();
  conv.forward(x.cview(), out.view());
  conv.backward(x.cview(), out.cview(), r.cview(), grad_in.view());
  auto params = conv.parameters();
  REQUIRE(params.size() == (conv.has_bias() ? 2u : 1u));
  std::vector<std::vector<double>> analytic;
  for (const auto& p : params) analytic.emplace_back(p.grad.data(), p.grad.data() + p.grad.size());
  const std::vector<double> analytic_x(grad_in.data(), grad_in.data() + grad_in.size());
  for (std::size_t k = 0; k < params.size(); ++k) compare(params[k].name, params[k].value, analytic[k]);
  compare("input", x.view(), analytic_x);

  // Gradients accumulate across backward calls until zeroed; an empty grad_in is allowed.
  conv.backward(x.cview(), out.cview(), r.cview(), TensorView<double>{});
  for (std::size_t k = 0; k < params.size(); ++k)
    for (std::size_t i = 0; i < params[k].grad.size(); ++i)
      CHECK(params[k].grad[i] == Approx(2 * analytic[k][i]).margin(1e-12));
}

}  // namespace

TEST_CASE("Conv2D: input, weight and bias gradients match central differences", "[nn][conv]") {
  Rng rng(77);
  Conv2DOptions a;  // strided, asymmetric padding, bias
  a.stride_h = 2;
  a.stride_w = 2;
  a.padding = {0, 1, 2, 1};
  Conv2D<double> strided(3, 4, 3, 3, a, rng);
  check_conv_gradients(strided, Shape{2, 3, 7, 6}, 1);

  Conv2DOptions b;  // dilated, grouped, no bias
  b.padding = {1, 1, 1, 1};
  b.dilation_h = 2;
  b.dilation_w = 2;
  b.groups = 2;
  b.bias = false;
  Conv2D<double> grouped(4, 6, 2, 3, b, rng);
  check_conv_gradients(grouped, Shape{2, 4, 6, 7}, 2);

  Conv2DOptions c;  // depthwise with a channel multiplier, "same" padding
  c.padding = same_padding(3, 3);
  c.groups = 3;
  Conv2D<double> depthwise(3, 6, 3, 3, c, rng);
  check_conv_gradients(depthwise, Shape{3, 3, 5, 5}, 3);

  Conv2D<double> pointwise(4, 5, 1, 1, Conv2DOptions{}, rng);  // the direct (no im2col) path
  check_conv_gradients(pointwise, Shape{2, 4, 3, 4}, 4);
}

TEST_CASE("Conv2D: bad configurations and input shapes give typed errors", "[nn][conv]") {
  auto bad = [](std::size_t in, std::size_t out, std::size_t kh, std::size_t kw, Conv2DOptions o) {
    expect_errc(errc::invalid_argument, [&] { Conv2D<float>(in, out, kh, kw, o); });
  };
  bad(0, 4, 3, 3, {});
  bad(4, 0, 3, 3, {});
  bad(4, 4, 0, 3, {});
  bad(4, 4, 3, 0, {});
  Conv2DOptions o;
  o.stride_h = 0;
  bad(4, 4, 3, 3, o);
  o = {};
  o.stride_w = 0;
  bad(4, 4, 3, 3, o);
  o = {};
  o.dilation_h = 0;
  bad(4, 4, 3, 3, o);
  o = {};
  o.dilation_w = 0;
  bad(4, 4, 3, 3, o);
  o = {};
  o.groups = 0;
  bad(4, 4, 3, 3, o);
  o.groups = 3;  // divides neither
  bad(4, 6, 3, 3, o);
  o.groups = 2;  // divides in, not out
  bad(4, 5, 3, 3, o);
  o.groups = 2;  // divides out, not in
  bad(3, 4, 3, 3, o);
  o = {};
  o.padding.right = Window2D::max_extent + 1;
  bad(4, 4, 3, 3, o);
  bad(4, 4, Window2D::max_extent + 1, 1, {});
  expect_errc(errc::invalid_argument, [] { (void)same_padding(0, 3); });

  Conv2DOptions p;
  p.padding = {1, 0, 0, 0};
  p.dilation_w = 3;
  Conv2D<float> conv(5, 2, 3, 3, p);  // needs H >= 2 and W >= 7
  CHECK(conv.output_shape(Shape{1, 5, 2, 7}) == Shape{1, 2, 1, 1});
  const auto message = [&](const Shape& s) {
    try {
      (void)conv.output_shape(s);
    } catch (const error& e) {
      CHECK(e.code() == errc::shape_mismatch);
      return std::string(e.what());
    }
    FAIL("no error for " << s.str());
    return std::string();
  };
  for (const Shape& s : {Shape{2, 4, 8, 8}, Shape{2, 5, 8}, Shape{2, 5, 8, 8, 1}, Shape{2, 5 * 64}, Shape{2, 5, 1, 7},
                         Shape{2, 5, 2, 6}, Shape{2, 5, 0, 7}}) {
    const std::string m = message(s);
    INFO(m);
    CHECK(m.find("Conv2D(5 -> 2, 3x3") != std::string::npos);  // names the layer
    CHECK(m.find(s.str()) != std::string::npos);                 // and the shape it got
  }
  expect_errc(errc::invalid_argument, [&] { (void)conv.output_shape(Shape{0, 5, 8, 8}); });
  Tensor<float> x(Shape{2, 5, 4, 9}), wrong_out(Shape{2, 2, 3, 4}), wrong_in(Shape{2, 4, 4, 9});
  expect_errc(errc::shape_mismatch, [&] { conv.forward(x, wrong_out); });
  Tensor<float> y(conv.output_shape(x.shape()));
  CHECK(y.shape() == Shape{2, 2, 3, 3});
  expect_errc(errc::shape_mismatch, [&] { conv.forward(wrong_in, y); });
  Tensor<float> gx(Shape{2, 5, 4, 8});
  expect_errc(errc::shape_mismatch, [&] { conv.backward(x, y, y, gx); });
}

TEST_CASE("Conv2D: steady-state forward and training step allocate nothing", "[nn][conv][alloc]") {
  if (edgesplit_test::allocations() < 0) {
    WARN("allocation counting is unavailable in this build (sanitizer allocator)");
    return;
  }
  Rng rng(5);
  Sequential<float> model;
  Conv2DOptions s2;
  s2.stride_h = 2;
  s2.stride_w = 2;
  s2.padding = same_padding(3, 3);
  model.add<Conv2D<float>>(3, 16, 3, 3, s2, rng);
  model.add<ReLU<float>>();
  Conv2DOptions dw;
  dw.padding = same_padding(3, 3);
  dw.groups = 16;
  model.add<Conv2D<float>>(16, 16, 3, 3, dw, rng);  // depthwise
  model.add<ReLU<float>>();
  model.add<Conv2D<float>>(16, 8, 1, 1, Conv2DOptions{}, rng);  // pointwise: the direct path
  model.add<Dense<float>>(8 * 16 * 16, 10, rng);  // Dense flattens C x H x W
  for (std::size_t batch : {4, 1, 8}) {
    const auto x = random_tensor(Shape{batch, 3, 32, 32}, batch);
    Tensor<float> out(model.output_shape(x.shape()));
    REQUIRE(out.shape() == Shape{batch, 10});
    model.forward(x, out);  // warm-up: workspaces grow to this batch
    long long before = edgesplit_test::allocations();
    for (int i = 0; i < 3; ++i) model.forward(x, out);
    (void)model.forward(x.batch(0, batch / 2 + 1));  // a smaller batch reuses the workspaces
    long long made = edgesplit_test::allocations() - before;
    INFO("forward, batch " << batch);
    CHECK(made == 0);

    const Tensor<float> g(out.shape(), 0.01f);
    model.zero_grad();
    (void)model.forward(x.cview());
    model.backward(x.cview(), g.cview());  // warm-up of the gradient buffers
    before = edgesplit_test::allocations();
    for (int i = 0; i < 2; ++i) {
      (void)model.forward(x.cview());
      model.backward(x.cview(), g.cview());
    }
    made = edgesplit_test::allocations() - before;
    INFO("training step, batch " << batch);
    CHECK(made == 0);
  }
}

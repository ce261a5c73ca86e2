// Tests for nn/: Dense and activations against double-precision references, Sequential, split,
// shape errors, and the no-allocation promise of steady-state inference.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <memory>
#include <numbers>
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

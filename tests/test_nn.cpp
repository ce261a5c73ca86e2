// Tests for nn/: Dense, Conv2D and activations against double-precision references, Sequential,
// split, shape errors, Conv2D's gradients, and the no-allocation promise of steady-state inference.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <numbers>
#include <string>
#include <vector>

#include "alloc_counter.hpp"
#include "edgesplit/edgesplit.hpp"
#include "edgesplit/nn/testing.hpp"
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
  check_activation(Erf<float>{}, [](double x) { return std::erf(x); }, 8, 8);
  // ReLU6 and Clip (bounds that are floats) only select: exact. HardSigmoid rounds its slope to
  // float and rounds a product and a sum: alpha <= 1/5 keeps the first two within one ulp of x,
  // the sum is one ulp of the result. HardSwish rounds x + 3, a product and a quotient: three
  // ulp of the result. SiLU is Sigmoid's exp and two more roundings.
  check_activation(ReLU6<float>{}, [](double x) { return std::min(std::max(x, 0.0), 6.0); }, 0, 0);
  check_activation(Clip<float>(-1.5, 2.25), [](double x) { return std::min(std::max(x, -1.5), 2.25); }, 0, 0);
  check_activation(HardSigmoid<float>{}, [](double x) { return std::min(std::max(0.2 * x + 0.5, 0.0), 1.0); }, 1, 1);
  check_activation(HardSigmoid<float>(1.0 / 6, 0.5), [](double x) { return std::min(std::max(x / 6 + 0.5, 0.0), 1.0); },
                   1, 1);
  check_activation(HardSwish<float>{}, [](double x) { return x * std::min(std::max(x + 3, 0.0), 6.0) / 6; }, 3, 0);
  check_activation(SiLU<float>{}, [](double x) { return x / (1 + std::exp(-x)); }, 8, 0);
  expect_errc(errc::invalid_argument, [] { LeakyReLU<float>(1.5); });
  expect_errc(errc::invalid_argument, [] { LeakyReLU<float>(-0.1); });
  expect_errc(errc::invalid_argument, [] { Clip<float>(2, 1); });
  expect_errc(errc::invalid_argument, [] { Clip<float>(std::numeric_limits<double>::quiet_NaN(), 1); });
  expect_errc(errc::invalid_argument, [] { Clip<float>(-std::numeric_limits<double>::infinity(), 0); });
  expect_errc(errc::invalid_argument, [] { HardSigmoid<float>(std::numeric_limits<double>::infinity(), 0.5); });
  expect_errc(errc::invalid_argument, [] { HardSigmoid<float>(0.2, std::numeric_limits<double>::quiet_NaN()); });
  CHECK(Clip<float>(1, 1).describe() == "Clip(1.000000, 1.000000)");  // min == max is a constant, allowed
}

namespace {

/// dL/dx of `layer` for dL/dy = 2 at each of `xs`, each input repeated so that both the SIMD
/// body and the scalar tail of the kernel see it.
template <class L>
std::vector<float> gradients_at(L& layer, const std::vector<float>& xs) {
  constexpr std::size_t copies = 7;
  const std::size_t n = xs.size() * copies;
  Tensor<float> x(Shape{1, n}), y(Shape{1, n}), g(Shape{1, n}, 2.0f), dx(Shape{1, n});
  for (std::size_t i = 0; i < n; ++i) x[i] = xs[i % xs.size()];
  layer.forward(x, y);
  layer.backward(x, y, g, dx);
  std::vector<float> first(dx.data(), dx.data() + xs.size());
  for (std::size_t i = 0; i < n; ++i) {
    INFO(layer.describe() << " x=" << x[i]);
    CHECK(dx[i] == first[i % xs.size()]);  // every copy, SIMD lane or tail, agrees
  }
  return first;
}

}  // namespace

TEST_CASE("Activation gradients at the kinks follow PyTorch's conventions", "[nn][activations]") {
  using V = std::vector<float>;
  ReLU<float> relu;  // threshold_backward: none at 0
  CHECK(gradients_at(relu, {0, -1, 1}) == V{0, 0, 2});
  ReLU6<float> relu6;  // hardtanh_backward(0, 6): none at either bound
  CHECK(gradients_at(relu6, {0, 6, -1, 3, 7}) == V{0, 0, 0, 2, 0});
  Clip<float> clip(-1, 2);  // clamp_backward: passes at both bounds
  CHECK(gradients_at(clip, {-1, 2, -2, 0, 3}) == V{2, 2, 0, 2, 0});
  HardSigmoid<float> torch_hs(1.0 / 6, 0.5);  // hardsigmoid_backward: (-3, 3) open
  CHECK(gradients_at(torch_hs, {-3, 3, -4, 4}) == V{0, 0, 0, 0});
  CHECK(gradients_at(torch_hs, {0})[0] == Approx(2.0 / 6).epsilon(1e-6));
  HardSigmoid<float> onnx_hs;  // the same rule at ONNX's kinks, -2.5 and 2.5
  CHECK(gradients_at(onnx_hs, {-2.5f, 2.5f, -3, 3}) == V{0, 0, 0, 0});
  HardSwish<float> hswish;  // hardswish_backward: x / 3 + 1/2 on the closed [-3, 3]
  CHECK(gradients_at(hswish, {-3, 3, -4, 4, 0, 1.5f}) == V{-1, 3, 0, 2, 1, 2});
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

TEST_CASE("Dense: weights packed on first batched inference give the same bits and follow every write",
          "[nn][dense]") {
  // 784 inputs span two of the kernel's depth blocks; batch 1000 spans several column blocks.
  const auto model = mlp({784, 512, 256, 10}, 21);
  auto dense = [](Sequential<float>& m, std::size_t i) -> Dense<float>& { return static_cast<Dense<float>&>(m[i]); };
  Sequential<float> packed = model;  // automatic, the default
  Sequential<float> plain = model;
  plain.set_weight_packing(WeightPacking::off);
  for (std::size_t i : {0, 2, 4}) CHECK(dense(packed, i).weight_packing() == WeightPacking::automatic);
  (void)packed.predict(random_tensor(Shape{1, 784}, 1).cview());
  CHECK_FALSE(dense(packed, 0).weights_packed());  // batch 1 is a matrix-vector product: no pack
  for (std::size_t batch : {1, 2, 3, 7, 45, 64, 1000}) {
    const auto x = random_tensor(Shape{batch, 784}, 100 + batch);
    const Tensor<float> want = plain.predict(x.cview());
    const Tensor<float> got = packed.predict(x.cview());
    std::size_t differ = 0;
    for (std::size_t j = 0; j < want.size(); ++j) differ += want[j] != got[j];
    INFO("batch " << batch);
    CHECK(differ == 0);  // the same kernel on the same blocks in the same order
  }
  for (std::size_t i : {0, 2, 4}) {
    CHECK(dense(packed, i).weights_packed());
    CHECK_FALSE(dense(plain, i).weights_packed());
  }

  // Writes through views taken before the pack was made are seen: the checksum changes and the
  // layer packs again, in place (no allocation).
  auto params = packed.parameters();
  auto plain_params = plain.parameters();
  const auto x = random_tensor(Shape{16, 784}, 3);
  Tensor<float> got(Shape{16, 10}), want(Shape{16, 10});
  packed.forward(x.cview(), got.view());
  for (std::size_t k : {std::size_t{0}, std::size_t{5}, std::size_t{784 * 512 - 1}}) {
    params[0].value[k] += 0.25f;  // "0.weight": first, one inside, last element
    plain_params[0].value[k] += 0.25f;
    params[3].value[255] -= 0.5f;  // "2.bias" is not packed; "2.weight" below is
    plain_params[3].value[255] -= 0.5f;
    params[2].value[k % (256 * 512)] = -params[2].value[k % (256 * 512)];
    plain_params[2].value[k % (256 * 512)] = -plain_params[2].value[k % (256 * 512)];
    const long long before = edgesplit_test::allocations();
    packed.forward(x.cview(), got.view());
    const long long made = edgesplit_test::allocations() - before;
    plain.forward(x.cview(), want.view());
    INFO("element " << k);
    CHECK(std::memcmp(got.data(), want.data(), got.bytes()) == 0);
    if (before >= 0) CHECK(made == 0);
  }
  // Two weights trading places (the same sum) are seen too.
  std::swap(params[0].value[3], params[0].value[3 + 16]);
  std::swap(plain_params[0].value[3], plain_params[0].value[3 + 16]);
  packed.forward(x.cview(), got.view());
  plain.forward(x.cview(), want.view());
  CHECK(std::memcmp(got.data(), want.data(), got.bytes()) == 0);

  // A training-mode pass after such a write does not use the pack either (training would change
  // the weights under it).
  CHECK(dense(packed, 0).weights_packed());
  params[0].value[7] += 1.0f;
  plain_params[0].value[7] += 1.0f;
  packed.set_training(true);
  plain.set_training(true);
  packed.forward(x.cview(), got.view());
  plain.forward(x.cview(), want.view());
  CHECK(std::memcmp(got.data(), want.data(), got.bytes()) == 0);

  // Training-mode passes do not pack: the weights change every step.
  Sequential<float> training = model;
  training.set_training(true);
  (void)training.forward(x.cview());
  CHECK_FALSE(dense(training, 0).weights_packed());

  // off frees the pack; copies start automatic and unpacked.
  dense(packed, 4).set_weight_packing(WeightPacking::off);
  CHECK_FALSE(dense(packed, 4).weights_packed());
  Sequential<float> copy = packed;
  CHECK_FALSE(dense(copy, 0).weights_packed());
  CHECK(dense(copy, 4).weight_packing() == WeightPacking::automatic);
}

TEST_CASE("Dense: pack_weights packs now, and handing the weights out for writing returns to automatic",
          "[nn][dense]") {
  const auto model = mlp({784, 512, 256, 10}, 21);
  auto dense = [](Sequential<float>& m, std::size_t i) -> Dense<float>& { return static_cast<Dense<float>&>(m[i]); };
  Sequential<float> packed = model;
  Sequential<float> plain = model;
  plain.set_weight_packing(WeightPacking::off);
  packed.pack_weights();
  for (std::size_t i : {0, 2, 4}) {
    CHECK(dense(packed, i).weights_packed());
    CHECK(dense(packed, i).weight_packing() == WeightPacking::fixed);
  }
  if (edgesplit_test::allocations() >= 0) {  // packed forward passes allocate nothing either
    const auto x = random_tensor(Shape{64, 784}, 7);
    (void)packed.forward(x.cview());
    const long long before = edgesplit_test::allocations();
    for (int i = 0; i < 3; ++i) (void)packed.forward(x.cview());
    CHECK(edgesplit_test::allocations() - before == 0);
  }
  // Copies start unpacked and automatic; assigning weights drops the pack of the layer assigned to.
  Sequential<float> copy = packed;
  CHECK_FALSE(dense(copy, 0).weights_packed());
  CHECK(dense(copy, 0).weight_packing() == WeightPacking::automatic);
  Dense<float> d0 = dense(packed, 0);
  d0.pack_weights();
  d0 = dense(plain, 0);
  CHECK_FALSE(d0.weights_packed());
  // Anything that hands out the weights for writing ends `fixed`, so the write is seen.
  auto params = packed.parameters();
  for (std::size_t i : {0, 2, 4}) {
    CHECK_FALSE(dense(packed, i).weights_packed());
    CHECK(dense(packed, i).weight_packing() == WeightPacking::automatic);
  }
  packed.pack_weights();
  params = packed.parameters();
  params[0].value[5] += 0.25f;  // "0.weight"
  auto plain_params = plain.parameters();
  plain_params[0].value[5] += 0.25f;
  const auto x = random_tensor(Shape{16, 784}, 3);
  const Tensor<float> want = plain.predict(x.cview());
  const Tensor<float> got = packed.predict(x.cview());
  CHECK(std::memcmp(got.data(), want.data(), got.bytes()) == 0);
  packed.pack_weights();
  dense(packed, 2).weight()[0] += 1.0f;
  CHECK_FALSE(dense(packed, 2).weights_packed());
  CHECK(dense(packed, 0).weights_packed());
  packed.zero_grad();
  packed.set_training(true);
  (void)packed.forward(x.cview());
  packed.backward(x.cview(), Tensor<float>(Shape{16, 10}, 1.0f).cview());
  CHECK_FALSE(dense(packed, 0).weights_packed());
  CHECK(dense(packed, 0).weight_packing() == WeightPacking::automatic);
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
int g_registry_kind_made = 0;  // how often the test kind's factory ran (the registry outlives the test)
}  // namespace

TEST_CASE("register_layer: a layer kind of one's own for the loaders, refused when it clashes", "[nn][factory]") {
  const LayerKind<double> kind{[](const LayerSpec& s) -> std::size_t {
                                 if (s.integers.count("huge")) fail(errc::too_large, "more than a file holds");
                                 return 7;
                               },
                               [](const LayerSpec&) -> std::unique_ptr<Layer<double>> {
                                 ++g_registry_kind_made;
                                 return std::make_unique<Identity<double>>();
                               }};
  const LayerSpec spec{"RegistryTestKind", {}, {}};
  expect_errc(errc::unsupported, [&] { (void)layer_storage(spec); });  // unknown until registered
  expect_errc(errc::unsupported, [&] { (void)make_layer<double>(spec); });
  register_layer<double>("RegistryTestKind", kind);
  CHECK(layer_storage(spec) == 7);
  CHECK(make_layer<double>(spec)->name() == "Identity");
  CHECK(g_registry_kind_made == 1);
  LayerSpec huge = spec;
  huge.integers["huge"] = 1;
  expect_errc(errc::too_large, [&] { (void)make_layer<double>(huge); });
  CHECK(g_registry_kind_made == 1);  // the storage check refused it before the factory ran
  expect_errc(errc::unsupported, [&] { (void)make_layer<float>(spec); });  // registered for double only
  expect_errc(errc::invalid_argument, [&] { register_layer<double>("RegistryTestKind", kind); });
  expect_errc(errc::invalid_argument, [&] { register_layer<double>("Dense", kind); });
  expect_errc(errc::invalid_argument, [&] { register_layer<double>("", kind); });
  expect_errc(errc::invalid_argument, [&] { register_layer<double>("NoFactory", LayerKind<double>{kind.storage, {}}); });
  // The built-in kinds are still there, each storage beside its factory.
  CHECK(layer_storage(Dense<float>(3, 2).spec()) == 8);
  CHECK(make_layer<float>(ReLU<float>().spec())->name() == "ReLU");
}

namespace {

/// Central-difference check of every gradient of a Conv2D<double> (edgesplit/nn/testing.hpp): the
/// loss sum(out * R) is bilinear in input and weights, so the differences are exact but for
/// rounding, near 1e-10 relative. Random biases, so that their gradients are checked on values
/// that are not all zero.
void check_conv_gradients(Conv2D<double>& conv, const Shape& in_shape, std::uint64_t seed) {
  Rng rng(seed + 3);
  for (double& b : conv.bias().span()) b = rng.uniform(-1, 1);  // none without a bias
  const testing::GradientReport report = testing::check_layer_gradients(conv, in_shape, seed);
  auto params = conv.parameters();  // after the check's zero_grad, which allocates the gradients
  REQUIRE(params.size() == (conv.has_bias() ? 2u : 1u));
  INFO(conv.describe() << " on " << in_shape.str() << ":\n" << report.str());
  REQUIRE(report.entries.size() == params.size() + 1);
  for (const auto& e : report.entries) CHECK(e.norm > 0);
  CHECK(report.ok());

  // The gradients check_layer_gradients left are those of one backward pass on its input x and
  // output weights R: a second pass (an empty grad_in is allowed) must add the same again.
  std::vector<std::vector<double>> analytic;
  for (const auto& p : params) analytic.emplace_back(p.grad.data(), p.grad.data() + p.grad.size());
  Rng rx(seed), rr(seed + 1);
  Tensor<double> x(in_shape);
  for (double& v : x.span()) v = rx.uniform(-2, 2);
  const Shape os = conv.output_shape(in_shape);
  Tensor<double> r(os), out(os);
  for (double& v : r.span()) v = rr.uniform(-1, 1);
  conv.forward(x.cview(), out.view());
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

namespace {

/// The former forward pass of Conv2D, kept as the baseline of the direct kernels: per group, the
/// bias, then W_g times the im2col matrix of the group's planes through a GemmWorkspace.
template <class T>
Tensor<T> generic_conv_forward(const Conv2D<T>& conv, const Tensor<T>& x) {
  const Window2D& w = conv.window();
  const std::size_t N = x.shape()[0], C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
  const std::size_t G = conv.groups(), Cg = C / G, Og = conv.out_channels() / G;
  const std::size_t P = w.out_h(H) * w.out_w(W), K = Cg * w.kernel_h * w.kernel_w;
  Tensor<T> y(conv.output_shape(x.shape())), cols(Shape{K, P});
  GemmWorkspace<T> gemm;
  for (std::size_t n = 0; n < N; ++n)
    for (std::size_t g = 0; g < G; ++g) {
      T* yg = y.data() + (n * conv.out_channels() + g * Og) * P;
      for (std::size_t o = 0; o < Og; ++o)
        std::fill_n(yg + o * P, P, conv.has_bias() ? conv.bias()[g * Og + o] : T(0));
      im2col(x.data() + (n * C + g * Cg) * H * W, Cg, H, W, w, cols.data());
      gemm.ab_accumulate(conv.weight().data() + g * Og * K, cols.data(), yg, static_cast<Eigen::Index>(Og),
                         static_cast<Eigen::Index>(P), static_cast<Eigen::Index>(K));
    }
  return y;
}

/// Checks the outputs of one configuration: the SIMD kernel's (`simd`, what Conv2D::forward gives
/// bit for bit when it runs that kernel), its scalar reference's and the im2col + GEMM path's, each against the long double
/// reference convolution within gamma_{K+1} * sum |terms| (as the Conv2D reference test derives
/// it), and the SIMD kernel against its scalar reference. Both add the bias and then the taps
/// with fused multiply-adds in the same order, so with a hardware FMA they agree bit for bit;
/// without one (xsimd then rounds the product and the sum apart) each is within the bound of the
/// exact value, so they are within twice the bound of each other.
template <class T>
void check_direct_kernel(const Conv2D<T>& conv, const Tensor<T>& x, const Tensor<T>& simd, const Tensor<T>& scalar,
                         const std::string& what) {
  const Tensor<T> generic = generic_conv_forward(conv, x);
  // Conv2D::forward runs the depthwise kernel on every depthwise layer, and conv2d_direct where
  // it suits the layer and the plane, but not on a plain 1x1 (stride 1, no padding): one GEMM on
  // the planes.
  const Window2D& w = conv.window();
  const bool depthwise = conv.in_channels() == conv.groups();
  const bool plain_1x1 = w.kernel_h == 1 && w.kernel_w == 1 && w.padding == Padding2D{} && w.stride_h == 1 &&
                         w.stride_w == 1;
  const bool layer_runs_kernel =
      depthwise ||
      (!plain_1x1 && kernels::conv2d_direct_suits(conv.in_channels() / conv.groups(), x.shape()[3], w));
  Tensor<T> via_layer(conv.output_shape(x.shape()));
  Conv2D<T> layer = conv;
  layer.forward(x, via_layer);
  std::vector<long double> exact, mag;
  reference_conv(conv, x, exact, mag);
  REQUIRE(exact.size() == simd.size());
  REQUIRE(scalar.size() == simd.size());
  const double u = std::numeric_limits<T>::epsilon() / 2, u_ref = std::numeric_limits<long double>::epsilon() / 2;
  const double k = static_cast<double>(conv.in_channels() / conv.groups() * w.kernel_h * w.kernel_w + 1);
  const double gamma = k * u / (1 - k * u), gamma_ref = 2 * k * u_ref / (1 - 2 * k * u_ref);
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
  constexpr bool exact_fma = kernels::has_simd<T>;
#else
  constexpr bool exact_fma = !kernels::has_simd<T>;  // no SIMD: the driver runs the reference
#endif
  std::size_t bad = 0;
  for (std::size_t i = 0; i < simd.size(); ++i) {
    const long double bound = (gamma + gamma_ref) * mag[i];
    auto off = [&](T v) { return std::abs(static_cast<long double>(v) - exact[i]) > bound; };
    const bool pair_ok = exact_fma ? simd[i] == scalar[i]
                                   : std::abs(static_cast<long double>(simd[i]) - scalar[i]) <= 2 * bound;
    const bool layer_ok = layer_runs_kernel ? via_layer[i] == simd[i] : !off(via_layer[i]);
    if (off(simd[i]) || off(scalar[i]) || off(generic[i]) || !pair_ok || !layer_ok) {
      if (bad++ == 0) {
        INFO(what << " " << conv.describe() << " on " << x.shape().str() << " i=" << i << ": simd " << double(simd[i])
                  << " scalar " << double(scalar[i]) << " generic " << double(generic[i]) << " layer "
                  << double(via_layer[i]) << " exact " << double(exact[i]) << " bound " << double(bound));
        CHECK(false);
      }
    }
  }
  CHECK(bad == 0);
}

// Runs `kernel` and its scalar reference `reference` (each called as (input, channels, height,
// width, window, weights, out_channels, bias, output)) on every sample and group of `conv`'s
// input `x`, and compares the two outputs with check_direct_kernel.
template <class T, class Kernel, class Reference>
void run_per_group(const Conv2D<T>& conv, const Tensor<T>& x, Kernel kernel, Reference reference, const char* what) {
  const Window2D& w = conv.window();
  const std::size_t batch = x.shape()[0], in = x.shape()[1], h = x.shape()[2], wd = x.shape()[3];
  const std::size_t groups = conv.options().groups, out = conv.out_channels();
  const std::size_t ig = in / groups, og = out / groups, plane = h * wd;
  const std::size_t positions = w.out_h(h) * w.out_w(wd), depth = ig * w.kernel_h * w.kernel_w;
  Tensor<T> simd(conv.output_shape(x.shape())), scalar(simd.shape());
  for (std::size_t n = 0; n < batch; ++n)
    for (std::size_t g = 0; g < groups; ++g) {
      const T* xg = x.data() + (n * in + g * ig) * plane;
      const T* wg = conv.weight().data() + g * og * depth;
      const T* bg = conv.has_bias() ? conv.bias().data() + g * og : nullptr;
      const std::size_t yo = (n * out + g * og) * positions;
      kernel(xg, ig, h, wd, w, wg, og, bg, simd.data() + yo);
      reference(xg, ig, h, wd, w, wg, og, bg, scalar.data() + yo);
    }
  check_direct_kernel(conv, x, simd, scalar, what);
}

template <class T>
void check_depthwise_kernel() {
  std::uint64_t seed = 5000;
  std::size_t checked = 0;
  const std::array<std::size_t, 4> kernel_sizes[] = {{3, 3, 1, 1}, {1, 1, 1, 1}, {5, 3, 1, 2}, {2, 4, 2, 1}};
  const std::array<std::size_t, 2> strides[] = {{1, 1}, {2, 2}, {1, 2}, {3, 2}};
  const Padding2D pads[] = {{0, 0, 0, 0}, {1, 1, 1, 1}, {0, 2, 1, 1}, {3, 3, 3, 3}};
  const std::array<std::size_t, 2> planes[] = {{7, 9}, {13, 37}, {4, 3}};
  for (const auto& kd : kernel_sizes)
    for (const auto& st : strides)
      for (const Padding2D& pad : pads)
        for (const auto& hw : planes)
          for (std::size_t multiplier : {1, 2}) {
            const std::size_t channels = multiplier == 1 ? 5 : 3;
            Conv2DOptions o;
            o.stride_h = st[0];
            o.stride_w = st[1];
            o.padding = pad;
            o.dilation_h = kd[2];
            o.dilation_w = kd[3];
            o.groups = channels;
            o.bias = (seed % 3) != 0;
            Rng rng(++seed);
            Conv2D<T> conv(channels, channels * multiplier, kd[0], kd[1], o, rng);
            for (T& b : conv.bias().span()) b = static_cast<T>(rng.uniform(-1, 1));
            const Window2D& w = conv.window();
            if (w.out_h(hw[0]) == 0 || w.out_w(hw[1]) == 0) continue;
            const auto x = random_tensor_t<T>(Shape{2, channels, hw[0], hw[1]}, seed * 11);
            Tensor<T> simd(conv.output_shape(x.shape())), scalar(simd.shape());
            std::vector<T> scratch(kernels::depthwise_conv2d_scratch<T>(hw[0], hw[1], w));
            const std::size_t in_n = channels * hw[0] * hw[1], out_n = simd.size() / 2;
            const T* bias = conv.has_bias() ? conv.bias().data() : nullptr;
            for (std::size_t n = 0; n < 2; ++n) {
              kernels::depthwise_conv2d(x.data() + n * in_n, channels, hw[0], hw[1], w, multiplier,
                                        conv.weight().data(), bias, simd.data() + n * out_n, scratch.data());
              kernels::depthwise_conv2d_scalar(x.data() + n * in_n, channels, hw[0], hw[1], w, multiplier,
                                               conv.weight().data(), bias, scalar.data() + n * out_n);
            }
            check_direct_kernel(conv, x, simd, scalar, "depthwise");
            ++checked;
          }
  CHECK(checked > 300);
}

template <class T>
void check_stride1_kernel() {
  std::uint64_t seed = 7000;
  std::size_t checked = 0;
  const std::array<std::size_t, 4> kernel_sizes[] = {{3, 3, 1, 1}, {1, 1, 1, 1}, {2, 5, 1, 1}, {3, 3, 2, 3}};
  const Padding2D pads[] = {{0, 0, 0, 0}, {1, 1, 1, 1}, {2, 0, 1, 3}};
  const std::array<std::size_t, 2> planes[] = {{7, 9}, {11, 29}, {3, 4}, {5, 61}};  // 61: wide enough for Conv2D
  for (const auto& kd : kernel_sizes)
    for (const Padding2D& pad : pads)
      for (const auto& hw : planes)
        for (auto [in, out, groups] : {std::array<std::size_t, 3>{3, 5, 1}, {6, 9, 1}, {4, 8, 2}, {1, 4, 1}}) {
          Conv2DOptions o;
          o.padding = pad;
          o.dilation_h = kd[2];
          o.dilation_w = kd[3];
          o.groups = groups;
          o.bias = (seed % 3) != 0;
          Rng rng(++seed);
          Conv2D<T> conv(in, out, kd[0], kd[1], o, rng);
          for (T& b : conv.bias().span()) b = static_cast<T>(rng.uniform(-1, 1));
          const Window2D& w = conv.window();
          if (w.out_h(hw[0]) == 0 || w.out_w(hw[1]) == 0) continue;
          const auto x = random_tensor_t<T>(Shape{2, in, hw[0], hw[1]}, seed * 13);
          std::vector<T> scratch(kernels::conv2d_stride1_scratch<T>(in / groups, hw[0], hw[1], w, out / groups));
          run_per_group(conv, x, [&](auto... a) { kernels::conv2d_stride1(a..., scratch.data()); },
                        [](auto... a) { kernels::conv2d_stride1_scalar(a...); }, "stride1");
          ++checked;
        }
  CHECK(checked > 100);
}

// conv2d_direct at strides over 1 (at stride 1 it is conv2d_stride1, checked above), against its
// scalar reference and the im2col path; planes 61 and 127 wide are wide enough for Conv2D to run
// it (at most 32 input channels per group, a kernel larger than 1x1).
template <class T>
void check_strided_kernel() {
  std::uint64_t seed = 9000;
  std::size_t checked = 0, via_layer = 0;
  const std::array<std::size_t, 4> kernel_sizes[] = {{3, 3, 1, 1}, {1, 1, 1, 1}, {2, 5, 1, 1}, {3, 3, 2, 3}, {7, 7, 1, 1}};
  const std::array<std::size_t, 2> strides[] = {{2, 2}, {1, 2}, {2, 1}, {3, 2}};
  const Padding2D pads[] = {{0, 0, 0, 0}, {1, 1, 1, 1}, {2, 0, 1, 3}, {3, 3, 3, 3}};
  const std::array<std::size_t, 2> planes[] = {{7, 9}, {11, 29}, {3, 4}, {5, 61}, {9, 127}};
  for (const auto& kd : kernel_sizes)
    for (const auto& st : strides)
      for (const Padding2D& pad : pads)
        for (const auto& hw : planes)
          for (auto [in, out, groups] : {std::array<std::size_t, 3>{3, 5, 1}, {6, 9, 1}, {4, 8, 2}, {1, 4, 1}}) {
            if (kd[0] == 7 && groups != 1) continue;  // keeps the run short
            Conv2DOptions o;
            o.stride_h = st[0];
            o.stride_w = st[1];
            o.padding = pad;
            o.dilation_h = kd[2];
            o.dilation_w = kd[3];
            o.groups = groups;
            o.bias = (seed % 3) != 0;
            Rng rng(++seed);
            Conv2D<T> conv(in, out, kd[0], kd[1], o, rng);
            for (T& b : conv.bias().span()) b = static_cast<T>(rng.uniform(-1, 1));
            const Window2D& w = conv.window();
            if (w.out_h(hw[0]) == 0 || w.out_w(hw[1]) == 0) continue;
            const auto x = random_tensor_t<T>(Shape{2, in, hw[0], hw[1]}, seed * 17);
            const std::size_t ig = in / groups;
            std::vector<T> scratch(kernels::conv2d_direct_scratch<T>(ig, hw[0], hw[1], w, out / groups));
            run_per_group(conv, x, [&](auto... a) { kernels::conv2d_direct(a..., scratch.data()); },
                          [](auto... a) { kernels::conv2d_direct_scalar(a...); }, "strided");
            ++checked;
            via_layer += kernels::conv2d_direct_suits(ig, hw[1], w);
          }
  CHECK(checked > 300);
  CHECK(via_layer > 50);  // Conv2D::forward ran the kernel too, bit for bit (check_direct_kernel)
}

}  // namespace

TEST_CASE("Direct convolution kernels equal their scalar references and the im2col path", "[nn][conv]") {
  SECTION("depthwise, float") { check_depthwise_kernel<float>(); }
  SECTION("depthwise, double") { check_depthwise_kernel<double>(); }
  SECTION("stride 1, float") { check_stride1_kernel<float>(); }
  SECTION("stride 1, double") { check_stride1_kernel<double>(); }
  SECTION("strided, float") { check_strided_kernel<float>(); }
  SECTION("strided, double") { check_strided_kernel<double>(); }
  SECTION("at stride 1, conv2d_direct is conv2d_stride1") {
    Conv2DOptions o;
    o.padding = {1, 1, 1, 1};
    Rng rng(11);
    Conv2D<float> conv(3, 5, 3, 3, o, rng);
    const auto x = random_tensor(Shape{1, 3, 6, 23}, 12);
    Tensor<float> a(conv.output_shape(x.shape())), b(a.shape());
    std::vector<float> scratch(kernels::conv2d_direct_scratch<float>(3, 6, 23, conv.window(), 5));
    CHECK(scratch.size() == kernels::conv2d_stride1_scratch<float>(3, 6, 23, conv.window(), 5));
    CHECK(kernels::conv2d_direct_suits(3, 23, conv.window()) == kernels::conv2d_stride1_suits(23, conv.window()));
    kernels::conv2d_stride1(x.data(), 3, 6, 23, conv.window(), conv.weight().data(), 5, conv.bias().data(), a.data(),
                            scratch.data());
    kernels::conv2d_direct(x.data(), 3, 6, 23, conv.window(), conv.weight().data(), 5, conv.bias().data(), b.data(),
                           scratch.data());
    for (std::size_t i = 0; i < a.size(); ++i) REQUIRE(a[i] == b[i]);
  }
  SECTION("strided kernels past 16 taps run the reference") {
    Conv2DOptions o;
    o.stride_h = o.stride_w = 2;
    o.padding = {8, 1, 8, 1};
    Rng rng(13);
    Conv2D<float> conv(2, 3, 17, 3, o, rng);
    const auto x = random_tensor(Shape{1, 2, 5, 11}, 14);
    Tensor<float> simd(conv.output_shape(x.shape())), scalar(simd.shape());
    CHECK_FALSE(kernels::conv2d_direct_suits(2, 11, conv.window()));
    std::vector<float> scratch(kernels::conv2d_direct_scratch<float>(2, 5, 11, conv.window(), 3));
    kernels::conv2d_direct(x.data(), 2, 5, 11, conv.window(), conv.weight().data(), 3, conv.bias().data(),
                           simd.data(), scratch.data());
    kernels::conv2d_direct_scalar(x.data(), 2, 5, 11, conv.window(), conv.weight().data(), 3, conv.bias().data(),
                                  scalar.data());
    check_direct_kernel(conv, x, simd, scalar, "strided 17x3");
  }
  SECTION("a depthwise kernel taller than the vectorised limit runs the reference") {
    Conv2DOptions o;
    o.groups = 2;
    o.padding = {8, 1, 8, 1};
    Rng rng(9);
    Conv2D<float> conv(2, 2, 17, 3, o, rng);
    const auto x = random_tensor(Shape{1, 2, 5, 11}, 10);
    Tensor<float> simd(conv.output_shape(x.shape())), scalar(simd.shape());
    std::vector<float> scratch(kernels::depthwise_conv2d_scratch<float>(5, 11, conv.window()));
    kernels::depthwise_conv2d(x.data(), 2, 5, 11, conv.window(), 1, conv.weight().data(), conv.bias().data(),
                              simd.data(), scratch.data());
    kernels::depthwise_conv2d_scalar(x.data(), 2, 5, 11, conv.window(), 1, conv.weight().data(), conv.bias().data(),
                                     scalar.data());
    check_direct_kernel(conv, x, simd, scalar, "depthwise 17x3");
  }
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

// ---------------------------------------------------------------------------------------------
// Pooling (MaxPool2D, AvgPool2D, GlobalAvgPool, GlobalMaxPool) and Flatten

namespace {

/// One MaxPool2D / AvgPool2D configuration of the test grid, with the input it runs on.
struct PoolCase {
  std::size_t kh, kw;
  Pool2DOptions options;
  std::size_t batch, channels, height, width;
};

std::string pool_case_str(const PoolCase& c) {
  const Pool2DOptions& o = c.options;
  const Padding2D& p = o.padding;
  return "k " + std::to_string(c.kh) + "x" + std::to_string(c.kw) + " s " + std::to_string(o.stride_h) + "x" +
         std::to_string(o.stride_w) + " pad " + std::to_string(p.top) + "," + std::to_string(p.left) + "," +
         std::to_string(p.bottom) + "," + std::to_string(p.right) + " d " + std::to_string(o.dilation_h) + "x" +
         std::to_string(o.dilation_w) + " ceil " + std::to_string(o.ceil_mode) + " include_pad " +
         std::to_string(o.count_include_pad) + " input " + std::to_string(c.batch) + "x" + std::to_string(c.channels) +
         "x" + std::to_string(c.height) + "x" + std::to_string(c.width);
}

/// The grid: kernels square, oblong and 1-wide; strides = kernel (the default, 0), 1, and
/// differing per axis; no padding, symmetric, asymmetric both ways, and more than half the kernel
/// (which PyTorch refuses and ONNX allows: the layer must refuse the inputs where a window then
/// reads only padding); dilation 1 / 2 (max only); ceil_mode off / on; count_include_pad on / off
/// (average only); odd and even planes.
std::vector<PoolCase> pool_grid(bool is_max) {
  std::vector<PoolCase> cases;
  const std::array<std::size_t, 2> kernels[] = {{2, 2}, {3, 3}, {3, 2}, {1, 3}};
  const std::array<std::size_t, 2> strides[] = {{0, 0}, {1, 1}, {2, 1}, {3, 2}};
  const Padding2D pads[] = {{0, 0, 0, 0}, {1, 1, 1, 1}, {0, 1, 1, 0}, {1, 0, 0, 1}, {2, 1, 0, 2}};
  const std::array<std::size_t, 4> planes[] = {{2, 3, 7, 5}, {1, 2, 6, 9}, {3, 1, 5, 8}};
  std::size_t n = 0;
  for (const auto& k : kernels)
    for (const auto& s : strides)
      for (const Padding2D& pad : pads)
        for (std::size_t d : is_max ? std::vector<std::size_t>{1, 2} : std::vector<std::size_t>{1})
          for (bool ceil : {false, true})
            for (bool include : is_max ? std::vector<bool>{true} : std::vector<bool>{true, false}) {
              const auto& p = planes[n++ % 3];
              PoolCase c{k[0], k[1], {}, p[0], p[1], p[2], p[3]};
              c.options.stride_h = s[0];
              c.options.stride_w = s[1];
              c.options.padding = pad;
              c.options.dilation_h = d;
              c.options.dilation_w = d == 2 ? 3 : 1;  // dilations differ per axis too
              c.options.ceil_mode = ceil;
              c.options.count_include_pad = include;
              cases.push_back(c);
            }
  return cases;
}

/// PyTorch's output size, pooling_output_shape_pad_lr in aten/src/ATen/native/Pool.h, written out
/// again: floor division rounding toward minus infinity (div_rtn), and in ceil mode the last
/// window dropped when it would start in the bottom / right padding.
long long torch_pool_out(long long in, long long pad_l, long long pad_r, long long k, long long d, long long s,
                         bool ceil) {
  const long long num = in + pad_l + pad_r - d * (k - 1) - 1 + (ceil ? s - 1 : 0);
  long long out = (num >= 0 ? num / s : -((-num + s - 1) / s)) + 1;
  if (ceil && (out - 1) * s >= in + pad_l) --out;
  return out;
}

/// The plain pooling, by its definition, in long double: every tap of every window visited,
/// those outside the input skipped; the max is the first strict maximum, the average divides as
/// PyTorch's avg_pool2d does (count_include_pad: the window clipped to the end of the padding).
/// `mag` gets each output's magnitude: |max|, or an average's sum of |terms| over the divisor. False when the input has no output
/// or a window reads only padding: then the layer must refuse it.
template <class T>
bool reference_pool(bool is_max, const PoolCase& c, const Tensor<T>& x, std::vector<long double>& want,
                    std::vector<long double>& mag) {
  const Pool2DOptions& o = c.options;
  const long long kh = static_cast<long long>(c.kh), kw = static_cast<long long>(c.kw);
  const long long sh = o.stride_h ? static_cast<long long>(o.stride_h) : kh;
  const long long sw = o.stride_w ? static_cast<long long>(o.stride_w) : kw;
  const long long dh = static_cast<long long>(o.dilation_h), dw = static_cast<long long>(o.dilation_w);
  const long long pt = static_cast<long long>(o.padding.top), pl = static_cast<long long>(o.padding.left);
  const long long pb = static_cast<long long>(o.padding.bottom), pr = static_cast<long long>(o.padding.right);
  const long long H = static_cast<long long>(c.height), W = static_cast<long long>(c.width);
  const long long OH = torch_pool_out(H, pt, pb, kh, dh, sh, o.ceil_mode);
  const long long OW = torch_pool_out(W, pl, pr, kw, dw, sw, o.ceil_mode);
  if (OH <= 0 || OW <= 0) return false;
  want.clear();
  mag.clear();
  for (std::size_t plane = 0; plane < c.batch * c.channels; ++plane)
    for (long long oh = 0; oh < OH; ++oh)
      for (long long ow = 0; ow < OW; ++ow) {
        const long long h0 = oh * sh - pt, w0 = ow * sw - pl;
        long double best = -std::numeric_limits<long double>::infinity(), sum = 0, abs_sum = 0;
        long long count = 0;
        for (long long i = 0; i < kh; ++i)
          for (long long j = 0; j < kw; ++j) {
            const long long ih = h0 + i * dh, iw = w0 + j * dw;
            if (ih < 0 || iw < 0 || ih >= H || iw >= W) continue;
            const long double v = x[plane * c.height * c.width + static_cast<std::size_t>(ih * W + iw)];
            if (count++ == 0 || v > best) best = v;
            sum += v;
            abs_sum += std::abs(v);
          }
        if (count == 0) return false;
        const long long divisor =
            o.count_include_pad ? (std::min(h0 + kh, H + pb) - h0) * (std::min(w0 + kw, W + pr) - w0) : count;
        want.push_back(is_max ? best : sum / static_cast<long double>(divisor));
        mag.push_back(is_max ? std::abs(best) : abs_sum / static_cast<long double>(divisor));
      }
  return true;
}

template <Real T>
std::unique_ptr<Layer<T>> make_pool(bool is_max, const PoolCase& c) {
  if (is_max) return std::make_unique<MaxPool2D<T>>(c.kh, c.kw, c.options);
  return std::make_unique<AvgPool2D<T>>(c.kh, c.kw, c.options);
}

/// Runs the grid: max pooling must equal the reference exactly (it picks one of the inputs), an
/// average must be within 2 (taps + 2) units of T's roundoff of the mean's magnitude (a sum of
/// `taps` terms and a division; the other half covers the reference's own rounding where long
/// double is no wider than double). The backward pass is checked as the adjoint of the forward:
/// <forward(x), g> == <x, backward(g)> (for max: each g lands on the element its output took).
template <Real T>
void check_pool_against_reference(bool is_max) {
  const double u = std::numeric_limits<T>::epsilon() / 2;
  std::uint64_t seed = is_max ? 3000 : 4000;
  std::size_t checked = 0, refused = 0;
  for (const PoolCase& c : pool_grid(is_max)) {
    const auto x = random_tensor_t<T>(Shape{c.batch, c.channels, c.height, c.width}, ++seed);
    const auto layer = make_pool<T>(is_max, c);
    std::vector<long double> want, mag;
    INFO(pool_case_str(c) << " " << layer->describe());
    if (!reference_pool(is_max, c, x, want, mag)) {
      expect_errc(errc::shape_mismatch, [&] { (void)layer->output_shape(x.shape()); });
      ++refused;
      continue;
    }
    Tensor<T> y(layer->output_shape(x.shape()));
    REQUIRE(y.size() == want.size());
    layer->forward(x, y);
    const double taps = static_cast<double>(c.kh * c.kw);
    std::size_t bad = 0;
    for (std::size_t i = 0; i < y.size(); ++i) {
      const long double got = y[i];
      const bool ok = is_max ? got == want[i] : std::abs(got - want[i]) <= 2 * (taps + 2) * u * mag[i];
      if (!ok && bad++ == 0) {
        INFO("i=" << i << " got " << double(got) << " want " << double(want[i]));
        CHECK(false);
      }
    }
    CHECK(bad == 0);

    const auto g = random_tensor_t<T>(y.shape(), seed + 500);
    Tensor<T> gx(x.shape());
    layer->backward(x, y, g, gx);
    long double lhs = 0, rhs = 0, scale = 0;
    for (std::size_t i = 0; i < y.size(); ++i) {
      lhs += static_cast<long double>(y[i]) * g[i];
      scale += std::abs(static_cast<long double>(g[i])) * mag[i];
    }
    for (std::size_t i = 0; i < x.size(); ++i) rhs += static_cast<long double>(x[i]) * gx[i];
    // y carries the forward error above; each gx element sums at most `taps` gradients, each
    // divided once: in all, a few units of roundoff times sum |g_i| mag_i
    CHECK(std::abs(lhs - rhs) <= 4 * (taps + 2) * u * scale);
    ++checked;
  }
  // most configurations run; those whose windows fall in the padding only are refused
  const std::size_t cases = pool_grid(is_max).size();
  CHECK(checked + refused == cases);
  CHECK(checked > cases / 2);
  CHECK(refused > 10);
}

/// x[i] = i over the whole tensor: easy to check by hand.
Tensor<double> iota(const Shape& s, double scale = 1) {
  Tensor<double> t(s);
  for (std::size_t i = 0; i < t.size(); ++i) t[i] = scale * static_cast<double>(i);
  return t;
}

std::vector<double> forward_values(Layer<double>& layer, const Tensor<double>& x) {
  Tensor<double> y(layer.output_shape(x.shape()));
  layer.forward(x, y);
  return {y.data(), y.data() + y.size()};
}

}  // namespace

TEST_CASE("MaxPool2D equals a plain reference over a grid of configurations", "[nn][pool]") {
  SECTION("float") { check_pool_against_reference<float>(true); }
  SECTION("double") { check_pool_against_reference<double>(true); }
}

TEST_CASE("AvgPool2D equals a plain reference over a grid of configurations", "[nn][pool]") {
  SECTION("float") { check_pool_against_reference<float>(false); }
  SECTION("double") { check_pool_against_reference<double>(false); }
}

TEST_CASE("Pooling: hand-checked examples, ceil_mode by PyTorch's formula", "[nn][pool]") {
  // 4x4 plane 0..15, 2x2 windows at stride 2 (the default)
  MaxPool2D<double> max2(2, 2);
  CHECK(forward_values(max2, iota(Shape{1, 1, 4, 4})) == std::vector<double>{5, 7, 13, 15});
  AvgPool2D<double> avg2(2, 2);
  CHECK(forward_values(avg2, iota(Shape{1, 1, 4, 4})) == std::vector<double>{2.5, 4.5, 10.5, 12.5});

  // 5x5 plane x[h][w] = 5h + w, 2x2 at stride 2, ceil_mode: OH = floor((5 - 2 + 1) / 2) + 1 = 3
  // (floor mode: 2); the last windows hold one row / column. With no padding, count_include_pad
  // changes nothing: the positions ceil_mode adds past the plane are never counted.
  Pool2DOptions ceil;
  ceil.ceil_mode = true;
  MaxPool2D<double> max_ceil(2, 2, ceil);
  CHECK(max_ceil.output_shape(Shape{1, 1, 5, 5}) == Shape{1, 1, 3, 3});
  CHECK(forward_values(max_ceil, iota(Shape{1, 1, 5, 5})) == std::vector<double>{6, 8, 9, 16, 18, 19, 21, 23, 24});
  for (bool include : {true, false}) {
    ceil.count_include_pad = include;
    AvgPool2D<double> avg_ceil(2, 2, ceil);
    CHECK(forward_values(avg_ceil, iota(Shape{1, 1, 5, 5})) ==
          std::vector<double>{3, 5, 6.5, 13, 15, 16.5, 20.5, 22.5, 24});
  }

  // 4x4 plane 0..15, 3x3 at stride 2, padding 1, ceil_mode: OH = floor((4 + 2 - 3 + 1) / 2) + 1 =
  // 3 (floor mode: 2); the last window starts at row 3 < 4 + 1, so it stays. Its rows: input row 3
  // and padding row 4 (2 counted with count_include_pad, the third is past the padding).
  Pool2DOptions p1;
  p1.stride_h = p1.stride_w = 2;
  p1.padding = {1, 1, 1, 1};
  p1.ceil_mode = true;
  AvgPool2D<double> with_pad(3, 3, p1);
  CHECK(with_pad.output_shape(Shape{1, 1, 4, 4}) == Shape{1, 1, 3, 3});
  const std::vector<double> include_pad = forward_values(with_pad, iota(Shape{1, 1, 4, 4}));
  const double want_include[] = {10.0 / 9, 24.0 / 9, 10.0 / 6, 51.0 / 9, 10, 33.0 / 6, 25.0 / 6, 7, 15.0 / 4};
  for (std::size_t i = 0; i < 9; ++i) CHECK(include_pad[i] == Approx(want_include[i]).epsilon(1e-15));
  p1.count_include_pad = false;
  AvgPool2D<double> without_pad(3, 3, p1);
  CHECK(forward_values(without_pad, iota(Shape{1, 1, 4, 4})) ==
        std::vector<double>{2.5, 4, 5, 8.5, 10, 11, 12.5, 14, 15});
  MaxPool2D<double> max_pad(3, 3, p1);
  CHECK(forward_values(max_pad, iota(Shape{1, 1, 4, 4})) == std::vector<double>{5, 7, 7, 13, 15, 15, 13, 15, 15});

  // 3x3 plane 0..8, 2x2 at stride 2, padding 1, ceil_mode: the formula gives floor((3 + 2 - 2 + 1)
  // / 2) + 1 = 3, but the third window would start at padded row 4 >= 3 + 1, in the bottom
  // padding: dropped, so 2x2, as in floor mode.
  Pool2DOptions drop;
  drop.padding = {1, 1, 1, 1};
  drop.ceil_mode = true;
  MaxPool2D<double> max_drop(2, 2, drop);
  CHECK(max_drop.output_shape(Shape{1, 1, 3, 3}) == Shape{1, 1, 2, 2});
  CHECK(forward_values(max_drop, iota(Shape{1, 1, 3, 3})) == std::vector<double>{0, 2, 6, 8});
  AvgPool2D<double> avg_drop(2, 2, drop);
  CHECK(forward_values(avg_drop, iota(Shape{1, 1, 3, 3})) == std::vector<double>{0, 0.75, 2.25, 6});

  // padded positions never win: an all-negative plane stays negative
  Pool2DOptions same;
  same.stride_h = same.stride_w = 1;
  same.padding = {1, 1, 1, 1};
  MaxPool2D<double> max_same(3, 3, same);
  CHECK(forward_values(max_same, iota(Shape{1, 1, 3, 3}, -1)) ==
        std::vector<double>{-0.0, -0.0, -1, -0.0, -0.0, -1, -3, -3, -4});
  // dilation: taps two rows / three columns apart
  Pool2DOptions dil;
  dil.stride_h = dil.stride_w = 1;
  dil.dilation_h = 2;
  dil.dilation_w = 3;
  MaxPool2D<double> max_dil(2, 2, dil);
  CHECK(max_dil.output_shape(Shape{1, 1, 3, 4}) == Shape{1, 1, 1, 1});
  CHECK(forward_values(max_dil, iota(Shape{1, 1, 3, 4})) == std::vector<double>{11});  // taps 0, 3, 8, 11
  CHECK(forward_values(max_dil, iota(Shape{1, 1, 3, 4}, -1)) == std::vector<double>{-0.0});

  // NaN propagates through max pooling, as in PyTorch
  Tensor<double> nan_in(Shape{1, 1, 2, 2}, 1.0);
  nan_in[1] = std::numeric_limits<double>::quiet_NaN();
  CHECK(std::isnan(forward_values(max2, nan_in)[0]));
  GlobalMaxPool<double> gmax_nan;
  CHECK(std::isnan(forward_values(gmax_nan, nan_in)[0]));

  // Global pooling and Flatten
  GlobalAvgPool<double> gavg;
  GlobalMaxPool<double> gmax;
  CHECK(forward_values(gavg, iota(Shape{2, 2, 2, 3})) == std::vector<double>{2.5, 8.5, 14.5, 20.5});
  CHECK(forward_values(gmax, iota(Shape{2, 2, 2, 3})) == std::vector<double>{5, 11, 17, 23});
  Flatten<double> flat;
  CHECK(forward_values(flat, iota(Shape{2, 3, 2, 2})) == forward_values(flat, iota(Shape{2, 12})));
}

TEST_CASE("Pooling backward: gradients go to the first maximum and spread over averages", "[nn][pool]") {
  // ties: the first position of the window in row-major order takes the gradient (PyTorch's rule)
  MaxPool2D<double> max2(2, 2);
  const Tensor<double> ones(Shape{1, 1, 2, 2}, 1.0), g(Shape{1, 1, 1, 1}, 3.0);
  Tensor<double> y(Shape{1, 1, 1, 1}), gx(Shape{1, 1, 2, 2});
  max2.forward(ones, y);
  max2.backward(ones, y, g, gx);
  CHECK(std::vector<double>(gx.data(), gx.data() + 4) == std::vector<double>{3, 0, 0, 0});
  GlobalMaxPool<double> gmax;
  gmax.forward(ones, y);
  gmax.backward(ones, y, g, gx);
  CHECK(std::vector<double>(gx.data(), gx.data() + 4) == std::vector<double>{3, 0, 0, 0});

  // overlapping windows (2x2 at stride 1) that share their maximum add up its gradients
  Pool2DOptions s1;
  s1.stride_h = s1.stride_w = 1;
  MaxPool2D<double> overlap(2, 2, s1);
  Tensor<double> x(Shape{1, 1, 3, 3}, 0.0);
  x[4] = 1;  // the centre is in all four windows
  const Tensor<double> g4 = iota(Shape{1, 1, 2, 2});
  Tensor<double> y4(Shape{1, 1, 2, 2}), gx9(Shape{1, 1, 3, 3});
  overlap.forward(x, y4);
  overlap.backward(x, y4, g4, gx9);
  CHECK(std::vector<double>(gx9.data(), gx9.data() + 9) == std::vector<double>{0, 0, 0, 0, 6, 0, 0, 0, 0});

  // an average spreads g / divisor over the input positions its window covers
  Pool2DOptions drop;
  drop.padding = {1, 1, 1, 1};
  drop.ceil_mode = true;
  AvgPool2D<double> avg(2, 2, drop);  // divisor 4 everywhere (see the hand-checked example)
  const Tensor<double> ones4(Shape{1, 1, 2, 2}, 4.0);
  avg.forward(iota(Shape{1, 1, 3, 3}), y4);
  avg.backward(iota(Shape{1, 1, 3, 3}), y4, ones4, gx9);
  CHECK(std::vector<double>(gx9.data(), gx9.data() + 9) == std::vector<double>{1, 1, 1, 1, 1, 1, 1, 1, 1});
  GlobalAvgPool<double> gavg;
  const Tensor<double> g2(Shape{1, 1, 1, 1}, 6.0);
  Tensor<double> gx6(Shape{1, 1, 2, 3});
  gavg.backward(iota(Shape{1, 1, 2, 3}), y, g2, gx6);
  CHECK(std::vector<double>(gx6.data(), gx6.data() + 6) == std::vector<double>{1, 1, 1, 1, 1, 1});
  // an empty input gradient is allowed (a first layer needs none)
  avg.backward(iota(Shape{1, 1, 3, 3}), y4, ones4, TensorView<double>{});
}

TEST_CASE("Pooling and Flatten: shapes, FLOPs, descriptions and specs", "[nn][pool]") {
  Pool2DOptions o;
  o.stride_h = o.stride_w = 2;
  o.padding = {1, 1, 1, 1};
  o.ceil_mode = true;
  MaxPool2D<float> mp(3, 3, o);
  // ceil: OH = floor((8 + 2 - 3 + 1) / 2) + 1 = 5 (floor mode: 4); OW the same
  CHECK(mp.output_shape(Shape{2, 3, 8, 8}) == Shape{2, 3, 5, 5});
  CHECK(mp.flops(Shape{2, 3, 8, 8}) == 2u * 3u * 5u * 5u * 9u);
  CHECK(mp.describe() == "MaxPool2D(3x3, stride 2x2, pad 1,1,1,1, ceil_mode)");
  CHECK(mp.parameter_count() == 0);
  CHECK(mp.parameters().empty());
  o.ceil_mode = false;
  CHECK(MaxPool2D<float>(3, 3, o).output_shape(Shape{2, 3, 8, 8}) == Shape{2, 3, 4, 4});

  // stride 0 (the default) means "equal to the kernel", as PyTorch's stride=None
  MaxPool2D<float> plain(2, 3);
  CHECK(plain.window().stride_h == 2);
  CHECK(plain.window().stride_w == 3);
  CHECK(plain.options().stride_w == 3);
  CHECK_FALSE(plain.ceil_mode());
  CHECK(plain.describe() == "MaxPool2D(2x3, stride 2x3)");
  CHECK(plain.output_shape(Shape{1, 4, 7, 7}) == Shape{1, 4, 3, 2});

  Pool2DOptions d;
  d.stride_h = 1;
  d.padding = {0, 1, 2, 0};
  d.dilation_h = 2;
  MaxPool2D<double> dilated(2, 2, d);
  // OH = (5 + 0 + 2 - 2 * 1 - 1) / 1 + 1 = 5; OW = (6 + 1 + 0 - 1 - 1) / 2 + 1 = 3
  CHECK(dilated.output_shape(Shape{1, 1, 5, 6}) == Shape{1, 1, 5, 3});
  CHECK(dilated.describe() == "MaxPool2D(2x2, stride 1x2, pad 0,1,2,0, dilation 2x1)");

  Pool2DOptions a;
  a.stride_h = 1;
  a.padding = {0, 1, 0, 1};
  a.count_include_pad = false;
  AvgPool2D<float> ap(3, 2, a);
  CHECK(ap.describe() == "AvgPool2D(3x2, stride 1x2, pad 0,1,0,1, exclude pad)");
  CHECK(ap.output_shape(Shape{2, 5, 6, 7}) == Shape{2, 5, 4, 4});
  CHECK(ap.flops(Shape{2, 5, 6, 7}) == 2u * 5u * 4u * 4u * 6u);
  CHECK_FALSE(ap.count_include_pad());
  CHECK_FALSE(ap.options().count_include_pad);
  CHECK(AvgPool2D<float>(2, 2).describe() == "AvgPool2D(2x2, stride 2x2)");

  GlobalAvgPool<float> gavg;
  GlobalMaxPool<float> gmax;
  Flatten<float> flat;
  CHECK(gavg.output_shape(Shape{2, 3, 5, 4}) == Shape{2, 3, 1, 1});
  CHECK(gmax.output_shape(Shape{2, 3, 5, 4}) == Shape{2, 3, 1, 1});
  CHECK(gavg.output_shape(Shape{2, 3, 2, 2, 2}) == Shape{2, 3, 1, 1, 1});  // like ONNX: any spatial rank
  CHECK(gmax.output_shape(Shape{2, 3, 7}) == Shape{2, 3, 1});
  CHECK(gavg.flops(Shape{2, 3, 5, 4}) == 120u);
  CHECK(gmax.flops(Shape{2, 3, 5, 4}) == 120u);
  CHECK(flat.output_shape(Shape{2, 3, 5, 4}) == Shape{2, 60});
  CHECK(flat.output_shape(Shape{2, 7}) == Shape{2, 7});
  CHECK(flat.flops(Shape{2, 3, 5, 4}) == 0u);
  CHECK(gavg.describe() == "GlobalAvgPool");
  CHECK(flat.describe() == "Flatten");

  // spec -> make_layer -> the same layer, for float and double; no storage
  std::vector<std::unique_ptr<Layer<float>>> layers;
  layers.push_back(mp.clone());
  layers.push_back(plain.clone());
  layers.push_back(std::make_unique<MaxPool2D<float>>(2, 2, d));
  layers.push_back(ap.clone());
  layers.push_back(std::make_unique<AvgPool2D<float>>(3, 3, o));
  layers.push_back(gavg.clone());
  layers.push_back(gmax.clone());
  layers.push_back(flat.clone());
  for (const auto& l : layers) {
    INFO(l->describe());
    const auto rebuilt = make_layer<float>(l->spec());
    CHECK(rebuilt->spec() == l->spec());
    CHECK(rebuilt->describe() == l->describe());
    CHECK(make_layer<double>(l->spec())->describe() == l->describe());
    CHECK(layer_storage(l->spec()) == 0);
    CHECK(rebuilt->output_shape(Shape{2, 3, 9, 8}) == l->output_shape(Shape{2, 3, 9, 8}));
  }
  CHECK(mp.spec().integers.at("sh") == 2);
  CHECK(plain.spec().integers.at("sw") == 3);  // stored resolved
  CHECK(mp.spec().integers.at("ceil") == 1);
  CHECK(ap.spec().integers.at("count_include_pad") == 0);

  // a spec from outside is validated as the constructors validate
  auto broken = [](const LayerSpec& base, const std::string& key, std::uint64_t v) {
    LayerSpec s = base;
    s.integers[key] = v;
    return s;
  };
  for (const auto& s : {broken(mp.spec(), "ceil", 2), broken(ap.spec(), "count_include_pad", 2),
                        broken(mp.spec(), "sh", 0), broken(ap.spec(), "kw", 0), broken(mp.spec(), "dh", 0),
                        broken(mp.spec(), "pl", Window2D::max_extent + 1),
                        broken(ap.spec(), "kh", Window2D::max_extent + 1)}) {
    expect_errc(errc::invalid_argument, [&] { (void)make_layer<float>(s); });
    expect_errc(errc::invalid_argument, [&] { (void)layer_storage(s); });
  }
  LayerSpec missing = mp.spec();
  missing.integers.erase("dw");
  expect_errc(errc::invalid_argument, [&] { (void)make_layer<float>(missing); });
  missing = ap.spec();
  missing.integers.erase("count_include_pad");
  expect_errc(errc::invalid_argument, [&] { (void)make_layer<float>(missing); });
}

TEST_CASE("Pooling and Flatten: bad configurations and input shapes give typed errors", "[nn][pool]") {
  auto bad_max = [](std::size_t kh, std::size_t kw, Pool2DOptions o) {
    expect_errc(errc::invalid_argument, [&] { MaxPool2D<float>(kh, kw, o); });
  };
  auto bad_avg = [](std::size_t kh, std::size_t kw, Pool2DOptions o) {
    expect_errc(errc::invalid_argument, [&] { AvgPool2D<double>(kh, kw, o); });
  };
  for (auto [kh, kw] : {std::array<std::size_t, 2>{0, 2}, {2, 0}, {Window2D::max_extent + 1, 1}}) {
    bad_max(kh, kw, {});
    bad_avg(kh, kw, {});
  }
  Pool2DOptions o;
  o.dilation_h = 0;
  bad_max(2, 2, o);
  o = {};
  o.dilation_w = 0;
  bad_max(2, 2, o);
  o = {};
  o.dilation_w = 2;  // average pooling has no dilation
  bad_avg(2, 2, o);
  o = {};
  o.padding.bottom = Window2D::max_extent + 1;
  bad_max(2, 2, o);
  bad_avg(2, 2, o);
  o = {};
  o.stride_w = Window2D::max_extent + 1;
  bad_max(2, 2, o);

  Pool2DOptions p;
  p.padding = {1, 0, 0, 0};
  p.dilation_w = 2;
  MaxPool2D<float> mp(3, 2, p);  // needs H >= 2 and W >= 3
  CHECK(mp.output_shape(Shape{1, 5, 2, 3}) == Shape{1, 5, 1, 1});
  const auto message = [](const Layer<float>& layer, const Shape& s) {
    try {
      (void)layer.output_shape(s);
    } catch (const error& e) {
      CHECK(e.code() == errc::shape_mismatch);
      return std::string(e.what());
    }
    FAIL("no error for " << s.str());
    return std::string();
  };
  for (const Shape& s : {Shape{2, 5, 8}, Shape{2, 5, 8, 8, 1}, Shape{2, 40}, Shape{2, 5, 1, 3}, Shape{2, 5, 2, 2},
                         Shape{2, 5, 0, 7}}) {
    const std::string m = message(mp, s);
    INFO(m);
    CHECK(m.find("MaxPool2D(3x2, stride 3x2, pad 1,0,0,0, dilation 1x2") != std::string::npos);  // names the layer
    CHECK(m.find(s.str()) != std::string::npos);  // and the shape it got
  }
  // a window that reads only padding (the padding exceeds the kernel's reach) has no max
  Pool2DOptions wide;
  wide.padding = {0, 2, 0, 0};
  const MaxPool2D<float> only_pad(2, 2, wide);
  const std::string m = message(only_pad, Shape{1, 1, 4, 4});
  CHECK(m.find("column 0 reads only padding") != std::string::npos);
  CHECK(m.find("[1, 1, 4, 4]") != std::string::npos);
  (void)message(AvgPool2D<float>(2, 2, wide), Shape{1, 1, 4, 4});
  expect_errc(errc::invalid_argument, [&] { (void)mp.output_shape(Shape{0, 5, 8, 8}); });

  Tensor<float> x(Shape{2, 5, 4, 6}), wrong_out(Shape{2, 5, 2, 2});
  expect_errc(errc::shape_mismatch, [&] { mp.forward(x, wrong_out); });
  Tensor<float> y(mp.output_shape(x.shape()));
  CHECK(y.shape() == Shape{2, 5, 1, 2});
  Tensor<float> gx(Shape{2, 5, 4, 5});
  expect_errc(errc::shape_mismatch, [&] { mp.backward(x, y, y, gx); });

  GlobalAvgPool<float> gavg;
  GlobalMaxPool<float> gmax;
  Flatten<float> flat;
  for (const Layer<float>* l : std::initializer_list<const Layer<float>*>{&gavg, &gmax}) {
    for (const Shape& s : {Shape{2, 3}, Shape{2, 3, 0, 4}, Shape{2, 0, 4, 4}}) {
      const std::string gm = message(*l, s);
      INFO(gm);
      CHECK(gm.find(std::string(l->name())) != std::string::npos);
      CHECK(gm.find(s.str()) != std::string::npos);
    }
  }
  expect_errc(errc::shape_mismatch, [&] { (void)flat.output_shape(Shape{6}); });
  expect_errc(errc::invalid_argument, [&] { (void)gavg.output_shape(Shape{0, 3, 4, 4}); });
  Tensor<float> flat_in(Shape{2, 3, 2, 2}), flat_wrong(Shape{2, 3, 4});
  expect_errc(errc::shape_mismatch, [&] { flat.forward(flat_in, flat_wrong); });
}

TEST_CASE("Pooling: steady-state forward and training step allocate nothing", "[nn][pool][alloc]") {
  if (edgesplit_test::allocations() < 0) {
    WARN("allocation counting is unavailable in this build (sanitizer allocator)");
    return;
  }
  Rng rng(6);
  Conv2DOptions same;
  same.padding = same_padding(3, 3);
  Pool2DOptions ceil3;  // 3x3 at stride 2, padding 1, ceil_mode, padding excluded from averages
  ceil3.stride_h = ceil3.stride_w = 2;
  ceil3.padding = {1, 1, 1, 1};
  ceil3.ceil_mode = true;
  ceil3.count_include_pad = false;
  Pool2DOptions dilated;  // overlapping, dilated, asymmetric padding
  dilated.stride_h = dilated.stride_w = 1;
  dilated.padding = {0, 1, 1, 0};
  dilated.dilation_h = 2;

  Sequential<float> avg_model;  // conv -> max 2x2 -> avg (ceil) -> global average -> flatten -> dense
  avg_model.add<Conv2D<float>>(3, 8, 3, 3, same, rng);
  avg_model.add<ReLU<float>>();
  avg_model.add<MaxPool2D<float>>(2, 2);
  avg_model.add<AvgPool2D<float>>(3, 3, ceil3);
  avg_model.add<GlobalAvgPool<float>>();
  avg_model.add<Flatten<float>>();
  avg_model.add<Dense<float>>(8, 10, rng);
  Sequential<float> max_model;  // conv -> max (ceil) -> max (dilated) -> global max -> flatten -> dense
  max_model.add<Conv2D<float>>(3, 8, 3, 3, same, rng);
  max_model.add<MaxPool2D<float>>(3, 3, ceil3);
  max_model.add<MaxPool2D<float>>(2, 2, dilated);
  max_model.add<GlobalMaxPool<float>>();
  max_model.add<Flatten<float>>();
  max_model.add<Dense<float>>(8, 10, rng);
  for (Sequential<float>* model : {&avg_model, &max_model})
    for (std::size_t batch : {4, 1, 8}) {
      const auto x = random_tensor(Shape{batch, 3, 17, 15}, batch);
      Tensor<float> out(model->output_shape(x.shape()));
      REQUIRE(out.shape() == Shape{batch, 10});
      model->forward(x, out);  // warm-up: workspaces grow to this batch
      long long before = edgesplit_test::allocations();
      for (int i = 0; i < 3; ++i) model->forward(x, out);
      (void)model->forward(x.batch(0, batch / 2 + 1));  // a smaller batch reuses the workspaces
      long long made = edgesplit_test::allocations() - before;
      INFO("forward, batch " << batch);
      CHECK(made == 0);

      const Tensor<float> g(out.shape(), 0.01f);
      model->zero_grad();
      (void)model->forward(x.cview());
      model->backward(x.cview(), g.cview());  // warm-up of the gradient buffers
      before = edgesplit_test::allocations();
      for (int i = 0; i < 2; ++i) {
        (void)model->forward(x.cview());
        model->backward(x.cview(), g.cview());
      }
      made = edgesplit_test::allocations() - before;
      INFO("training step, batch " << batch);
      CHECK(made == 0);
    }
}

// ---------------------------------------------------------------------------------------------
// BatchNorm2D and fold_batchnorm

namespace {

/// gamma_n = n u / (1 - n u): the bound on n accumulated roundings (Higham, Lemma 3.1).
double gamma_n(double n, double u) { return n * u / (1 - n * u); }

/// Per-channel mean and biased variance of an {N, C, ...} tensor, in long double.
void channel_statistics(const Tensor<float>& x, std::vector<long double>& mean, std::vector<long double>& var) {
  const std::size_t N = x.shape()[0], C = x.shape()[1], P = x.size() / (N * C);
  mean.assign(C, 0);
  var.assign(C, 0);
  for (std::size_t n = 0; n < N; ++n)
    for (std::size_t c = 0; c < C; ++c)
      for (std::size_t i = 0; i < P; ++i) mean[c] += x[(n * C + c) * P + i];
  for (auto& m : mean) m /= static_cast<long double>(N * P);
  for (std::size_t n = 0; n < N; ++n)
    for (std::size_t c = 0; c < C; ++c)
      for (std::size_t i = 0; i < P; ++i) {
        const long double d = x[(n * C + c) * P + i] - mean[c];
        var[c] += d * d;
      }
  for (auto& v : var) v /= static_cast<long double>(N * P);
}

/// Checks `y` = bn(x) against (x - mean) s + beta, s = gamma / sqrt(var + eps), in long double.
///
/// The layer computes fl(fl(fl(x - m) * s~) + beta) with s~ = s (1 + d) (s evaluated in double,
/// rounded once to float) and m~ = m (1 + d') (the batch mean rounded to float; exact when m is
/// a stored running mean). Expanding the roundings (Higham's theta notation), the result is
/// (x - m) s (1 + theta_4) - m d' s (1 + theta_3) + beta (1 + theta_1), so the error is within
/// gamma_4 |s| |x - m| + u |s| |m| (1 + gamma_3) + u |beta| <= gamma_5 (|s| (|x - m| + |m|) + |beta|),
/// the |m| term only when the mean is rounded. The statistics' own error (double sums of at most
/// a few hundred floats, ~1e-14 relative) is far below one more gamma step, taken as margin.
void check_normalised(const BatchNorm2D<float>& bn, const Tensor<float>& x, const Tensor<float>& y,
                      const std::vector<long double>& mean, const std::vector<long double>& var, bool mean_rounded) {
  const double u = std::numeric_limits<float>::epsilon() / 2, g6 = gamma_n(6, u);
  const std::size_t N = x.shape()[0], C = x.shape()[1], P = x.size() / (N * C);
  std::size_t bad = 0;
  for (std::size_t n = 0; n < N; ++n)
    for (std::size_t c = 0; c < C; ++c) {
      const long double s = bn.weight()[c] / std::sqrt(var[c] + bn.epsilon());
      for (std::size_t i = 0; i < P; ++i) {
        const std::size_t k = (n * C + c) * P + i;
        const long double d = x[k] - mean[c], want = d * s + bn.bias()[c];
        const long double bound =
            g6 * (std::abs(s) * (std::abs(d) + (mean_rounded ? std::abs(mean[c]) : 0)) + std::abs(bn.bias()[c]));
        if (std::abs(y[k] - want) > bound && bad++ == 0) {
          INFO(bn.describe() << " on " << x.shape().str() << " at " << k << ": got " << y[k] << " want "
                             << double(want) << " bound " << double(bound));
          CHECK(false);
        }
      }
    }
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("BatchNorm2D: training forward uses batch statistics and moves the running ones", "[nn][batchnorm]") {
  const double momentum = 0.25, eps = 1e-3, u = std::numeric_limits<float>::epsilon() / 2;
  BatchNorm2D<float> bn(3, eps, momentum);
  const float gamma[] = {1.5f, -0.5f, 2.0f}, beta[] = {0.1f, -0.2f, 0.3f};
  for (std::size_t c = 0; c < 3; ++c) {
    bn.weight()[c] = gamma[c];
    bn.bias()[c] = beta[c];
  }
  bn.set_training(true);
  // The reference running statistics from PyTorch's start (mean 0, variance 1), and bounds on
  // the layer's distance from them: each step rounds the new value to float once (u |r_k|) and
  // carries (1 - momentum) of the previous step's error.
  std::vector<long double> rm(3, 0), rv(3, 1), err_m(3, 0), err_v(3, 0);
  const std::vector<Shape> steps{Shape{4, 3, 5, 6}, Shape{2, 3, 7, 3}};
  std::vector<Tensor<float>> batches;
  for (std::size_t step = 0; step < steps.size(); ++step) {
    // channel c is centred near 10 c: a large mean against the spread, which the two-pass
    // statistics and the (x - m) s + beta order must not lose
    auto x = random_tensor(steps[step], 300 + step, -1, 2);
    const std::size_t N = x.shape()[0], P = x.size() / (N * 3);
    for (std::size_t n = 0; n < N; ++n)
      for (std::size_t c = 0; c < 3; ++c)
        for (std::size_t i = 0; i < P; ++i) x[(n * 3 + c) * P + i] += static_cast<float>(10 * c + step);
    Tensor<float> y(x.shape());
    bn.forward(x, y);
    std::vector<long double> mean, var;
    channel_statistics(x, mean, var);
    check_normalised(bn, x, y, mean, var, true);
    const long double values = static_cast<long double>(N * P);
    for (std::size_t c = 0; c < 3; ++c) {
      rm[c] = (1 - momentum) * rm[c] + momentum * mean[c];
      rv[c] = (1 - momentum) * rv[c] + momentum * var[c] * values / (values - 1);  // unbiased
      err_m[c] = u * std::abs(rm[c]) + (1 - momentum) * err_m[c] * (1 + u) + 1e-12;
      err_v[c] = u * std::abs(rv[c]) + (1 - momentum) * err_v[c] * (1 + u) + 1e-12;
      INFO("step " << step << " channel " << c);
      CHECK(std::abs(bn.running_mean()[c] - rm[c]) <= err_m[c]);
      CHECK(std::abs(bn.running_var()[c] - rv[c]) <= err_v[c]);
    }
    batches.push_back(std::move(x));
  }

  // inference: the running statistics, whatever the batch
  bn.set_training(false);
  std::vector<long double> mean(3), var(3);
  for (std::size_t c = 0; c < 3; ++c) {
    mean[c] = bn.running_mean()[c];
    var[c] = bn.running_var()[c];
  }
  for (const auto& x : batches) {
    Tensor<float> y(x.shape());
    bn.forward(x, y);
    check_normalised(bn, x, y, mean, var, false);
  }
  const Tensor<float> before = bn.running_mean();
  Tensor<float> y(batches[0].shape());
  bn.forward(batches[0], y);
  CHECK(std::memcmp(before.data(), bn.running_mean().data(), before.bytes()) == 0);  // inference keeps them

  // BatchNorm1d's inputs: {N, C} and {N, C, L}
  BatchNorm2D<float> flat(4);
  flat.set_training(true);
  for (const Shape& s : {Shape{6, 4}, Shape{3, 4, 5}}) {
    const auto x = random_tensor(s, 310 + s.rank(), -3, 1);
    Tensor<float> out(s);
    flat.forward(x, out);
    std::vector<long double> m, v;
    channel_statistics(x, m, v);
    check_normalised(flat, x, out, m, v, true);
  }
}

TEST_CASE("BatchNorm2D: spec round trip, parameters, buffers and FLOPs", "[nn][batchnorm]") {
  BatchNorm2D<double> bn(5, 1e-3, 0.2);
  CHECK(bn.describe() == "BatchNorm2D(5, eps 0.001, momentum 0.2)");
  CHECK(BatchNorm2D<float>(3).describe() == "BatchNorm2D(3, eps 1e-05, momentum 0.1)");
  CHECK(bn.spec() == LayerSpec{"BatchNorm2D", {{"channels", 5}}, {{"epsilon", 1e-3}, {"momentum", 0.2}}});
  const auto rebuilt = make_layer<double>(bn.spec());
  CHECK(rebuilt->spec() == bn.spec());
  CHECK(rebuilt->describe() == bn.describe());
  CHECK(rebuilt->parameter_count() == 10u);
  CHECK(layer_storage(bn.spec()) == 20u);  // gamma, beta, running mean and variance

  const auto params = bn.parameters();
  REQUIRE(params.size() == 2);
  CHECK(params[0].name == "weight");
  CHECK(params[1].name == "bias");
  const auto buffers = bn.buffers();
  REQUIRE(buffers.size() == 2);
  CHECK(buffers[0].name == "running_mean");
  CHECK(buffers[1].name == "running_var");
  for (std::size_t c = 0; c < 5; ++c) {  // PyTorch's initial values
    CHECK(params[0].value[c] == 1);
    CHECK(params[1].value[c] == 0);
    CHECK(buffers[0].value[c] == 0);
    CHECK(buffers[1].value[c] == 1);
  }
  CHECK(bn.output_shape(Shape{2, 5, 3, 4}) == Shape{2, 5, 3, 4});
  CHECK(bn.output_shape(Shape{2, 5}) == Shape{2, 5});
  CHECK(bn.flops(Shape{2, 5, 3, 4}) == 3u * 120u);
  bn.set_training(true);
  CHECK(bn.flops(Shape{2, 5, 3, 4}) == 7u * 120u);

  // every new activation rebuilds from its spec too, settings included
  std::vector<std::unique_ptr<Layer<float>>> acts;
  acts.push_back(std::make_unique<ReLU6<float>>());
  acts.push_back(std::make_unique<Clip<float>>(-0.75, 3.5));
  acts.push_back(std::make_unique<HardSigmoid<float>>());
  acts.push_back(std::make_unique<HardSigmoid<float>>(1.0 / 6, 0.5));
  acts.push_back(std::make_unique<HardSwish<float>>());
  acts.push_back(std::make_unique<SiLU<float>>());
  for (const auto& l : acts) {
    INFO(l->describe());
    const auto back = make_layer<float>(l->spec());
    CHECK(back->spec() == l->spec());
    CHECK(back->describe() == l->describe());
    CHECK(layer_storage(l->spec()) == 0u);
  }
  CHECK(acts[1]->spec() == LayerSpec{"Clip", {}, {{"min", -0.75}, {"max", 3.5}}});
  CHECK(acts[3]->spec().reals.at("alpha") == 1.0 / 6);  // kept as double, not rounded to float
  CHECK(LeakyReLU<float>(0.125).spec() == LayerSpec{"LeakyReLU", {}, {{"alpha", 0.125}}});  // key unchanged
}

TEST_CASE("BatchNorm2D: bad configurations and input shapes give typed errors", "[nn][batchnorm]") {
  const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
  expect_errc(errc::invalid_argument, [] { BatchNorm2D<float>(0); });
  for (double eps : {0.0, -1e-5, inf, nan}) expect_errc(errc::invalid_argument, [&] { BatchNorm2D<float>(3, eps); });
  for (double m : {-0.1, 1.5, nan}) expect_errc(errc::invalid_argument, [&] { BatchNorm2D<float>(3, 1e-5, m); });

  const LayerSpec good = BatchNorm2D<float>(3).spec();
  LayerSpec broken = good;
  broken.reals.erase("momentum");
  expect_errc(errc::invalid_argument, [&] { (void)make_layer<float>(broken); });
  broken = good;
  broken.reals["epsilon"] = 0;
  expect_errc(errc::invalid_argument, [&] { (void)make_layer<float>(broken); });
  broken = good;
  broken.integers["channels"] = 0;
  expect_errc(errc::invalid_argument, [&] { (void)layer_storage(broken); });
  broken.integers["channels"] = std::uint64_t{1} << 62;
  expect_errc(errc::too_large, [&] { (void)layer_storage(broken); });
  expect_errc(errc::invalid_argument, [] { (void)make_layer<float>({"Clip", {}, {{"min", 1.0}, {"max", -1.0}}}); });
  expect_errc(errc::invalid_argument, [] { (void)make_layer<float>({"Clip", {}, {{"min", 1.0}}}); });
  expect_errc(errc::invalid_argument, [] { (void)make_layer<float>({"HardSigmoid", {}, {{"alpha", 0.2}}}); });

  BatchNorm2D<float> bn(3);
  const auto message = [&](const Shape& s) {
    try {
      (void)bn.output_shape(s);
    } catch (const error& e) {
      CHECK(e.code() == errc::shape_mismatch);
      return std::string(e.what());
    }
    FAIL("no error for " << s.str());
    return std::string();
  };
  expect_errc(errc::shape_mismatch, [&] { (void)bn.output_shape(Shape{3}); });  // no batch dimension
  for (const Shape& s : {Shape{2, 4, 5, 5}, Shape{2, 3, 5, 5, 1}, Shape{2, 2}, Shape{2, 3, 0, 4}}) {
    const std::string m = message(s);
    INFO(m);
    CHECK(m.find("BatchNorm2D(3") != std::string::npos);  // names the layer
    CHECK(m.find(s.str()) != std::string::npos);          // and the shape it got
  }
  expect_errc(errc::invalid_argument, [&] { (void)bn.output_shape(Shape{0, 3, 4, 4}); });
  // training needs two values per channel to have a variance (PyTorch refuses the same)
  CHECK(bn.output_shape(Shape{1, 3, 1, 1}) == Shape{1, 3, 1, 1});
  bn.set_training(true);
  for (const Shape& s : {Shape{1, 3}, Shape{1, 3, 1, 1}}) CHECK(message(s).find("more than one value") != std::string::npos);
  CHECK(bn.output_shape(Shape{1, 3, 2, 1}) == Shape{1, 3, 2, 1});
  CHECK(bn.output_shape(Shape{2, 3}) == Shape{2, 3});
  Tensor<float> x(Shape{2, 3, 4, 4}), wrong(Shape{2, 3, 4, 3});
  expect_errc(errc::shape_mismatch, [&] { bn.forward(x, wrong); });
  expect_errc(errc::shape_mismatch, [&] { bn.backward(x, x, x, wrong); });
}

TEST_CASE("BatchNorm2D: steady-state forward and training step allocate nothing", "[nn][batchnorm][alloc]") {
  if (edgesplit_test::allocations() < 0) {
    WARN("allocation counting is unavailable in this build (sanitizer allocator)");
    return;
  }
  Rng rng(9);
  Sequential<float> model;
  Conv2DOptions same;
  same.padding = same_padding(3, 3);
  model.add<Conv2D<float>>(3, 8, 3, 3, same, rng);
  model.add<BatchNorm2D<float>>(8);
  model.add<ReLU6<float>>();
  model.add<Conv2D<float>>(8, 4, 1, 1, Conv2DOptions{}, rng);
  model.add<BatchNorm2D<float>>(4);
  model.add<HardSwish<float>>();
  model.add<Dense<float>>(4 * 8 * 8, 5, rng);
  model.add<SiLU<float>>();
  for (bool training : {false, true}) {
    model.set_training(training);
    for (std::size_t batch : {4, 2}) {
      const auto x = random_tensor(Shape{batch, 3, 8, 8}, batch);
      Tensor<float> out(model.output_shape(x.shape()));
      model.forward(x, out);  // warm-up
      long long before = edgesplit_test::allocations();
      for (int i = 0; i < 3; ++i) model.forward(x, out);
      long long made = edgesplit_test::allocations() - before;
      INFO((training ? "training" : "inference") << " forward, batch " << batch);
      CHECK(made == 0);

      const Tensor<float> g(out.shape(), 0.01f);
      model.zero_grad();
      (void)model.forward(x.cview());
      model.backward(x.cview(), g.cview());  // warm-up of the gradient buffers
      before = edgesplit_test::allocations();
      for (int i = 0; i < 2; ++i) {
        model.zero_grad();
        (void)model.forward(x.cview());
        model.backward(x.cview(), g.cview());
      }
      made = edgesplit_test::allocations() - before;
      INFO((training ? "training" : "inference") << " step, batch " << batch);
      CHECK(made == 0);
    }
  }
}

namespace {

/// BatchNorm2D(C) with running statistics and affine parameters away from their defaults.
BatchNorm2D<float> trained_batchnorm(std::size_t channels, std::uint64_t seed) {
  Rng rng(seed);
  BatchNorm2D<float> bn(channels, 1e-3);
  for (std::size_t c = 0; c < channels; ++c) {
    bn.weight()[c] = static_cast<float>(rng.uniform(0.5, 2) * (c % 3 == 1 ? -1 : 1));
    bn.bias()[c] = static_cast<float>(rng.uniform(-1, 1));
    bn.running_mean()[c] = static_cast<float>(rng.uniform(-2, 2));
    bn.running_var()[c] = static_cast<float>(rng.uniform(0.05, 3));
  }
  return bn;
}

/// bn(conv(x)) in long double, with the error bounds of the two ways of computing it in float.
///
/// Per output, with K = in/groups * kh * kw products W_k x_k, conv bias b (0 without one),
/// s = gamma / sqrt(var + eps), mean m and shift beta:
/// - folded, fl(sum_k W'_k x_k + b') with W'_k = fl(W_k s) and b' = fl((b - m) s + beta), both
///   computed in double: a sum of K + 1 terms is within gamma_{K+1} of its terms' magnitudes
///   (Higham eq. 3.5, as the Conv2D test), and rounding W_k s and b' adds one more factor
///   (1 + delta) to each term, so |folded - exact| <= gamma_{K+2} (|s| sum_k |W_k x_k| + |(b - m) s + beta|);
/// - unfolded, conv then BatchNorm2D: the conv output c~ is within gamma_{K+1} M of c
///   (M = sum_k |W_k x_k| + |b|), and the normalisation fl(fl(fl(c~ - m) s~) + beta) adds
///   gamma_4 |s| |c - m| + u |beta| (see check_normalised; m is stored, not rounded), which with
///   |c - m| <= M + |m| gives |unfolded - exact| <= gamma_{K+5} (|s| (M + |m|) + |beta|).
/// The double-precision folding and the long double reference add errors ~1e-16 relative to the
/// same magnitudes, covered by 8 double ulps.
struct ConvBnReference {
  std::vector<long double> exact, folded_bound, unfolded_bound;
  std::vector<long double> scale;  // s of each output's channel
};

ConvBnReference conv_bn_reference(const Conv2D<float>& conv, const BatchNorm2D<float>& bn, const Tensor<float>& x) {
  const double u = std::numeric_limits<float>::epsilon() / 2, ud = std::numeric_limits<double>::epsilon() / 2;
  std::vector<long double> sum, magnitude;
  reference_conv(conv, x, sum, magnitude);
  const double K = static_cast<double>(conv.weight().size() / conv.out_channels());
  const std::size_t O = conv.out_channels(), per_channel = sum.size() / (x.shape()[0] * O);
  ConvBnReference r;
  for (std::size_t i = 0; i < sum.size(); ++i) {
    const std::size_t o = (i / per_channel) % O;
    const long double s = bn.weight()[o] / std::sqrt(static_cast<long double>(bn.running_var()[o]) + bn.epsilon());
    const long double b = conv.has_bias() ? conv.bias()[o] : 0.0f, m = bn.running_mean()[o], beta = bn.bias()[o];
    const long double products = magnitude[i] - std::abs(b);  // sum_k |W_k x_k|
    r.exact.push_back((sum[i] - m) * s + beta);
    const long double folded_mag = std::abs(s) * products + std::abs((b - m) * s + beta);
    const long double unfolded_mag = std::abs(s) * (magnitude[i] + std::abs(m)) + std::abs(beta);
    r.folded_bound.push_back((gamma_n(K + 2, u) + 8 * ud) * folded_mag);
    r.unfolded_bound.push_back((gamma_n(K + 5, u) + 8 * ud) * unfolded_mag);
    r.scale.push_back(s);
  }
  return r;
}

/// Runs layers [from, to) of `model` on `x`, one by one.
Tensor<float> run(Sequential<float>& model, std::size_t from, std::size_t to, const Tensor<float>& x) {
  Tensor<float> cur = x;
  for (std::size_t i = from; i < to; ++i) {
    Tensor<float> next(model[i].output_shape(cur.shape()));
    model[i].forward(cur, next);
    cur = std::move(next);
  }
  return cur;
}

}  // namespace

TEST_CASE("fold_batchnorm: a folded Conv2D equals Conv2D + BatchNorm2D within the float error bound",
          "[nn][batchnorm][fold]") {
  Rng rng(21);
  Sequential<float> model;
  model.add<BatchNorm2D<float>>(3) = trained_batchnorm(3, 1);  // not after a Conv2D: kept as it is
  Conv2DOptions a;  // bias, same padding
  a.padding = same_padding(3, 3);
  auto& conv1 = model.add<Conv2D<float>>(3, 8, 3, 3, a, rng);
  for (float& b : conv1.bias().span()) b = static_cast<float>(rng.uniform(-1, 1));
  model.add<BatchNorm2D<float>>(8) = trained_batchnorm(8, 2);
  model.add<ReLU<float>>();
  Conv2DOptions b;  // grouped, strided, no bias: the fold adds one
  b.groups = 2;
  b.stride_h = 2;
  b.stride_w = 2;
  b.padding = {1, 1, 1, 1};
  b.bias = false;
  model.add<Conv2D<float>>(8, 6, 3, 3, b, rng);
  model.add<BatchNorm2D<float>>(6) = trained_batchnorm(6, 3);
  model.add<Conv2D<float>>(6, 4, 1, 1, Conv2DOptions{}, rng);  // a Conv2D followed by no BatchNorm2D
  const Sequential<float> original = model;

  Sequential<float> folded = fold_batchnorm(original);
  REQUIRE(folded.size() == 5);
  const char* kinds[] = {"BatchNorm2D", "Conv2D", "ReLU", "Conv2D", "Conv2D"};
  for (std::size_t i = 0; i < folded.size(); ++i) CHECK(folded[i].name() == kinds[i]);
  CHECK(folded[3].spec().integers.at("bias") == 1);
  CHECK(folded[3].spec().integers.at("groups") == 2);
  CHECK(folded[4].spec() == model[6].spec());

  const auto x = random_tensor(Shape{2, 3, 9, 7}, 22, -2, 2);
  // stage 0: the BatchNorm2D kept as it is gives both models the same input
  const Tensor<float> a0 = run(model, 0, 1, x), f0 = run(folded, 0, 1, x);
  REQUIRE(std::memcmp(a0.data(), f0.data(), a0.bytes()) == 0);

  // stage 1: conv1 + bn1 against their fold, both against the long double reference
  const Tensor<float> u1 = run(model, 1, 3, a0), f1 = run(folded, 1, 2, a0);
  const auto r1 = conv_bn_reference(dynamic_cast<const Conv2D<float>&>(model[1]),
                                    dynamic_cast<const BatchNorm2D<float>&>(model[2]), a0);
  REQUIRE(r1.exact.size() == f1.size());
  std::size_t bad = 0;
  for (std::size_t i = 0; i < f1.size(); ++i) {
    bad += std::abs(f1[i] - r1.exact[i]) > r1.folded_bound[i];
    bad += std::abs(u1[i] - r1.exact[i]) > r1.unfolded_bound[i];
  }
  CHECK(bad == 0);

  // stage 2: each model feeds its own ReLU output on; the exact maps of the two inputs differ by
  // at most |s| sum_k |W_k| |x_f,k - x_u,k| (bn2(conv2(.)) is affine), which bounds how far the
  // stage-1 rounding carries
  const Tensor<float> xu = run(model, 3, 4, u1), xf = run(folded, 2, 3, f1);
  const Tensor<float> u2 = run(model, 4, 6, xu), f2 = run(folded, 3, 4, xf);
  const auto& conv2 = dynamic_cast<const Conv2D<float>&>(model[4]);
  const auto& bn2 = dynamic_cast<const BatchNorm2D<float>&>(model[5]);
  const auto rf = conv_bn_reference(conv2, bn2, xf), ru = conv_bn_reference(conv2, bn2, xu);
  Tensor<float> diff(xf.shape());  // |x_f - x_u| through conv2's |weights|
  for (std::size_t i = 0; i < diff.size(); ++i) diff[i] = std::abs(xf[i] - xu[i]);
  Conv2D<float> abs_conv2 = conv2;
  for (float& w : abs_conv2.weight().span()) w = std::abs(w);
  std::vector<long double> carried, unused;
  reference_conv(abs_conv2, diff, carried, unused);
  REQUIRE(carried.size() == f2.size());
  for (std::size_t i = 0; i < f2.size(); ++i) {
    const long double want = std::abs(rf.scale[i]) * carried[i] + rf.folded_bound[i] + ru.unfolded_bound[i];
    if (std::abs(f2[i] - rf.exact[i]) > rf.folded_bound[i] || std::abs(u2[i] - ru.exact[i]) > ru.unfolded_bound[i] ||
        std::abs(f2[i] - u2[i]) > want) {
      if (bad++ == 0) {
        INFO("stage 2 at " << i << ": folded " << f2[i] << " unfolded " << u2[i] << " exact " << double(rf.exact[i])
                           << " bound " << double(want));
        CHECK(false);
      }
    }
  }
  CHECK(bad == 0);

  // the whole models: the same layer-by-layer values, and inference mode leaves `model` as it was
  const Tensor<float> whole_u = model.predict(x), whole_f = folded.predict(x);
  CHECK(std::memcmp(whole_u.data(), run(model, 6, 7, u2).data(), whole_u.bytes()) == 0);
  CHECK(std::memcmp(whole_f.data(), run(folded, 4, 5, f2).data(), whole_f.bytes()) == 0);
  CHECK(model.parameter_count() == original.parameter_count());

  // the primitive: channels must agree
  expect_errc(errc::shape_mismatch, [&] { (void)fold_batchnorm(Conv2D<float>(3, 8, 3, 3), BatchNorm2D<float>(6)); });
  Sequential<float> mismatched;
  mismatched.add<Conv2D<float>>(3, 8, 3, 3);
  mismatched.add<BatchNorm2D<float>>(6);
  expect_errc(errc::shape_mismatch, [&] { (void)fold_batchnorm(mismatched); });
  CHECK(fold_batchnorm(Sequential<float>{}).empty());
}

// Tests for core/: Shape, Tensor, views, errors, SIMD kernels against their scalar references.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "edgesplit/core/thread_name.hpp"
#include "edgesplit/edgesplit.hpp"
#include "test_util.hpp"

using namespace edgesplit;
using edgesplit_test::expect_errc;

TEST_CASE("Shape: rank bounds, counts and overflow", "[core][shape]") {
  const Shape s{2, 3, 4};
  CHECK(s.rank() == 3);
  CHECK(s.count() == 24);
  CHECK(s.batch() == 2);
  CHECK(s.features() == 12);
  CHECK(s.with_batch(5).count() == 60);
  CHECK(Shape{1, 1, 1, 1, 1, 1, 1, 1}.rank() == 8);

  expect_errc(errc::invalid_argument, [] { Shape(std::initializer_list<std::size_t>{}); });
  expect_errc(errc::invalid_argument, [] { Shape{1, 1, 1, 1, 1, 1, 1, 1, 1}; });
  const std::size_t big = std::numeric_limits<std::size_t>::max() / 2;
  expect_errc(errc::too_large, [&] { Shape{big, 3}; });
  expect_errc(errc::too_large, [&] { Shape{2, 2, big}; });
  expect_errc(errc::too_large, [] { Shape::checked_bytes(std::numeric_limits<std::size_t>::max() / 2, 4); });
  CHECK(Shape{0, 5}.count() == 0);  // an empty shape is representable; layers refuse it
}

TEST_CASE("Tensor: aligned, zeroed, copies deep, resize keeps storage", "[core][tensor]") {
  Tensor<float> t(Shape{3, 5});
  CHECK(reinterpret_cast<std::uintptr_t>(t.data()) % tensor_alignment == 0);
  for (float v : t.span()) CHECK(v == 0.0f);
  for (std::size_t i = 0; i < t.size(); ++i) t[i] = static_cast<float>(i);

  Tensor<float> c = t;
  c[0] = 42;
  CHECK(t[0] == 0.0f);
  CHECK(c[1] == 1.0f);

  const float* before = t.data();
  t.resize(Shape{2, 5});
  CHECK(t.data() == before);
  CHECK(t.capacity() == 15);
  t.resize(Shape{4, 5});
  CHECK(t.capacity() == 20);

  Tensor<float> m = std::move(c);
  CHECK(c.data() == nullptr);
  CHECK(m[0] == 42.0f);

  Tensor<std::int8_t> i8(Shape{4}, std::int8_t{-3});
  Tensor<std::uint8_t> u8(Shape{4}, std::uint8_t{200});
  Tensor<std::int32_t> i32(Shape{2, 2}, -7);
  Tensor<double> f64(Shape{1, 2}, 0.5);
  CHECK(i8[3] == -3);
  CHECK(u8[3] == 200);
  CHECK(i32[3] == -7);
  CHECK(f64.as_matrix()(0, 1) == 0.5);
  CHECK(dtype_of<std::int8_t>() == dtype::i8);
  CHECK(size_of(dtype::f64) == 8);
}

TEST_CASE("TensorView: Eigen view, batch ranges, reshape", "[core][tensor]") {
  Tensor<float> t(Shape{4, 2, 3});
  for (std::size_t i = 0; i < t.size(); ++i) t[i] = static_cast<float>(i);
  auto m = t.as_matrix();
  CHECK(m.rows() == 4);
  CHECK(m.cols() == 6);
  CHECK(m(2, 5) == 17.0f);
  CHECK(m.data() == t.data());  // zero-copy

  auto rows = t.batch(1, 3);
  CHECK(rows.shape() == Shape{2, 2, 3});
  CHECK(rows.data() == t.data() + 6);
  CHECK(rows.as_matrix()(0, 0) == 6.0f);
  CHECK(t.batch(4, 4).size() == 0);

  expect_errc(errc::out_of_range, [&] { (void)t.batch(3, 5); });
  expect_errc(errc::out_of_range, [&] { (void)t.batch(3, 2); });
  CHECK(t.view().reshaped(Shape{24}).size() == 24);
  expect_errc(errc::shape_mismatch, [&] { (void)t.view().reshaped(Shape{5, 5}); });

  Tensor<float> dst(Shape{4, 6});
  expect_errc(errc::shape_mismatch, [&] { copy(t.cview(), dst.view()); });
  copy(t.cview(), dst.view().reshaped(t.shape()));
  CHECK(dst[23] == 23.0f);
}

namespace {

// Inputs spanning the interesting ranges of every activation: zeros, tiny, moderate, saturating.
template <class T>
std::vector<T> kernel_inputs(std::size_t n, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<T> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    switch (i % 4) {
      case 0: v[i] = static_cast<T>(rng.uniform(-4, 4)); break;
      case 1: v[i] = static_cast<T>(rng.uniform(-30, 30)); break;
      case 2: v[i] = static_cast<T>(rng.uniform(-1e-3, 1e-3)); break;
      default: v[i] = i % 8 == 3 ? T(0) : static_cast<T>(rng.normal()); break;
    }
  }
  return v;
}

// The SIMD body computes exp/tanh/erf with xsimd's polynomial approximations, the scalar
// reference with the C library; both are accurate to a few ulp, and the activations compose at
// most three such steps (each error at most `u` relative, doubled once by 1 - t or 1 + erf
// cancellation bounded by the |x| term). So the two paths may differ by
// 16 u (|y| + |x|), u the unit roundoff, plus the smallest normal for denormal outputs.
// xsimd 8.1's double-precision erf is the exception: its absolute error reaches 68 u near
// |z| = 2.2 (measured on 4M points against long double erfl), and GELU multiplies it by 0.5 |x|,
// so GELU<double> gets 0.5 * 70 u more on its |x| term.
template <class T>
double kernel_tolerance(T x, T y, double extra_x_ulps = 0) {
  const double u = std::numeric_limits<T>::epsilon() / 2;
  return 16 * u * std::abs(double(y)) + (16 + extra_x_ulps) * u * std::abs(double(x)) +
         std::numeric_limits<T>::min();
}

template <class T, class F>
void check_map_against_scalar(F f, bool exact, double extra_x_ulps = 0) {
  for (std::size_t n : {0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 66, 67, 10007}) {
    const auto x = kernel_inputs<T>(n, 1000 + n);
    const auto g = kernel_inputs<T>(n, 2000 + n);
    std::vector<T> ys(n), yr(n), gs(n), gr(n);
    kernels::map(x.data(), ys.data(), n, [&](auto v) { return f(v); });
    kernels::map_scalar(x.data(), yr.data(), n, [&](auto v) { return f(v); });
    kernels::map3(x.data(), yr.data(), g.data(), gs.data(), n, [&](auto a, auto b, auto c) { return f.grad(a, b, c); });
    kernels::map3_scalar(x.data(), yr.data(), g.data(), gr.data(), n,
                         [&](auto a, auto b, auto c) { return f.grad(a, b, c); });
    for (std::size_t i = 0; i < n; ++i) {
      INFO(F::name << " n=" << n << " i=" << i << " x=" << x[i]);
      if (exact) {
        CHECK(ys[i] == yr[i]);
        CHECK(gs[i] == gr[i]);
      } else {
        CHECK(std::abs(double(ys[i]) - double(yr[i])) <= kernel_tolerance(x[i], yr[i], extra_x_ulps));
        // gradients: the same composition scaled by g
        CHECK(std::abs(double(gs[i]) - double(gr[i])) <=
              kernel_tolerance(x[i], gr[i], extra_x_ulps) * (1 + std::abs(double(g[i]))) * 2);
      }
    }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("SIMD element-wise kernels equal their scalar references", "[core][simd]", float, double) {
  INFO("xsimd arch: " << kernels::simd_arch_name());
  check_map_against_scalar<TestType>(act::Identity{}, true);
  check_map_against_scalar<TestType>(act::ReLU{}, true);
  check_map_against_scalar<TestType>(act::LeakyReLU{0.1}, true);
  check_map_against_scalar<TestType>(act::Sigmoid{}, false);
  check_map_against_scalar<TestType>(act::Tanh{}, false);
  check_map_against_scalar<TestType>(act::GELU{}, false, std::is_same_v<TestType, double> ? 35 : 0);
  check_map_against_scalar<TestType>(act::GELUTanh{}, false);
  // Erf<double> alone: the 68 u absolute error sits near |x| = 2.2, so 35 u per unit of |x|
  // covers it there (77 u).
  check_map_against_scalar<TestType>(act::Erf{}, false, std::is_same_v<TestType, double> ? 35 : 0);
}

TEMPLATE_TEST_CASE("SIMD reductions and softmax equal their scalar references", "[core][simd]", float, double) {
  const double u = std::numeric_limits<TestType>::epsilon() / 2;
  for (std::size_t n : {0, 1, 3, 7, 8, 9, 16, 17, 33, 64, 67, 4099}) {
    auto x = kernel_inputs<TestType>(n, 7 + n);
    INFO("n=" << n);
    CHECK(kernels::max(x.data(), n) == kernels::max_scalar(x.data(), n));
    // Summation in another order: both within gamma_n * sum|x| of the exact sum (Higham 4.3),
    // so within 2 gamma_n * sum|x| of each other.
    double abs_sum = 0;
    for (auto v : x) abs_sum += std::abs(double(v));
    const double gamma = n * u / (1 - n * u);
    CHECK(std::abs(double(kernels::sum(x.data(), n)) - double(kernels::sum_scalar(x.data(), n))) <=
          2 * gamma * abs_sum);
  }
  for (std::size_t cols : {1, 2, 7, 8, 10, 17, 64, 67}) {
    const std::size_t rows = 3;
    auto x = kernel_inputs<TestType>(rows * cols, 99 + cols);
    std::vector<TestType> ys(rows * cols), yr(rows * cols);
    kernels::softmax_rows(x.data(), ys.data(), rows, cols);
    kernels::softmax_rows_scalar(x.data(), yr.data(), rows, cols);
    // each probability is exp(.) / sum: a few ulp from exp, gamma_cols from the sum.
    const double bound = (16 + 2.0 * cols) * u;
    for (std::size_t i = 0; i < rows * cols; ++i) {
      INFO("cols=" << cols << " i=" << i);
      CHECK(std::abs(double(ys[i]) - double(yr[i])) <= bound * double(yr[i]) + std::numeric_limits<TestType>::min());
    }
  }
}

TEST_CASE("word_checksum: SIMD equals the scalar reference, and any changed or swapped word changes it", "[core][simd]") {
  Rng rng(11);
  std::vector<std::uint32_t> words(1000);
  for (auto& w : words) w = static_cast<std::uint32_t>(rng.next());
  for (std::size_t n : {0, 1, 3, 15, 16, 17, 31, 32, 33, 100, 255, 1000}) {
    INFO("words " << n);
    CHECK(kernels::word_checksum(words.data(), n) == kernels::word_checksum_scalar(words.data(), n));
  }
  CHECK(kernels::word_checksum(words.data(), 0) != kernels::word_checksum(words.data(), 1));  // the count is folded in
  // From an unaligned start (floats of a tensor view may start anywhere).
  CHECK(kernels::word_checksum(words.data() + 1, 999) == kernels::word_checksum_scalar(words.data() + 1, 999));
  const std::uint64_t base = kernels::word_checksum(words.data(), words.size());
  std::size_t unchanged = 0;
  for (std::size_t i = 0; i < words.size(); ++i)
    for (std::uint32_t delta : {1u, 0x80000000u, 0x00800000u}) {  // lowest bit, sign, an exponent bit
      words[i] ^= delta;
      unchanged += kernels::word_checksum(words.data(), words.size()) == base;
      words[i] ^= delta;
    }
  CHECK(unchanged == 0);
  // Sign bits flipped in pairs (negated weights): a linear sum would miss every one of these.
  for (std::size_t i : {0, 1, 16, 500})
    for (std::size_t j : {std::size_t{2}, std::size_t{16}, std::size_t{32}, std::size_t{499}}) {
      words[i] ^= 0x80000000u;
      words[i + j] ^= 0x80000000u;
      CHECK(kernels::word_checksum(words.data(), words.size()) != base);
      words[i] ^= 0x80000000u;
      words[i + j] ^= 0x80000000u;
    }
  for (auto& w : words) w ^= 0x80000000u;  // every sign
  CHECK(kernels::word_checksum(words.data(), words.size()) != base);
  for (auto& w : words) w ^= 0x80000000u;
  REQUIRE(kernels::word_checksum(words.data(), words.size()) == base);
  // Words that trade places within a lane (16 apart) keep the first sum; the second sees them.
  for (std::size_t i : {0, 17, 500, 983}) {
    if (words[i] == words[i + 16]) continue;
    std::swap(words[i], words[i + 16]);
    CHECK(kernels::word_checksum(words.data(), words.size()) != base);
    CHECK(kernels::word_checksum(words.data(), words.size()) == kernels::word_checksum_scalar(words.data(), words.size()));
    std::swap(words[i], words[i + 16]);
  }
}

#if defined(__linux__)
TEST_CASE("name_this_thread keeps the first 15 characters of a long name", "[core]") {
  std::string seen;
  int rc = -1;
  std::thread t([&] {  // asserts stay on the test's thread
    edgesplit::name_this_thread("es-a-name-longer-than-fifteen");
    char buf[32] = {};
    rc = pthread_getname_np(pthread_self(), buf, sizeof buf);
    seen = buf;
  });
  t.join();
  REQUIRE(rc == 0);
  CHECK(seen == "es-a-name-longe");
}
#endif

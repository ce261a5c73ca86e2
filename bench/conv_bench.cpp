// bench/conv_bench.cpp - Conv2D forward (batch 1, single thread) beside its baselines in the same
// process: the FMA peak of the core, the im2col + GEMM path Conv2D used before it had direct
// kernels, the scalar reference kernels, and raw Eigen for 1x1 convolutions.
//
// Every benchmark is "paired": its variants run in alternating blocks of calls (each block ~2 ms
// and at least 3 calls, its first call dropped as a warm-up, the variant that starts rotating),
// every call timed on its own: by the wall clock, or by the thread's CPU time when calls last
// over 0.5 ms (a loaded machine preempts most such calls, and then even their median is not their
// own time; counter cpu_timed = 1). The counters are the median per-call times (us_<variant>),
// the GFLOP/s they give (GFLOPs_<variant>, from Layer::flops: 2 K + 1 per output with a bias,
// K = in / groups * kernel_h * kernel_w) and ratios of the medians. Slow phases of a shared
// machine hit all variants alike, so the ratios hold where absolute times do not.
//
//   Conv3x3/c:../hw:..           3x3, stride 1, "same" padding, c -> c channels (ResNet-18's layers)
//       peak        a tight loop of independent FMAs on xsimd batches doing the same FLOP count:
//                   the time the convolution would take at the core's peak
//       edgesplit   Conv2D<float>::forward (conv2d_stride1 where conv2d_stride1_suits says so,
//                   else im2col + GEMM)
//       im2col      im2col into a kept buffer, then GemmWorkspace::ab_accumulate (Eigen's GEMM
//                   kernel with kept packing buffers): the former Conv2D forward, written out
//       stride1     kernels::conv2d_stride1 called directly, whatever the plane
//       ratios      es_of_peak (GFLOP/s over the peak's), im2col_of_peak, stride1_of_peak,
//                   speedup (im2col / edgesplit)
//   Depthwise/c:../hw:../s:..    3x3 depthwise, padding 1, stride s (MobileNetV2's layers)
//       peak, edgesplit (Conv2D::forward: depthwise_conv2d), scalar (depthwise_conv2d_scalar),
//       generic (im2col + one GEMM per channel: the former grouped path, written out)
//       ratios      es_of_peak, speedup (generic / edgesplit), over_scalar (scalar / edgesplit);
//                   GBps_edgesplit: bytes of input and output over the edgesplit time
//   Pointwise/in:../out:../hw:.. 1x1 convolution with a bias
//       peak, edgesplit (Conv2D::forward: the input planes are the GEMM's right-hand side),
//       eigen (Y = W X, Y.colwise() += b on Eigen maps of the same buffers)
//       ratios      es_of_peak, es_over_eigen (edgesplit time / Eigen time)
//
// docs/performance.md ("Convolution") has the command line and the figures.
#include <benchmark/benchmark.h>

#include "paired.hpp"

#include <time.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include <Eigen/Core>
#include <xsimd/xsimd.hpp>

#include "edgesplit/core/conv_kernels.hpp"
#include "edgesplit/core/gemm.hpp"
#include "edgesplit/core/im2col.hpp"
#include "edgesplit/nn/conv2d.hpp"

namespace {

using edgesplit::Conv2D;
using edgesplit::Conv2DOptions;
using edgesplit::Rng;
using edgesplit::Shape;
using edgesplit::Tensor;
using Index = Eigen::Index;

void fill_uniform(std::span<float> s, Rng& rng) {
  for (float& v : s) v = static_cast<float>(rng.uniform(-1.0, 1.0));
}

Index idx(std::size_t n) { return static_cast<Index>(n); }

// ---------------------------------------------------------------------------------------------
// The FMA peak: acc = acc * a + b on 12 independent batches (more than latency x throughput on
// any x86 or ARM core in use), 2 FLOP per lane and FMA.

constexpr std::size_t peak_chains = 12;
constexpr double peak_flops_per_iteration = 2.0 * peak_chains * xsimd::batch<float>::size;

[[gnu::noinline]] float fma_loop(std::size_t iterations, float a, float b) {
  using B = xsimd::batch<float>;
  B acc[peak_chains];
  for (std::size_t k = 0; k < peak_chains; ++k) acc[k] = B(static_cast<float>(k) * 1e-3f);
  const B av(a), bv(b);
  for (std::size_t n = 0; n < iterations; ++n)
    for (std::size_t k = 0; k < peak_chains; ++k) acc[k] = xsimd::fma(acc[k], av, bv);
  B s = acc[0];
  for (std::size_t k = 1; k < peak_chains; ++k) s += acc[k];
  return xsimd::hadd(s);
}

// A callable that does `flops` FLOP of FMAs at the core's best rate.
std::function<void()> peak_variant(double flops) {
  const auto iterations = static_cast<std::size_t>(flops / peak_flops_per_iteration) + 1;
  return [iterations] {
    float r = fma_loop(iterations, 0.999f, 1e-3f);
    benchmark::DoNotOptimize(r);
  };
}

// ---------------------------------------------------------------------------------------------
// The paired driver: bench/paired.hpp.

using edgesplit_bench::median;
using edgesplit_bench::run_paired;
using edgesplit_bench::Variant;

// ---------------------------------------------------------------------------------------------
// Cases.

// One Conv2D on a batch-1 input, with its input, output and He-uniform weights and a bias.
struct Layer {
  Conv2D<float> conv;
  Tensor<float> x, y;
  Layer(std::size_t in, std::size_t out, std::size_t k, const Conv2DOptions& o, std::size_t hw, std::uint64_t seed)
      : conv(make(in, out, k, o, seed)), x(Shape{1, in, hw, hw}), y(conv.output_shape(x.shape())) {
    Rng rng(seed + 1);
    fill_uniform(x.span(), rng);
    fill_uniform(conv.bias().span(), rng);
  }
  double flops() const { return static_cast<double>(conv.flops(x.shape())); }
  void forward() { conv.forward(x, y); }

 private:
  static Conv2D<float> make(std::size_t in, std::size_t out, std::size_t k, const Conv2DOptions& o,
                            std::uint64_t seed) {
    Rng rng(seed);
    return Conv2D<float>(in, out, k, k, o, rng);
  }
};

// The former forward pass of Conv2D for one sample: per group, bias into Y, im2col of the group's
// planes, then Y += W_g cols through a kept GemmWorkspace.
struct Im2colGemm {
  Tensor<float> cols, y;
  edgesplit::GemmWorkspace<float> gemm;
  void run(const Conv2D<float>& conv, const Tensor<float>& x) {
    const auto& w = conv.window();
    const std::size_t C = x.shape()[1], H = x.shape()[2], W = x.shape()[3];
    const std::size_t G = conv.groups(), Cg = C / G, Og = conv.out_channels() / G;
    const std::size_t P = w.out_h(H) * w.out_w(W), K = Cg * w.kernel_h * w.kernel_w;
    cols.resize(Shape{K, P});
    y.resize(Shape{conv.out_channels(), P});
    for (std::size_t g = 0; g < G; ++g) {
      float* yg = y.data() + g * Og * P;
      for (std::size_t o = 0; o < Og; ++o) std::fill_n(yg + o * P, P, conv.bias()[g * Og + o]);
      edgesplit::im2col(x.data() + g * Cg * H * W, Cg, H, W, w, cols.data());
      gemm.ab_accumulate(conv.weight().data() + g * Og * K, cols.data(), yg, idx(Og), idx(P), idx(K));
    }
  }
};

void conv3x3(benchmark::State& state, std::size_t c, std::size_t hw) {
  Conv2DOptions o;
  o.padding = edgesplit::same_padding(3, 3);
  auto l = std::make_shared<Layer>(c, c, 3, o, hw, 0xc0417);
  auto ref = std::make_shared<Im2colGemm>();
  const double flops = l->flops();
  auto direct_out = std::make_shared<Tensor<float>>(l->y.shape());
  auto scratch = std::make_shared<std::vector<float>>(
      edgesplit::kernels::conv2d_stride1_scratch<float>(c, hw, hw, l->conv.window(), c));
  std::vector<Variant> v = {{"peak", peak_variant(flops)},
                            {"edgesplit", [l] { l->forward(); }},
                            {"im2col", [l, ref] { ref->run(l->conv, l->x); }},
                            {"stride1", [l, c, hw, direct_out, scratch] {
                               edgesplit::kernels::conv2d_stride1(l->x.data(), c, hw, hw, l->conv.window(),
                                                                  l->conv.weight().data(), c, l->conv.bias().data(),
                                                                  direct_out->data(), scratch->data());
                             }}};
  const auto med = run_paired(state, v, flops);
  state.counters["es_of_peak"] = med[0] / med[1];
  state.counters["im2col_of_peak"] = med[0] / med[2];
  state.counters["stride1_of_peak"] = med[0] / med[3];
  state.counters["speedup"] = med[2] / med[1];
}

void depthwise(benchmark::State& state, std::size_t c, std::size_t hw, std::size_t stride) {
  Conv2DOptions o;
  o.padding = {1, 1, 1, 1};
  o.stride_h = o.stride_w = stride;
  o.groups = c;
  auto l = std::make_shared<Layer>(c, c, 3, o, hw, 0xd3e9);
  auto ref = std::make_shared<Im2colGemm>();
  auto scalar_out = std::make_shared<Tensor<float>>(l->y.shape());
  const double flops = l->flops();
  std::vector<Variant> v = {
      {"peak", peak_variant(flops)},
      {"edgesplit", [l] { l->forward(); }},
      {"generic", [l, ref] { ref->run(l->conv, l->x); }},
      {"scalar", [l, scalar_out, c, hw] {
         edgesplit::kernels::depthwise_conv2d_scalar(l->x.data(), c, hw, hw, l->conv.window(), 1,
                                                     l->conv.weight().data(), l->conv.bias().data(),
                                                     scalar_out->data());
       }}};
  const auto med = run_paired(state, v, flops);
  state.counters["es_of_peak"] = med[0] / med[1];
  state.counters["speedup"] = med[2] / med[1];
  state.counters["over_scalar"] = med[3] / med[1];
  // Depthwise layers do 9 FMAs per output: memory, not the FMA units, bounds them.
  const double bytes = static_cast<double>((l->x.size() + l->y.size()) * sizeof(float));
  state.counters["GBps_edgesplit"] = bytes / med[1] * 1e-3;
}

void pointwise(benchmark::State& state, std::size_t in, std::size_t out, std::size_t hw) {
  auto l = std::make_shared<Layer>(in, out, 1, Conv2DOptions{}, hw, 0x9017);
  const double flops = l->flops();
  std::vector<Variant> v = {{"peak", peak_variant(flops)},
                            {"edgesplit", [l] { l->forward(); }},
                            {"eigen", [l, in, out, hw] {
                               using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
                               const Index P = idx(hw * hw);
                               Eigen::Map<const RowMat> W(l->conv.weight().data(), idx(out), idx(in));
                               Eigen::Map<const RowMat> X(l->x.data(), idx(in), P);
                               Eigen::Map<RowMat> Y(l->y.data(), idx(out), P);
                               Eigen::Map<const Eigen::VectorXf> b(l->conv.bias().data(), idx(out));
                               Y.noalias() = W * X;
                               Y.colwise() += b;
                             }}};
  const auto med = run_paired(state, v, flops);
  state.counters["es_of_peak"] = med[0] / med[1];
  state.counters["es_over_eigen"] = med[1] / med[2];
}

void add(const std::string& name, std::function<void(benchmark::State&)> f) {
  benchmark::RegisterBenchmark(name.c_str(), [f](benchmark::State& s) { f(s); })
      ->Unit(benchmark::kMillisecond)
      ->MinTime(1.0);
}

void register_all() {
  // (Clang 14 cannot capture structured bindings: hence the plain array indexing.)
  for (const auto& ch : {std::array<std::size_t, 2>{64, 56}, {128, 28}, {256, 14}, {512, 7}}) {
    const std::size_t c = ch[0], hw = ch[1];
    add("Conv3x3/c:" + std::to_string(c) + "/hw:" + std::to_string(hw),
        [c, hw](benchmark::State& s) { conv3x3(s, c, hw); });
  }
  // MobileNetV2's depthwise layers (channels, input plane, stride)
  for (const auto& d : {std::array<std::size_t, 3>{32, 112, 1}, {96, 112, 2}, {96, 56, 1}, {144, 56, 2},
                        {576, 14, 1}, {960, 7, 1}}) {
    const std::size_t c = d[0], hw = d[1], s = d[2];
    add("Depthwise/c:" + std::to_string(c) + "/hw:" + std::to_string(hw) + "/s:" + std::to_string(s),
        [c, hw, s](benchmark::State& st) { depthwise(st, c, hw, s); });
  }
  for (const auto& p : {std::array<std::size_t, 3>{24, 144, 56}, {144, 24, 56}, {96, 576, 14}, {64, 256, 56}}) {
    const std::size_t in = p[0], out = p[1], hw = p[2];
    add("Pointwise/in:" + std::to_string(in) + "/out:" + std::to_string(out) + "/hw:" + std::to_string(hw),
        [in, out, hw](benchmark::State& s) { pointwise(s, in, out, hw); });
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

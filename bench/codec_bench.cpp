// bench/codec_bench.cpp - quantization, the feature codec and int8 GEMV, beside their baselines in
// the same process.
//
//   Quant/<op>/bytes:<float bytes>   op = memcpy | quantize | quantize_scalar | dequantize |
//                                    dequantize_scalar, on 64 KiB, 1 MiB and 64 MiB of floats
//       bytes_per_second counts the bytes each op moves: memcpy reads and writes 4n bytes (8n),
//       quantize reads 4n and writes n (5n), dequantize reads n and writes 4n (5n). The goal
//       (issue 4): quantize/dequantize >= 80% of memcpy's rate on large tensors.
//   Codec/<encode|decode>/bits:../zstd:..   one 16K-element feature {1, 16384}, per frame
//   Gemv/<float|int8>/n:4096               Dense<float> vs QuantizedDense, 4096 x 4096, batch 1
//
// docs/quantization.md ("Speed") has the command line and the figures.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "edgesplit/edgesplit.hpp"

namespace {

using namespace edgesplit;

Tensor<float> uniform(const Shape& s, std::uint64_t seed, double lo = -1, double hi = 1) {
  Rng rng(seed);
  Tensor<float> t(s);
  for (float& v : t.span()) v = static_cast<float>(rng.uniform(lo, hi));
  return t;
}

std::size_t floats_of(const benchmark::State& st) { return static_cast<std::size_t>(st.range(0)) / 4; }

void BM_memcpy(benchmark::State& st) {
  const std::size_t n = floats_of(st);
  const Tensor<float> x = uniform(Shape{n}, 1);
  Tensor<float> y(Shape{n});
  for (auto _ : st) {
    std::memcpy(y.data(), x.data(), n * 4);
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) * static_cast<std::int64_t>(8 * n));
}

template <bool Scalar>
void BM_quantize(benchmark::State& st) {
  const std::size_t n = floats_of(st);
  const Tensor<float> x = uniform(Shape{n}, 2);
  Tensor<std::int8_t> q(Shape{n});
  const QuantParams p = QuantParams::tensor(2.0f / 255, 0);
  for (auto _ : st) {
    if constexpr (Scalar)
      quantize_scalar(x, p, q.view());
    else
      quantize(x, p, q.view());
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) * static_cast<std::int64_t>(5 * n));
}

template <bool Scalar>
void BM_dequantize(benchmark::State& st) {
  const std::size_t n = floats_of(st);
  Tensor<std::int8_t> q(Shape{n});
  for (std::size_t i = 0; i < n; ++i) q[i] = static_cast<std::int8_t>(i * 37);
  Tensor<float> y(Shape{n});
  const QuantParams p = QuantParams::tensor(2.0f / 255, 3);
  for (auto _ : st) {
    if constexpr (Scalar)
      dequantize_scalar(q, p, y.view());
    else
      dequantize(q, p, y.view());
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) * static_cast<std::int64_t>(5 * n));
}

CodecConfig codec_config(const benchmark::State& st) {
  CodecConfig c;
  c.bits = static_cast<int>(st.range(0));
  c.lossless = st.range(1) ? wire::Lossless::zstd : wire::Lossless::none;
  return c;
}

void BM_encode(benchmark::State& st) {
  if (st.range(1) && !wire::has_zstd) return st.SkipWithError("built without zstd");
  FeatureCodec codec(codec_config(st));
  const Tensor<float> x = uniform(Shape{1, 16384}, 3, 0, 4);
  std::vector<std::byte> frame;
  for (auto _ : st) benchmark::DoNotOptimize(codec.encode(x, frame).data());
  st.counters["frame_bytes"] = static_cast<double>(frame.size());
  st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations()));
}

void BM_decode(benchmark::State& st) {
  if (st.range(1) && !wire::has_zstd) return st.SkipWithError("built without zstd");
  FeatureCodec codec(codec_config(st));
  const Tensor<float> x = uniform(Shape{1, 16384}, 3, 0, 4);
  std::vector<std::byte> frame;
  codec.encode(x, frame);
  Tensor<float> out;
  for (auto _ : st) {
    codec.decode(frame, out);
    benchmark::DoNotOptimize(out.data());
  }
  st.SetItemsProcessed(static_cast<std::int64_t>(st.iterations()));
}

// Both layers stream their weights from DRAM (64 MiB float, 16 MiB int8: past the L3 here).
void BM_gemv(benchmark::State& st, bool int8) {
  const auto n = static_cast<std::size_t>(st.range(0));
  Rng rng(4);
  Dense<float> dense(n, n, rng);
  const Tensor<float> x = uniform(Shape{1, n}, 5);
  Tensor<float> y(Shape{1, n});
  if (int8) {
    Quantizer qx(QuantConfig{});
    QuantizedDense q(dense, qx.calibrate(x));
    for (auto _ : st) {
      q.forward(x, y.view());
      benchmark::ClobberMemory();
    }
  } else {
    for (auto _ : st) {
      dense.forward(x, y.view());
      benchmark::ClobberMemory();
    }
  }
  st.counters["weight_GB/s"] = benchmark::Counter(static_cast<double>(n * n * (int8 ? 1 : 4)),
                                                  benchmark::Counter::kIsIterationInvariantRate);
}

void sizes(benchmark::internal::Benchmark* b) {
  b->ArgName("bytes");
  for (std::int64_t s : {std::int64_t{64} << 10, std::int64_t{1} << 20, std::int64_t{64} << 20}) b->Arg(s);
}

BENCHMARK(BM_memcpy)->Name("Quant/memcpy")->Apply(sizes);
BENCHMARK(BM_quantize<false>)->Name("Quant/quantize")->Apply(sizes);
BENCHMARK(BM_quantize<true>)->Name("Quant/quantize_scalar")->Apply(sizes);
BENCHMARK(BM_dequantize<false>)->Name("Quant/dequantize")->Apply(sizes);
BENCHMARK(BM_dequantize<true>)->Name("Quant/dequantize_scalar")->Apply(sizes);
BENCHMARK(BM_encode)->Name("Codec/encode")->ArgNames({"bits", "zstd"})->ArgsProduct({{32, 8, 4, 2}, {0, 1}})->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_decode)->Name("Codec/decode")->ArgNames({"bits", "zstd"})->ArgsProduct({{32, 8, 4, 2}, {0, 1}})->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_gemv, float, false)->Name("Gemv/float")->ArgName("n")->Arg(4096)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_gemv, int8, true)->Name("Gemv/int8")->ArgName("n")->Arg(4096)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();

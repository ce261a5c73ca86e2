// bench/dense_bench.cpp - Dense and a small MLP through edgesplit, beside raw Eigen doing the same
// products on the same shapes in the same process.
//
// Five variants of every case:
//   edgesplit     Dense<float>::forward / Sequential<float>::forward, the public API as it comes
//                 (WeightPacking::automatic: packed on the first batched call, then a checksum
//                 of the weights checked on every call)
//   es_packed     the same after pack_weights() (WeightPacking::fixed: packed once, unchecked,
//                 as a CloudServer worker's copy of a tail is; batch 1 is the same GEMV)
//   es_unpacked   the same with WeightPacking::off (Eigen packs the weights on every call)
//   eigen_rowmaj  raw Eigen the way edgesplit does it: row-major {out, in} weights, batch-major X,
//                 Y = X W^T then Y.rowwise() += b; batch 1 as a row-major GEMV y = W x + b.
//                 It maps edgesplit's own weight and input buffers (same data, same alignment).
//   eigen_colmaj  raw Eigen "the naive way" (as MiniDNN does it): column-major {out, in} weights
//                 (its own copy), feature-major X (one sample per column), Y = W X then
//                 Y.colwise() += b; batch 1 is then a column-major GEMV.
//
// Benchmarks:
//   Dense/<variant>/in:../out:../batch:..  and  MLP/<variant>/batch:..
//       one variant each; counters items_per_second (= samples/s) and FLOP/s (the FLOP count of
//       Layer::flops / Sequential::flops, 2 in out + out per sample and Dense layer, for all variants)
//   Dense/paired/...  and  MLP/paired/...
//       the five variants in alternating blocks of calls (each block ~2 ms and at least 3 calls,
//       its first call dropped as a warm-up; the variant that starts rotates), every call timed on
//       its own with a wall clock; counters are the median per-call times (us_*) and the ratios
//       edgesplit / raw Eigen of the medians (es_over_rowmaj, es_over_colmaj, and packed_over_rowmaj,
//       packed_over_colmaj for es_packed; es_over_unpacked and packed_over_unpacked, the price or
//       gain of packing against es_unpacked). These ratios are
//       the figures to quote on a shared, noisy machine: slow phases hit all variants alike, and
//       the median drops preempted calls (while fewer than half of them are; on a busy machine,
//       calls of several ms mostly are, and their absolute times mean little).
//
// docs/performance.md has the command line and the figures.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "edgesplit/edgesplit.hpp"

namespace {

using edgesplit::Dense;
using edgesplit::Rng;
using edgesplit::Sequential;
using edgesplit::Shape;
using edgesplit::Tensor;
using Index = Eigen::Index;
using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ColMat = Eigen::MatrixXf;
using Vec = Eigen::VectorXf;

constexpr std::uint64_t seed = 0xbe7c4;

void fill_uniform(std::span<float> s, Rng& rng) {
  for (float& v : s) v = static_cast<float>(rng.uniform(-1.0, 1.0));
}

Index idx(std::size_t n) { return static_cast<Index>(n); }

// One Dense layer of raw Eigen, over the weights of an edgesplit layer.
class RawDense {
 public:
  explicit RawDense(const Dense<float>& d)
      : w_row_(d.weight().data(), idx(d.out_features()), idx(d.in_features())),
        w_col_(w_row_),
        b_(d.bias().data(), idx(d.out_features())) {}

  std::size_t in() const { return static_cast<std::size_t>(w_row_.cols()); }
  std::size_t out() const { return static_cast<std::size_t>(w_row_.rows()); }

  // Y (batch x out, row-major) = X (batch x in, row-major) W^T + b.
  void rowmajor(const float* x, float* y, std::size_t batch) const {
    if (batch == 1) {
      Eigen::Map<const Vec> xv(x, w_row_.cols());
      Eigen::Map<Vec> yv(y, w_row_.rows());
      yv.noalias() = w_row_ * xv;
      yv += b_;
    } else {
      Eigen::Map<const RowMat> X(x, idx(batch), w_row_.cols());
      Eigen::Map<RowMat> Y(y, idx(batch), w_row_.rows());
      Y.noalias() = X * w_row_.transpose();
      Y.rowwise() += b_.transpose();
    }
  }
  // Y (out x batch, column-major) = W X (in x batch, column-major) + b. The memory of a
  // column-major in x batch matrix is that of a row-major batch x in one: same buffers as above.
  void colmajor(const float* x, float* y, std::size_t batch) const {
    Eigen::Map<const ColMat> X(x, w_col_.cols(), idx(batch));
    Eigen::Map<ColMat> Y(y, w_col_.rows(), idx(batch));
    Y.noalias() = w_col_ * X;
    Y.colwise() += b_;
  }

 private:
  Eigen::Map<const RowMat> w_row_;  // edgesplit's weights
  ColMat w_col_;                    // a column-major copy
  Eigen::Map<const Vec> b_;
};

// ---------------------------------------------------------------------------------------------
// The cases. Each holds its inputs, an edgesplit model, and the raw-Eigen equivalents; run(v)
// computes one forward pass with variant v.

enum Variant : int { edgesplit_v = 0, rowmaj_v = 1, colmaj_v = 2, packed_v = 3, unpacked_v = 4 };
constexpr int variants = 5;
constexpr std::array<const char*, variants> variant_names = {"edgesplit", "eigen_rowmaj", "eigen_colmaj", "es_packed",
                                                             "es_unpacked"};

class DenseCase {
 public:
  DenseCase(const DenseCase&) = delete;  // raw_ maps layer_'s buffers
  DenseCase& operator=(const DenseCase&) = delete;
  DenseCase(std::size_t in, std::size_t out, std::size_t batch)
      : batch_(batch), layer_(in, out, rng_), x_(Shape{batch, in}), y_(Shape{batch, out}), raw_(layer_) {
    fill_uniform(layer_.bias().span(), rng_);
    fill_uniform(x_.span(), rng_);
    packed_ = std::make_unique<Dense<float>>(layer_);
    packed_->pack_weights();
    unpacked_ = std::make_unique<Dense<float>>(layer_);
    unpacked_->set_weight_packing(edgesplit::WeightPacking::off);
  }
  std::size_t batch() const { return batch_; }
  std::uint64_t flops() const { return layer_.flops(x_.shape()); }
  void run(int v) {
    switch (v) {
      case edgesplit_v: layer_.forward(x_.cview(), y_.view()); break;
      case packed_v: packed_->forward(x_.cview(), y_.view()); break;
      case unpacked_v: unpacked_->forward(x_.cview(), y_.view()); break;
      case rowmaj_v: raw_.rowmajor(x_.data(), y_.data(), batch_); break;
      default: raw_.colmajor(x_.data(), y_.data(), batch_); break;
    }
    benchmark::DoNotOptimize(y_.data());
    benchmark::ClobberMemory();
  }

 private:
  Rng rng_{seed};
  std::size_t batch_;
  Dense<float> layer_;
  std::unique_ptr<Dense<float>> packed_;  // a copy of layer_ with packed weights
  std::unique_ptr<Dense<float>> unpacked_;  // a copy of layer_ that never packs
  Tensor<float> x_, y_;
  RawDense raw_;
};

// 784-512-256-10 with ReLU between the Dense layers.
class MlpCase {
 public:
  static constexpr std::array<std::size_t, 4> widths = {784, 512, 256, 10};

  MlpCase(const MlpCase&) = delete;  // raw_ maps model_'s buffers
  MlpCase& operator=(const MlpCase&) = delete;
  explicit MlpCase(std::size_t batch) : batch_(batch), x_(Shape{batch, widths[0]}) {
    Rng rng(seed);
    for (std::size_t i = 0; i + 1 < widths.size(); ++i) {
      auto& d = model_.add<Dense<float>>(widths[i], widths[i + 1], rng);
      fill_uniform(d.bias().span(), rng);
      raw_.emplace_back(d);
      acts_.emplace_back(Shape{batch, widths[i + 1]});
      if (i + 2 < widths.size()) model_.add<edgesplit::ReLU<float>>();
    }
    fill_uniform(x_.span(), rng);
    packed_ = model_;
    packed_.pack_weights();
    unpacked_ = model_;
    unpacked_.set_weight_packing(edgesplit::WeightPacking::off);
  }
  std::size_t batch() const { return batch_; }
  std::uint64_t flops() const { return model_.flops(x_.shape()); }
  void run(int v) {
    const float* out = nullptr;
    if (v == edgesplit_v) {
      out = model_.forward(x_.cview()).data();
    } else if (v == packed_v) {
      out = packed_.forward(x_.cview()).data();
    } else if (v == unpacked_v) {
      out = unpacked_.forward(x_.cview()).data();
    } else {
      const float* in = x_.data();
      for (std::size_t i = 0; i < raw_.size(); ++i) {
        float* y = acts_[i].data();
        if (v == rowmaj_v)
          raw_[i].rowmajor(in, y, batch_);
        else
          raw_[i].colmajor(in, y, batch_);
        if (i + 1 < raw_.size()) {
          Eigen::Map<Eigen::ArrayXf> a(y, idx(acts_[i].size()));
          a = a.max(0.0f);
        }
        in = y;
      }
      out = in;
    }
    benchmark::DoNotOptimize(out);
    benchmark::ClobberMemory();
  }

 private:
  std::size_t batch_;
  Sequential<float> model_;
  Sequential<float> packed_;  // a copy of model_ with packed weights
  Sequential<float> unpacked_;  // a copy of model_ that never packs
  std::vector<RawDense> raw_;   // over the weights of model_'s Dense layers
  std::vector<Tensor<float>> acts_;
  Tensor<float> x_;
};

// ---------------------------------------------------------------------------------------------
// Drivers.

void set_rate_counters(benchmark::State& state, std::size_t batch, std::uint64_t flops) {
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(batch));
  state.counters["FLOP/s"] = benchmark::Counter(static_cast<double>(flops) * static_cast<double>(state.iterations()),
                                                benchmark::Counter::kIsRate);
}

template <class Case>
void run_one(benchmark::State& state, Case& c, int variant) {
  for (auto _ : state) c.run(variant);
  set_rate_counters(state, c.batch(), c.flops());
}

double median(std::vector<double>& v) {
  if (v.empty()) return 0;
  auto mid = v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2);
  std::nth_element(v.begin(), mid, v.end());
  return *mid;
}

template <class Case>
void run_paired(benchmark::State& state, Case& c) {
  using clock = std::chrono::steady_clock;
  auto time_call = [&](int v) {
    const auto t0 = clock::now();
    c.run(v);
    return std::chrono::duration<double, std::micro>(clock::now() - t0).count();
  };
  // Block length: ~2 ms of calls, from one warm call of each variant.
  double slowest = 0;
  for (int v = 0; v < variants; ++v) {
    time_call(v);
    slowest = std::max(slowest, time_call(v));
  }
  const int block = std::clamp(static_cast<int>(2000.0 / std::max(slowest, 1e-3)), 3, 200);
  std::array<std::vector<double>, variants> t;
  int first = 0;
  for (auto _ : state) {
    for (int j = 0; j < variants; ++j) {
      const int v = (first + j) % variants;
      for (int i = 0; i < block; ++i) {
        const double us = time_call(v);
        if (i > 0) t[static_cast<std::size_t>(v)].push_back(us);
      }
    }
    first = (first + 1) % variants;
  }
  std::array<double, variants> med{};
  for (std::size_t v = 0; v < variants; ++v) {
    med[v] = median(t[v]);
    state.counters[std::string("us_") + variant_names[v]] = med[v];
  }
  state.counters["es_over_rowmaj"] = med[0] / med[1];
  state.counters["es_over_colmaj"] = med[0] / med[2];
  state.counters["packed_over_rowmaj"] = med[3] / med[1];
  state.counters["packed_over_colmaj"] = med[3] / med[2];
  state.counters["es_over_unpacked"] = med[0] / med[4];
  state.counters["packed_over_unpacked"] = med[3] / med[4];
  state.counters["calls"] = static_cast<double>(t[0].size());
}

// v = 0 .. variants - 1: that variant alone; v = paired_v: all of them alternating.
constexpr int paired_v = variants;

template <class MakeCase>
void add(const std::string& name, int v, MakeCase make) {
  auto* b = benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) {
    auto c = make();
    if (v == paired_v)
      run_paired(s, c);
    else
      run_one(s, c, v);
  });
  if (v == paired_v)
    b->Unit(benchmark::kMillisecond)->MinTime(2.0);
  else
    b->Unit(benchmark::kMicrosecond);
}

void register_all() {
  constexpr std::array<std::pair<std::size_t, std::size_t>, 3> dense_shapes = {
      {{784, 512}, {1024, 1024}, {4096, 4096}}};
  constexpr std::array<std::size_t, 4> dense_batches = {1, 8, 64, 256};
  constexpr std::array<std::size_t, 3> mlp_batches = {1, 64, 256};

  for (int v = 0; v <= paired_v; ++v) {
    const std::string variant = v == paired_v ? "paired" : variant_names[static_cast<std::size_t>(v)];
    for (const auto& shape : dense_shapes)
      for (const std::size_t batch : dense_batches) {
        const std::size_t in = shape.first, out = shape.second;
        add("Dense/" + variant + "/in:" + std::to_string(in) + "/out:" + std::to_string(out) +
                "/batch:" + std::to_string(batch),
            v, [=] { return DenseCase(in, out, batch); });
      }
    for (const std::size_t batch : mlp_batches)
      add("MLP/" + variant + "/batch:" + std::to_string(batch), v, [=] { return MlpCase(batch); });
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

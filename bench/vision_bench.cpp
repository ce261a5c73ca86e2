// bench/vision_bench.cpp - whole models on one thread, for the comparison with PyTorch
// (scripts/torch_vision_bench.py measures the same models there):
//
//   ResNet18/batch:1       torchvision's resnet18 (bench/vision_models.hpp) on 1x3x224x224
//   MobileNetV2/batch:1    torchvision's mobilenet_v2, width 1.0, on 1x3x224x224
//       folded     Graph::forward of fold_batchnorm(model), inference mode: how edgesplit serves
//       unfolded   the model as built, BatchNorm2D a layer of its own (as PyTorch's eager mode runs)
//       counters   us_<variant> (median per call), GFLOPs_<variant> (Graph::flops), fold_speedup
//                  (unfolded / folded)
//   FmnistCnnTrain/batch:128   one training step of examples/fmnist_cnn.hpp's CNN as
//       train_fmnist_cnn runs it (Classifier<float>, Adam 2e-3): zero_grad, forward, softmax
//       cross-entropy, backward, Adam step, on successive batches of 128 Fashion-MNIST training
//       images (random images when the data set is absent; counter real_data says which)
//       counters   us_step, samples_per_s
//   StridedConv/in:../out:../k:../hw:..   a k x k convolution at stride 2, padding k / 2, batch 1
//       edgesplit  Conv2D::forward: kernels::conv2d_direct where conv2d_direct_suits says so
//                  (counter runs_direct), else im2col + GEMM
//       im2col     im2col + GemmWorkspace::ab_accumulate written out: what Conv2D ran for every
//                  strided layer before conv2d_direct
//       counters   us_ and GFLOPs_<variant>, speedup (im2col / edgesplit)
//   Breakdown/<model>      the folded model's nodes run one by one on their own inputs, each
//       timed over repeated calls (median), summed by kind of layer: ms_<kind> and share_<kind>
//       (of the sum of all nodes), sum_of_nodes_ms against whole_ms (Graph::forward). Where the
//       time goes, not a second latency figure: a node run again and again finds its input and
//       weights in cache, which a whole pass does not. With --nodes (this program's own flag)
//       it also prints every node's median time.
//
// Timing as in conv_bench.cpp: variants alternate in blocks of calls, every call timed on its
// own, and calls over 0.5 ms by the thread's CPU time (counter cpu_timed), so that preemption on a
// shared machine does not count; figures are medians. Before the benchmarks the program prints
// each model's parameter count and FLOPs (and whether the counts match torchvision's), and the
// CNN's layers and parameter count for the comparison with the PyTorch script's.
//
// docs/performance.md ("Whole models against PyTorch") has the command lines and the figures.
#include <benchmark/benchmark.h>

#include "paired.hpp"

#include <time.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <edgesplit/edgesplit.hpp>
#include <edgesplit/io/idx.hpp>

#include "fmnist_cnn.hpp"
#include "vision_models.hpp"

namespace {

bool print_nodes = false;  // --nodes: the breakdown also prints every node's time

using edgesplit::Conv2DOptions;
using edgesplit::Graph;
using edgesplit::Rng;
using edgesplit::Shape;
using edgesplit::Tensor;
using edgesplit::TensorView;

// ---------------------------------------------------------------------------------------------
// The paired driver: bench/paired.hpp.

using edgesplit_bench::median;
using edgesplit_bench::run_paired;
using edgesplit_bench::time_call;
using edgesplit_bench::Variant;

// ---------------------------------------------------------------------------------------------
// Models.

Tensor<float> random_image(std::size_t batch, std::uint64_t seed) {
  Tensor<float> x(Shape{batch, 3, 224, 224});
  Rng rng(seed);
  for (float& v : x.span()) v = static_cast<float>(rng.uniform(-1.0, 1.0));
  return x;
}

Graph<float> build(const std::string& model) {
  return model == "resnet18" ? edgesplit_bench::resnet18_graph(18) : edgesplit_bench::mobilenet_v2_graph(2);
}

void latency(benchmark::State& state, const std::string& model) {
  auto unfolded = std::make_shared<Graph<float>>(build(model));
  auto folded = std::make_shared<Graph<float>>(edgesplit::fold_batchnorm(*unfolded));
  auto x = std::make_shared<Tensor<float>>(random_image(1, 7));
  const double flops = static_cast<double>(folded->flops(1));
  std::vector<Variant> v = {{"folded", [folded, x] { benchmark::DoNotOptimize(folded->forward(x->cview()).data()); }},
                            {"unfolded", [unfolded, x] {
                               benchmark::DoNotOptimize(unfolded->forward(x->cview()).data());
                             }}};
  const auto med = run_paired(state, v, flops);
  state.counters["fold_speedup"] = med[1] / med[0];
}

// The kind of layer a node is, for the breakdown: convolutions by kernel, stride and groups.
std::string kind_of(const Graph<float>& g, std::size_t i) {
  const auto* layer = g.layer(i);
  if (layer == nullptr) return std::string(g.merge(i)->name());
  if (const auto* c = dynamic_cast<const edgesplit::Conv2D<float>*>(layer)) {
    const auto& w = c->window();
    const std::string size = std::to_string(w.kernel_h) + "x" + std::to_string(w.kernel_w);
    const std::string stride = "_s" + std::to_string(w.stride_h);
    if (c->groups() == c->in_channels() && c->groups() > 1) return "conv_dw" + size + stride;
    return "conv" + size + stride;
  }
  return std::string(layer->name());
}

void breakdown(benchmark::State& state, const std::string& model) {
  Graph<float> g = edgesplit::fold_batchnorm(build(model));
  const Tensor<float> x = random_image(1, 7);
  // Every tensor of one forward pass, kept: each node then runs on its real input.
  std::map<std::string, Tensor<float>> values;
  values.emplace(g.input_names()[0], x);
  std::vector<Tensor<float>> outs(g.node_count());
  std::vector<std::function<void()>> calls(g.node_count());
  std::vector<std::unique_ptr<edgesplit::Merge<float>>> merges(g.node_count());
  for (std::size_t i = 0; i < g.node_count(); ++i) {
    Tensor<float>& y = outs[i];
    y.resize(g.shape(g.node_output(i), 1));
    const auto inputs = g.node_inputs(i);
    if (auto* layer = g.layer(i)) {
      const Tensor<float>* in = &values.at(inputs[0]);
      calls[i] = [layer, in, &y] { layer->forward(in->cview(), y.view()); };
    } else {
      merges[i] = g.merge(i)->clone();
      std::vector<TensorView<const float>> args;
      for (const auto& name : inputs) args.push_back(values.at(name).cview());
      auto* m = merges[i].get();
      calls[i] = [m, args, &y] { m->forward(std::span<const TensorView<const float>>(args), y.view()); };
    }
    calls[i]();
    values.emplace(g.node_output(i), y);  // a copy: later nodes read it
  }
  std::map<std::string, double> by_kind;
  double sum = 0;
  bool first = true;
  for (auto _ : state) {
    by_kind.clear();
    sum = 0;
    for (std::size_t i = 0; i < g.node_count(); ++i) {
      std::vector<double> t;
      calls[i]();
      const bool cpu_time = time_call(calls[i], false) > 500;
      for (int r = 0; r < 9; ++r) t.push_back(time_call(calls[i], cpu_time));
      const double us = median(t);
      if (print_nodes && first)
        std::printf("%s  %-24s %-50s %9.1f us\n", model.c_str(), g.node_output(i).c_str(), g.node_describe(i).c_str(),
                    us);
      by_kind[kind_of(g, i)] += us;
      sum += us;
    }
    first = false;
  }
  for (const auto& [kind, us] : by_kind) {
    state.counters["ms_" + kind] = us * 1e-3;
    state.counters["share_" + kind] = us / sum;
  }
  state.counters["sum_of_nodes_ms"] = sum * 1e-3;
  std::vector<double> whole;
  for (int r = 0; r < 9; ++r)
    whole.push_back(time_call([&g, &x] { benchmark::DoNotOptimize(g.forward(x.cview()).data()); }, true));
  state.counters["whole_ms"] = median(whole) * 1e-3;
}

// ---------------------------------------------------------------------------------------------
// Strided convolutions: Conv2D::forward (conv2d_direct where conv2d_direct_suits says so, else
// im2col + GEMM) against im2col + GEMM written out (the path Conv2D took for every strided layer
// before conv2d_direct), batch 1.

void strided_conv(benchmark::State& state, std::size_t in, std::size_t out, std::size_t k, std::size_t hw) {
  Conv2DOptions o;
  o.stride_h = o.stride_w = 2;
  o.padding = edgesplit::Padding2D{k / 2, k / 2, k / 2, k / 2};
  Rng rng(0x57d);
  auto conv = std::make_shared<edgesplit::Conv2D<float>>(in, out, k, k, o, rng);
  auto x = std::make_shared<Tensor<float>>(Shape{1, in, hw, hw});
  for (float& v : x->span()) v = static_cast<float>(rng.uniform(-1.0, 1.0));
  auto y = std::make_shared<Tensor<float>>(conv->output_shape(x->shape()));
  const auto& w = conv->window();
  const std::size_t P = w.out_h(hw) * w.out_w(hw), K = in * k * k;
  auto cols = std::make_shared<Tensor<float>>(Shape{K, P});
  auto y2 = std::make_shared<Tensor<float>>(y->shape());
  auto gemm = std::make_shared<edgesplit::GemmWorkspace<float>>();
  std::vector<Variant> v = {
      {"edgesplit", [conv, x, y] { conv->forward(x->cview(), y->view()); }},
      {"im2col", [conv, x, y2, cols, gemm, in, out, hw, P, K] {
         for (std::size_t c = 0; c < out; ++c) std::fill_n(y2->data() + c * P, P, conv->bias()[c]);
         edgesplit::im2col(x->data(), in, hw, hw, conv->window(), cols->data());
         gemm->ab_accumulate(conv->weight().data(), cols->data(), y2->data(), static_cast<Eigen::Index>(out),
                             static_cast<Eigen::Index>(P), static_cast<Eigen::Index>(K));
       }}};
  const auto med = run_paired(state, v, static_cast<double>(conv->flops(x->shape())));
  state.counters["speedup"] = med[1] / med[0];
  state.counters["runs_direct"] = edgesplit::kernels::conv2d_direct_suits(in, hw, w) ? 1 : 0;
}

// ---------------------------------------------------------------------------------------------
// Training the Fashion-MNIST CNN.

struct CnnTraining {
  Graph<float> model = edgesplit_examples::fmnist_cnn_graph(edgesplit_examples::fmnist_cnn_seed);
  edgesplit::Dataset<float> train;
  bool real = false;
  static constexpr std::size_t batch = 128;
  Tensor<float> xb{Shape{batch, 1, 28, 28}};
  std::vector<std::int32_t> yb = std::vector<std::int32_t>(batch);
  std::vector<std::size_t> order;
  std::size_t next = 0;
  Rng rng{1};

  CnnTraining() {
    if (edgesplit::fashion_mnist_available()) {
      train = edgesplit_examples::as_images(edgesplit::load_fashion_mnist<float>().first);
      real = true;
    } else {
      const std::size_t n = 8192;
      train.inputs.resize(Shape{n, 1, 28, 28});
      for (float& v : train.inputs.span()) v = static_cast<float>(rng.uniform());
      train.labels.resize(n);
      train.classes = 10;
      for (auto& l : train.labels) l = static_cast<std::int32_t>(rng.uniform() * 10) % 10;
    }
    for (std::size_t i = 0; i < model.node_count(); ++i)
      if (auto* s = dynamic_cast<edgesplit::Standardizer<float>*>(model.layer(i))) s->fit(train.inputs.cview());
    order.resize(train.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    rng.shuffle(std::span<std::size_t>(order));
  }
  // The next batch, as Trainer::fit gathers it.
  void gather() {
    if (next + batch > order.size()) {
      rng.shuffle(std::span<std::size_t>(order));
      next = 0;
    }
    const std::size_t row = 28 * 28;
    for (std::size_t i = 0; i < batch; ++i) {
      std::copy_n(train.inputs.data() + order[next + i] * row, row, xb.data() + i * row);
      yb[i] = train.labels[order[next + i]];
    }
    next += batch;
  }
};

void cnn_training(benchmark::State& state) {
  auto t = std::make_shared<CnnTraining>();
  auto objective = std::make_shared<edgesplit::Classifier<float>>(t->model);
  auto adam = std::make_shared<edgesplit::Adam<float>>(2e-3);
  objective->set_training(true);
  objective->zero_grad();
  auto params = std::make_shared<std::vector<edgesplit::Parameter<float>>>(objective->parameters());
  std::vector<Variant> v = {{"step", [t, objective, adam, params] {
                               t->gather();
                               objective->zero_grad();
                               const double loss = objective->train_step(
                                   t->xb.cview(), std::span<const std::int32_t>(t->yb.data(), t->yb.size()));
                               adam->step(*params);
                               benchmark::DoNotOptimize(loss);
                             }}};
  const auto med = run_paired(state, v, 0);
  state.counters["samples_per_s"] = static_cast<double>(CnnTraining::batch) / med[0] * 1e6;
  state.counters["real_data"] = t->real ? 1 : 0;
}

// ---------------------------------------------------------------------------------------------

void describe_models() {
  const std::pair<const char*, std::size_t> expected[] = {{"resnet18", 11689512}, {"mobilenet_v2", 3504872}};
  for (const auto& [name, params] : expected) {
    const Graph<float> g = build(name);
    const Graph<float> f = edgesplit::fold_batchnorm(g);
    std::printf("%-13s %zu parameters (torchvision: %zu, %s), %.3f GFLOP at batch 1 (folded: %.3f), %zu nodes "
                "(folded: %zu)\n",
                name, g.parameter_count(), params, g.parameter_count() == params ? "equal" : "MISMATCH",
                static_cast<double>(g.flops(1)) * 1e-9, static_cast<double>(f.flops(1)) * 1e-9, g.node_count(),
                f.node_count());
  }
  const Graph<float> cnn = edgesplit_examples::fmnist_cnn_graph(edgesplit_examples::fmnist_cnn_seed);
  std::printf("fmnist_cnn    %zu parameters, %.3f MFLOP per sample (forward); layers:\n", cnn.parameter_count(),
              static_cast<double>(cnn.flops(1)) * 1e-6);
  for (std::size_t i = 0; i < cnn.node_count(); ++i)
    std::printf("  %-14s %s\n", cnn.node_output(i).c_str(), cnn.node_describe(i).c_str());
  std::fflush(stdout);
}

void add(const std::string& name, std::function<void(benchmark::State&)> f, double min_time) {
  benchmark::RegisterBenchmark(name.c_str(), [f](benchmark::State& s) { f(s); })
      ->Unit(benchmark::kMillisecond)
      ->MinTime(min_time);
}

void register_all() {
  add("ResNet18/batch:1", [](benchmark::State& s) { latency(s, "resnet18"); }, 2.0);
  add("MobileNetV2/batch:1", [](benchmark::State& s) { latency(s, "mobilenet_v2"); }, 2.0);
  add("FmnistCnnTrain/batch:128", cnn_training, 3.0);
  // (in, out, kernel, input plane) at stride 2, padding kernel / 2: ResNet-18's and MobileNetV2's
  // stems, a small stem, and ResNet-18's layer2 downsampling 3x3 (left to im2col + GEMM)
  for (const auto& c : {std::array<std::size_t, 4>{3, 64, 7, 224}, {3, 32, 3, 224}, {32, 64, 3, 56}, {64, 128, 3, 56}}) {
    const std::size_t in = c[0], out = c[1], k = c[2], hw = c[3];
    add("StridedConv/in:" + std::to_string(in) + "/out:" + std::to_string(out) + "/k:" + std::to_string(k) +
            "/hw:" + std::to_string(hw),
        [in, out, k, hw](benchmark::State& s) { strided_conv(s, in, out, k, hw); }, 1.0);
  }
  add("Breakdown/resnet18", [](benchmark::State& s) { breakdown(s, "resnet18"); }, 0.1);
  add("Breakdown/mobilenet_v2", [](benchmark::State& s) { breakdown(s, "mobilenet_v2"); }, 0.1);
}

}  // namespace

int main(int argc, char** argv) {
  // --nodes is this program's own flag; the rest are Google Benchmark's
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--nodes")
      print_nodes = true;
    else
      argv[kept++] = argv[i];
  }
  argc = kept;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  describe_models();
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

// bench/vision_models.hpp - ResNet-18 and MobileNetV2 (width 1.0) as edgesplit graphs, layer for
// layer as torchvision 0.14 defines torchvision.models.resnet18 and mobilenet_v2 (1000 classes),
// with random weights: the benchmark models of bench/vision_bench.cpp, measured against the same
// torchvision models in PyTorch by scripts/torch_vision_bench.py.
//
// Same layers, shapes, strides, paddings, groups and biases as torchvision, so the parameter
// counts agree (ResNet-18 11,689,512; MobileNetV2 3,504,872: weights, biases and BatchNorm's gamma
// and beta; the running statistics are buffers in both libraries) and so do the FLOPs. Only the
// initial values differ: He-uniform convolutions and Dense layers from edgesplit's Rng, BatchNorm
// at PyTorch's initial values (gamma 1, beta 0, mean 0, variance 1). Latency does not depend on
// them as long as no value becomes subnormal, which these keep away from.
//
// For inference, run `fold_batchnorm(graph)` (nn/fold.hpp) and keep the result in inference mode
// (the default): every BatchNorm2D here follows a Conv2D that only it reads, so all fold.
//
//   ResNet-18     conv 7x7/2 3->64, BN, ReLU, max pool 3x3/2 pad 1          [64, 56, 56]
//                 4 stages of 2 BasicBlocks, 64/128/256/512 channels; the first block of
//                 stages 2-4 has stride 2 and a 1x1/2 conv + BN shortcut      [512, 7, 7]
//                 global average pool, Dense 512->1000
//   MobileNetV2   conv 3x3/2 3->32, BN, ReLU6                                [32, 112, 112]
//                 17 inverted residuals (expand 1x1 + BN + ReLU6 unless t = 1, depthwise 3x3 +
//                 BN + ReLU6, project 1x1 + BN; an Add when stride 1 and in == out)
//                 conv 1x1 320->1280, BN, ReLU6, global average pool,
//                 dropout 0.2 (training only), Dense 1280->1000
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include <edgesplit/edgesplit.hpp>

namespace edgesplit_bench {

using edgesplit::Add;
using edgesplit::BatchNorm2D;
using edgesplit::Conv2D;
using edgesplit::Conv2DOptions;
using edgesplit::Graph;
using edgesplit::Rng;
using edgesplit::Shape;

namespace detail {

// A Conv2D without bias (BatchNorm follows) and its BatchNorm2D; returns the BatchNorm's output.
inline std::string conv_bn(Graph<float>& g, Rng& rng, const std::string& name, const std::string& in,
                           std::size_t cin, std::size_t cout, std::size_t k, std::size_t stride, std::size_t pad,
                           std::size_t groups = 1) {
  Conv2DOptions o;
  o.stride_h = o.stride_w = stride;
  o.padding = {pad, pad, pad, pad};
  o.groups = groups;
  o.bias = false;
  g.add(name, {in}, std::make_unique<Conv2D<float>>(cin, cout, k, k, o, rng));
  return g.add(name + ".bn", {name}, std::make_unique<BatchNorm2D<float>>(cout));
}

inline std::string relu(Graph<float>& g, const std::string& name, const std::string& in) {
  return g.add(name, {in}, std::make_unique<edgesplit::ReLU<float>>());
}

inline std::string relu6(Graph<float>& g, const std::string& name, const std::string& in) {
  return g.add(name, {in}, std::make_unique<edgesplit::ReLU6<float>>());
}

}  // namespace detail

/// torchvision.models.resnet18(num_classes=1000) with fresh weights from `seed`: input "image"
/// {3, 224, 224} (any plane of at least 32 x 32 works), output "fc" {1000} (logits). Tensor names
/// follow torchvision's module names ("layer2.0.conv1", "layer2.0.downsample").
inline Graph<float> resnet18_graph(std::uint64_t seed) {
  using detail::conv_bn;
  using detail::relu;
  Rng rng(seed);
  Graph<float> g;
  std::string x = g.input("image", Shape{3, 224, 224});
  x = relu(g, "relu", conv_bn(g, rng, "conv1", x, 3, 64, 7, 2, 3));
  edgesplit::Pool2DOptions pool;
  pool.stride_h = pool.stride_w = 2;
  pool.padding = {1, 1, 1, 1};
  x = g.add(std::string("maxpool"), {x}, std::make_unique<edgesplit::MaxPool2D<float>>(3, 3, pool));
  std::size_t cin = 64;
  const std::array<std::size_t, 4> widths{64, 128, 256, 512};
  for (std::size_t stage = 0; stage < 4; ++stage) {
    const std::size_t cout = widths[stage];
    for (std::size_t block = 0; block < 2; ++block) {
      const std::string p = "layer" + std::to_string(stage + 1) + "." + std::to_string(block);
      const std::size_t stride = stage > 0 && block == 0 ? 2 : 1;
      std::string y = relu(g, p + ".relu1", conv_bn(g, rng, p + ".conv1", x, cin, cout, 3, stride, 1));
      y = conv_bn(g, rng, p + ".conv2", y, cout, cout, 3, 1, 1);
      const std::string shortcut =
          stride != 1 || cin != cout ? conv_bn(g, rng, p + ".downsample", x, cin, cout, 1, stride, 0) : x;
      y = g.add(p + ".add", {y, shortcut}, std::make_unique<Add<float>>());
      x = relu(g, p + ".relu2", y);
      cin = cout;
    }
  }
  x = g.add(std::string("avgpool"), {x}, std::make_unique<edgesplit::GlobalAvgPool<float>>());
  x = g.add(std::string("fc"), {x}, std::make_unique<edgesplit::Dense<float>>(512, 1000, rng));
  g.output(x);
  return g;
}

/// torchvision.models.mobilenet_v2(num_classes=1000, width_mult=1.0) with fresh weights from
/// `seed`: input "image" {3, 224, 224}, output "classifier" {1000} (logits). Tensor names follow
/// torchvision's module indices ("features.3.conv.1" is block 3's depthwise conv).
inline Graph<float> mobilenet_v2_graph(std::uint64_t seed) {
  using detail::conv_bn;
  using detail::relu6;
  Rng rng(seed);
  Graph<float> g;
  std::string x = g.input("image", Shape{3, 224, 224});
  x = relu6(g, "features.0.relu", conv_bn(g, rng, "features.0", x, 3, 32, 3, 2, 1));
  // torchvision's inverted_residual_setting: expansion t, channels c, repeats n, first stride s
  struct Stage {
    std::size_t t, c, n, s;
  };
  const std::array<Stage, 7> stages{{{1, 16, 1, 1},
                                     {6, 24, 2, 2},
                                     {6, 32, 3, 2},
                                     {6, 64, 4, 2},
                                     {6, 96, 3, 1},
                                     {6, 160, 3, 2},
                                     {6, 320, 1, 1}}};
  std::size_t cin = 32, index = 1;
  for (const Stage& st : stages)
    for (std::size_t i = 0; i < st.n; ++i, ++index) {
      const std::string p = "features." + std::to_string(index) + ".conv";
      const std::size_t stride = i == 0 ? st.s : 1, hidden = cin * st.t;
      std::string y = x;
      std::size_t part = 0;
      if (st.t != 1) {
        y = relu6(g, p + ".0.relu", conv_bn(g, rng, p + ".0", y, cin, hidden, 1, 1, 0));
        ++part;
      }
      y = relu6(g, p + "." + std::to_string(part) + ".relu",
                conv_bn(g, rng, p + "." + std::to_string(part), y, hidden, hidden, 3, stride, 1, hidden));
      y = conv_bn(g, rng, p + "." + std::to_string(part + 1), y, hidden, st.c, 1, 1, 0);
      if (stride == 1 && cin == st.c) y = g.add(p + ".add", {y, x}, std::make_unique<Add<float>>());
      x = y;
      cin = st.c;
    }
  x = relu6(g, "features.18.relu", conv_bn(g, rng, "features.18", x, 320, 1280, 1, 1, 0));
  x = g.add(std::string("avgpool"), {x}, std::make_unique<edgesplit::GlobalAvgPool<float>>());
  x = g.add(std::string("dropout"), {x}, std::make_unique<edgesplit::Dropout<float>>(0.2, seed + 1));
  x = g.add(std::string("classifier"), {x}, std::make_unique<edgesplit::Dense<float>>(1280, 1000, rng));
  g.output(x);
  return g;
}

}  // namespace edgesplit_bench

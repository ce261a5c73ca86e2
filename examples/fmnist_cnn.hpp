// fmnist_cnn.hpp - the examples' Fashion-MNIST CNN: a Graph with convolutions, BatchNorm, pooling,
// one residual block, global pooling and a Dense classifier; loaded from its safetensors cache when
// there is a usable one, trained (Adam, cosine schedule, batch 128) and cached if not.
//
//   image [1, 28, 28] -> norm (Standardizer) -> stem: conv 3x3 1->32, BN, ReLU      [32, 28, 28]
//   -> pool1: max 2x2                                                               [32, 14, 14]
//   -> block: conv 3x3 32->32, BN, ReLU, conv 3x3 32->32, BN, + pool1, ReLU         [32, 14, 14]
//   -> pool2: max 2x2                                                               [32, 7, 7]
//   -> head: conv 3x3 32->64, BN, ReLU                                              [64, 7, 7]
//   -> flatten, drop1: dropout 0.3, fc: Dense 3136->128, ReLU                       [128]
//   -> drop: dropout 0.3 (dropouts in training only), logits: Dense 128->10
#pragma once

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include <edgesplit/edgesplit.hpp>
#include <edgesplit/io/safetensors.hpp>

namespace edgesplit_examples {
using namespace edgesplit;

/// The CNN above with fresh weights from `seed`. Convolutions followed by BatchNorm have no bias
/// (BatchNorm's shift makes one redundant); fold_batchnorm gives them one again for serving.
inline Graph<float> fmnist_cnn_graph(std::uint64_t seed) {
  Rng rng(seed);
  Graph<float> g;
  Conv2DOptions same;
  same.padding = same_padding(3, 3);
  same.bias = false;
  auto conv_bn = [&](const std::string& name, const std::string& in, std::size_t cin, std::size_t cout) {
    g.add(name, {in}, std::make_unique<Conv2D<float>>(cin, cout, 3, 3, same, rng));
    return g.add(name + ".bn", {name}, std::make_unique<BatchNorm2D<float>>(cout));
  };
  auto relu = [&](const std::string& name, const std::string& in) {
    return g.add(name, {in}, std::make_unique<ReLU<float>>());
  };
  std::string x = g.input("image", Shape{1, 28, 28});
  x = g.add(std::string("norm"), {x}, std::make_unique<Standardizer<float>>(784, Standardize::global));
  x = relu("stem.relu", conv_bn("stem", x, 1, 32));
  const std::string pool1 = g.add(std::string("pool1"), {x}, std::make_unique<MaxPool2D<float>>(2, 2));
  std::string y = relu("block.relu1", conv_bn("block.conv1", pool1, 32, 32));
  y = conv_bn("block.conv2", y, 32, 32);
  y = g.add(std::string("block.add"), {y, pool1}, std::make_unique<Add<float>>());
  y = relu("block.relu2", y);
  y = g.add(std::string("pool2"), {y}, std::make_unique<MaxPool2D<float>>(2, 2));
  y = relu("head.relu", conv_bn("head", y, 32, 64));
  y = g.add(std::string("flatten"), {y}, std::make_unique<Flatten<float>>());
  y = g.add(std::string("drop1"), {y}, std::make_unique<Dropout<float>>(0.3, seed + 2));
  y = g.add(std::string("fc"), {y}, std::make_unique<Dense<float>>(64 * 7 * 7, 128, rng));
  y = g.add(std::string("fc.relu"), {y}, std::make_unique<ReLU<float>>());
  y = g.add(std::string("drop"), {y}, std::make_unique<Dropout<float>>(0.3, seed + 1));
  y = g.add(std::string("logits"), {y}, std::make_unique<Dense<float>>(128, 10, rng));
  g.output(y);
  return g;
}

/// Fashion-MNIST images as the CNN takes them: {N, 1, 28, 28} (the IDX reader gives {N, 784}).
inline Dataset<float> as_images(Dataset<float> d) {
  d.inputs.resize(Shape{d.size(), 1, 28, 28});  // the same elements, viewed as planes
  return d;
}

/// The recipe of docs/training.md: Adam 2e-3 with a cosine schedule, batch 128, `epochs` epochs,
/// weights and shuffling from `seed`; the input Standardizer fitted on the training images.
inline Graph<float> train_fmnist_cnn(std::size_t epochs, std::uint64_t seed, const Dataset<float>& train,
                                     const Dataset<float>* test, bool quiet = false) {
  Graph<float> g = fmnist_cnn_graph(seed);
  for (std::size_t i = 0; i < g.node_count(); ++i)
    if (auto* s = dynamic_cast<Standardizer<float>*>(g.layer(i))) s->fit(train.inputs.cview());
  Classifier<float> objective(g);
  Adam<float> adam(2e-3);
  TrainOptions to;
  to.epochs = epochs;
  to.seed = seed;
  to.schedule = LrSchedule::cosine();
  Trainer<float> trainer(to, quiet ? ProgressCallback{} : print_progress());
  trainer.fit(objective, adam, train, test);
  g.set_training(false);
  return g;
}

/// The seed fmnist_cnn trains with.
inline constexpr std::uint64_t fmnist_cnn_seed = 2026;

/// The CNN from `cache` when it holds one, else trained and saved there.
inline Graph<float> fmnist_cnn(const std::filesystem::path& cache, std::size_t epochs, const Dataset<float>& train,
                               const Dataset<float>& test) {
  std::error_code ec;
  if (std::filesystem::is_regular_file(cache, ec)) {
    try {
      Graph<float> g = load_graph_safetensors<float>(cache);
      // the seed is part of the architecture (Dropout's spec records its mask seed)
      if (g.architecture_hash() == fmnist_cnn_graph(fmnist_cnn_seed).architecture_hash()) {
        std::printf("model: loaded %s\n", cache.c_str());
        return g;
      }
      std::printf("model: cache %s holds another architecture, training anew\n", cache.c_str());
    } catch (const error& e) {
      std::printf("model: cache %s unusable (%s), training anew\n", cache.c_str(), e.what());
    }
  }
  std::printf("model: training the CNN for %zu epochs (Adam 2e-3, cosine, batch 128)\n", epochs);
  Graph<float> g = train_fmnist_cnn(epochs, fmnist_cnn_seed, train, &test);
  try {
    save_safetensors(cache, g);
  } catch (const error& e) {
    std::printf("model: not cached (%s)\n", e.what());
  }
  return g;
}

}  // namespace edgesplit_examples

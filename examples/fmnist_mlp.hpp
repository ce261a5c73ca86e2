// fmnist_mlp.hpp - the examples' Fashion-MNIST model: the 784-256-128-10 MLP, loaded from its
// safetensors cache when there is a usable one, trained (Adam 1e-3, batch 128) and cached if not.
#pragma once

#include <cstdio>
#include <filesystem>

#include <edgesplit/edgesplit.hpp>
#include <edgesplit/io/safetensors.hpp>

namespace edgesplit_examples {
using namespace edgesplit;

inline Sequential<float> fmnist_mlp(const std::filesystem::path& cache, std::size_t epochs, const Dataset<float>& train,
                                    const Dataset<float>& test) {
  std::error_code ec;
  if (std::filesystem::is_regular_file(cache, ec)) {
    try {
      auto m = load_safetensors<float>(cache);
      if (m.output_shape(Shape{1, 784}) == Shape{1, 10} && m.size() == 5) {
        std::printf("model: loaded %s\n", cache.c_str());
        return m;
      }
    } catch (const error& e) {
      std::printf("model: cache %s unusable (%s), training anew\n", cache.c_str(), e.what());
    }
  }
  Rng rng(2026);
  Sequential<float> m;
  m.add<Dense<float>>(784, 256, rng);
  m.add<ReLU<float>>();
  m.add<Dense<float>>(256, 128, rng);
  m.add<ReLU<float>>();
  m.add<Dense<float>>(128, 10, rng);
  std::printf("model: training 784-256-128-10 for %zu epochs (Adam 1e-3, batch 128)\n", epochs);
  Classifier<float> objective(m);
  Adam<float> adam(1e-3);
  TrainOptions to;
  to.epochs = epochs;
  Trainer<float> trainer(to);
  trainer.fit(objective, adam, train, &test);
  try {
    save_safetensors(cache, m);
  } catch (const error& e) {
    std::printf("model: not cached (%s)\n", e.what());
  }
  return m;
}

}  // namespace edgesplit_examples

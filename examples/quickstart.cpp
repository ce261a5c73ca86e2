// quickstart: an edge model and a cloud model in one binary, and one model split in two.
//
// Builds a small edge MLP and a larger cloud MLP, runs a batch through both, then cuts the cloud
// model after each layer and shows what would cross the link: the head runs on the edge, the
// tail in the cloud, and head-then-tail gives exactly the unsplit model's answer.
#include <cstdio>

#include <edgesplit/edgesplit.hpp>

using namespace edgesplit;

namespace {

Sequential<float> mlp(std::initializer_list<std::size_t> widths, Rng& rng) {
  Sequential<float> m;
  auto it = widths.begin();
  for (std::size_t prev = *it++; it != widths.end(); prev = *it++) {
    if (!m.empty()) m.add<ReLU<float>>();
    m.add<Dense<float>>(prev, *it, rng);
  }
  m.add<Softmax<float>>();
  return m;
}

}  // namespace

int main() {
  Rng rng(2026);
  Sequential<float> edge = mlp({784, 64, 10}, rng);
  Sequential<float> cloud = mlp({784, 512, 256, 10}, rng);

  const std::size_t batch = 8;
  Tensor<float> x(Shape{batch, 784});
  for (float& v : x.span()) v = static_cast<float>(rng.uniform());

  std::printf("edge model : %zu layers, %zu parameters, %.2f MFLOP per batch of %zu\n", edge.size(),
              edge.parameter_count(), edge.flops(x.shape()) / 1e6, batch);
  std::printf("cloud model: %zu layers, %zu parameters, %.2f MFLOP per batch of %zu\n", cloud.size(),
              cloud.parameter_count(), cloud.flops(x.shape()) / 1e6, batch);
  std::printf("SIMD kernels: %s\n\n", kernels::simd_arch_name());

  const Tensor<float> whole = cloud.predict(x);
  const Tensor<float> local = edge.predict(x);
  std::printf("edge output %s, cloud output %s\n\n", local.shape().str().c_str(), whole.shape().str().c_str());

  std::printf("%-6s %-22s %-14s %14s %14s  %s\n", "split", "last edge layer", "sent shape", "bytes/batch",
              "bytes/sample", "head+tail == whole");
  const auto layers = cloud.describe(x.shape());
  for (std::size_t k = 0; k <= cloud.size(); ++k) {
    auto [head, tail] = cloud.split(k);
    const Tensor<float> sent = head.predict(x);  // what the edge sends (the input itself at k = 0)
    const Tensor<float> answer = tail.predict(sent);
    bool same = true;
    for (std::size_t i = 0; i < answer.size(); ++i) same = same && answer[i] == whole[i];
    std::printf("%-6zu %-22s %-14s %14zu %14zu  %s\n", k, k == 0 ? "(none: all cloud)" : layers[k - 1].name.c_str(),
                sent.shape().str().c_str(), sent.bytes(), sent.bytes() / batch, same ? "yes" : "NO");
    if (!same) return 1;
  }
  return 0;
}

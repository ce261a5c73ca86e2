// A downstream program: the README's first program, built and run by every package consumer
// (find_package, pkg-config + make, add_subdirectory, FetchContent, Conan's test_package), so the
// README's example is compiled against each way of taking the library; tests/doc_snippets.sh
// checks that the README quotes the region below word for word. Exits non-zero on a mismatch.
// [snippet readme-first-program]
#include <edgesplit/edgesplit.hpp>
#include <cstdio>
using namespace edgesplit;

int main() {
  Rng rng(42);
  Sequential<float> model;                       // 784-512-256-10 MLP
  model.add<Dense<float>>(784, 512, rng);
  model.add<ReLU<float>>();
  model.add<Dense<float>>(512, 256, rng);
  model.add<ReLU<float>>();
  model.add<Dense<float>>(256, 10, rng);

  Tensor<float> x(Shape{32, 784}, 0.5f);         // a batch of 32 inputs
  auto [head, tail] = model.split(3);            // edge runs layers 0..2, cloud the rest
  TensorView<const float> sent = head.forward(x);       // [32, 256]: what crosses the link
  TensorView<const float> y = tail.forward(sent);       // [32, 10]: the cloud's answer
  std::printf("sent %s, answer %s, SIMD kernels: %s\n", sent.shape().str().c_str(),
              y.shape().str().c_str(), kernels::simd_arch_name());
  return y.shape() == model.output_shape(x.shape()) ? 0 : 1;
}
// [end]

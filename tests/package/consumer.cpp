// A downstream program: proves that the installed (or add_subdirectory'd) edgesplit target gives
// a working header-only library with its dependencies. Exits non-zero on any mismatch.
#include <edgesplit/edgesplit.hpp>

#include <cstdio>

int main() {
  using namespace edgesplit;
  Rng rng(1);
  Sequential<float> model;
  model.add<Dense<float>>(4, 3, rng);
  model.add<ReLU<float>>();
  model.add<Dense<float>>(3, 2, rng);
  Tensor<float> x(Shape{2, 4}, 0.5f);
  const Tensor<float> whole = model.predict(x);
  auto [head, tail] = model.split(1);
  const Tensor<float> split = tail.predict(head.predict(x));
  for (std::size_t i = 0; i < whole.size(); ++i)
    if (whole[i] != split[i]) return 1;
  std::printf("consumer ok: output %s, simd %s\n", whole.shape().str().c_str(), kernels::simd_arch_name());
  return 0;
}

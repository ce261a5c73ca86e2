// Small models and inputs shared by the runtime and cluster tests.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string_view>
#include <thread>

#include "edgesplit/edgesplit.hpp"

namespace edgesplit_test {

/// Dense layers of the given widths with ReLU between them, weights from `seed`.
inline edgesplit::Sequential<float> mlp(std::initializer_list<std::size_t> widths, std::uint64_t seed) {
  using namespace edgesplit;
  Rng rng(seed);
  Sequential<float> m;
  auto it = widths.begin();
  for (std::size_t prev = *it++; it != widths.end(); prev = *it++) {
    if (!m.empty()) m.add<ReLU<float>>();
    m.add<Dense<float>>(prev, *it, rng);
  }
  return m;
}

/// A batch x width input, uniform in [-1, 1) from `seed`.
inline edgesplit::Tensor<float> random_input(std::size_t batch, std::size_t width, std::uint64_t seed) {
  using namespace edgesplit;
  Rng rng(seed);
  Tensor<float> t(Shape{batch, width});
  for (float& v : t.span()) v = static_cast<float>(rng.uniform(-1, 1));
  return t;
}

/// An identity layer that calls `hook` on each input first: a user layer that records where it
/// ran, fails on some inputs, or takes its time.
class Hook : public edgesplit::Layer<float> {
 public:
  using Fn = std::function<void(edgesplit::TensorView<const float>)>;
  explicit Hook(Fn hook, std::string_view name = "Hook") : hook_(std::move(hook)), name_(name) {}
  std::string_view name() const noexcept override { return name_; }
  std::unique_ptr<edgesplit::Layer<float>> clone() const override { return std::make_unique<Hook>(*this); }

 protected:
  edgesplit::Shape output_shape_impl(const edgesplit::Shape& in) const override { return in; }
  std::uint64_t flops_impl(const edgesplit::Shape&) const override { return 0; }
  void forward_impl(edgesplit::TensorView<const float> in, edgesplit::TensorView<float> out) override {
    hook_(in);
    edgesplit::copy(in, out);
  }
  void backward_impl(edgesplit::TensorView<const float>, edgesplit::TensorView<const float>,
                     edgesplit::TensorView<const float>, edgesplit::TensorView<float>) override {}

 private:
  Fn hook_;
  std::string_view name_;
};

/// An identity layer that sleeps: makes a tail slow enough to queue requests behind it, or to
/// keep them in flight while a worker dies.
class Sleep final : public Hook {
 public:
  explicit Sleep(std::chrono::milliseconds d) : Hook([d](auto) { std::this_thread::sleep_for(d); }, "Sleep") {}
};

}  // namespace edgesplit_test

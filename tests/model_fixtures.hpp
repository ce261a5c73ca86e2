// Small models and inputs shared by the runtime and cluster tests.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
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

/// x [4] -> a = Dense(4,3), b = Dense(4,3) -> a + b -> y = Dense(3,2); split 2 crosses {a, b}.
inline edgesplit::Graph<float> two_branch_graph(std::uint64_t seed) {
  using namespace edgesplit;
  Rng rng(seed);
  Graph<float> g;
  const std::string x = g.input("x", Shape{4});
  g.add(std::string("a"), {x}, std::make_unique<Dense<float>>(4, 3, rng));
  g.add(std::string("b"), {x}, std::make_unique<Dense<float>>(4, 3, rng));
  const std::string sum = g.add<Add<float>>({"a", "b"});
  g.add(std::string("y"), {sum}, std::make_unique<Dense<float>>(3, 2, rng));
  g.output("y");
  return g;
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

/// A tail behind a gate: the first layer of gated(tail) holds every batch until open() (or 20 s),
/// so a test can fill the server's queues; entered() counts the batches that reached it.
class Gate {
 public:
  edgesplit::Sequential<float> gated(const edgesplit::Sequential<float>& tail) {
    edgesplit::Sequential<float> g;
    g.add<Hook>([this](edgesplit::TensorView<const float>) {
      entered_.fetch_add(1);
      std::unique_lock lock(m_);
      cv_.wait_for(lock, std::chrono::seconds(20), [this] { return open_; });
    });
    for (std::size_t i = 0; i < tail.size(); ++i) g.add(tail[i].clone());
    return g;
  }
  /// Waits (at most 10 s, polling) until `n` batches have reached the gate; true if they did.
  bool wait_entered(int n = 1) const {
    for (int i = 0; i < 2000 && entered_.load() < n; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return entered_.load() >= n;
  }
  int entered() const { return entered_.load(); }
  void open() {
    {
      std::lock_guard lock(m_);
      open_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool open_ = false;
  std::atomic<int> entered_{0};
};

}  // namespace edgesplit_test

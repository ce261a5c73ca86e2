// The split model and edge options the runtime and serving tests share: a 24-16-12-5 MLP cut
// after its first Dense + ReLU, served as model "toy" at split 2 (the tail takes 16 features).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <utility>

#include "edgesplit/edgesplit.hpp"
#include "edgesplit/runtime/edge_client.hpp"
#include "edgesplit/runtime/server_options.hpp"
#include "edgesplit/wire/protocol.hpp"
#include "model_fixtures.hpp"

namespace edgesplit_test {

inline constexpr std::size_t kIn = 24, kHidden = 16, kOut = 5;
inline const edgesplit::wire::ModelIdentity kModel{"toy", 1, 0, 2};  // split after Dense + ReLU

/// The whole model and its two halves at kModel.split.
struct Split {
  edgesplit::Sequential<float> whole, head, tail;
};
inline Split make_split(std::uint64_t seed = 7) {
  Split s;
  s.whole = mlp({kIn, kHidden, 12, kOut}, seed);
  auto [h, t] = s.whole.split(kModel.split);
  s.head = std::move(h);
  s.tail = std::move(t);
  return s;
}

/// An edge for kModel sending features at `bits`, quick to reconnect.
inline edgesplit::EdgeOptions edge_options(int bits = edgesplit::wire::raw_f32_bits) {
  using namespace std::chrono_literals;
  edgesplit::EdgeOptions o;
  o.model = kModel;
  o.codec.bits = bits;
  o.connect_timeout = 2000ms;
  o.backoff_initial = 10ms;
  o.backoff_max = 100ms;
  return o;
}

/// A server with small caps, so that limits are reached cheaply: one worker, 1 MiB frames,
/// 256 Ki elements, a 2 MiB memory budget, no log.
inline edgesplit::ServerOptions small_server_options() {
  edgesplit::ServerOptions o;
  o.workers = 1;
  o.limits.max_payload_bytes = std::size_t{1} << 20;
  o.limits.max_elements = std::size_t{1} << 18;
  o.limits.max_decompressed_bytes = std::size_t{1} << 20;
  o.memory_budget = std::size_t{2} << 20;
  o.log = [](std::string_view) {};
  return o;
}

}  // namespace edgesplit_test

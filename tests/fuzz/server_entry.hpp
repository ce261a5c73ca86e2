// The server entry shared by the libFuzzer target (fuzz_server.cpp) and the test suite, which
// replays the seed corpus in tests/corpus-server/ through it on every run: the bytes one
// connection sends, as the server's front end frames them (a 4-byte little-endian length, then
// the message), handed to a RequestHandler and a DynamicBatcher as a connection's would be.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "decode_entry.hpp"
#include "edgesplit/nn/activations.hpp"
#include "edgesplit/nn/dense.hpp"
#include "edgesplit/runtime/dynamic_batcher.hpp"
#include "edgesplit/runtime/request_handler.hpp"
#include "edgesplit/transport/clock.hpp"

namespace edgesplit_fuzz {

/// What one connection's bytes led to.
struct ServerOutcome {
  std::size_t messages = 0;  ///< whole messages handed to the handler
  std::size_t replies = 0;   ///< frames the server sent back
  std::size_t responses = 0;  ///< of which RESPONSE
  bool closed = false;       ///< the server ended the connection
};

namespace detail {

// Counts what the server sends and checks that every frame it sends parses.
struct CountingSink final : edgesplit::ReplySink {
  std::mutex m;
  std::size_t frames = 0, responses = 0;
  void deliver(std::span<const std::byte> frame, edgesplit::MemoryBudget::Reservation) override {
    edgesplit::wire::Frame f;
    try {
      f = edgesplit::wire::parse_frame(frame);
    } catch (...) {
      std::abort();  // the server sent a frame that does not parse
    }
    std::lock_guard lock(m);
    ++frames;
    responses += f.header.type == edgesplit::wire::MessageType::response;
  }
};

// One server for every input: model "toy" at split 2 takes 6 features per sample.
struct Server {
  edgesplit::ModelRegistry registry;
  edgesplit::ServerOptions options;
  edgesplit::VirtualClock clock;
  edgesplit::MemoryBudget budget{std::size_t{8} << 20};
  std::unique_ptr<edgesplit::DynamicBatcher> batcher;
  std::unique_ptr<edgesplit::RequestHandler> handler;
  edgesplit::wire::FeatureDecoder codec{fuzz_limits()};
  Server() {
    using namespace edgesplit;
    Rng rng(1);
    Sequential<float> tail;
    tail.add<Dense<float>>(6, 3, rng);
    tail.add<ReLU<float>>();
    for (auto& p : tail.parameters())  // every weight 0.5: six features of 3e38 overflow
      for (float& v : p.value.span()) v = 0.5f;
    registry.add({"toy", 1, 0, 2}, std::move(tail));
    options.workers = 0;  // run_ready() below: deterministic
    options.max_batch = 4;
    options.limits = fuzz_limits();
    options.memory_budget = budget.limit();
    options.log = [](std::string_view) {};
    batcher = std::make_unique<DynamicBatcher>(registry, options, clock);
    handler = std::make_unique<RequestHandler>(registry, *batcher, budget, options, clock);
  }
};

}  // namespace detail

/// Frames `input` as a connection's byte stream (at most 64 messages) and serves it. Aborts when
/// the server breaks a promise: a frame it sends that does not parse, more RESPONSEs than
/// messages, or memory left reserved once every request is answered.
inline ServerOutcome serve_connection(std::span<const std::byte> input) {
  static detail::Server server;
  auto sink = std::make_shared<detail::CountingSink>();
  edgesplit::Session session;
  session.source = server.batcher->open_source(sink);
  session.peer = "fuzz";
  ServerOutcome o;
  try {
    while (input.size() >= 4 && o.messages < 64 && !o.closed) {
      const std::size_t n = edgesplit::wire::load_le32(input.data());
      input = input.subspan(4);
      if (n > input.size() || n > server.options.limits.max_payload_bytes + 64) break;  // as a stalled or oversized frame
      ++o.messages;
      o.closed = server.handler->handle(session, input.first(n), server.codec) ==
                 edgesplit::RequestHandler::Verdict::close;
      input = input.subspan(n);
      server.clock.advance_by(std::chrono::milliseconds(2));  // past max_queue_delay: batches are due
      (void)server.batcher->run_ready();
    }
  } catch (...) {
    std::abort();  // handle() promises not to throw; a sink's parse failure lands here too
  }
  server.batcher->close_source(session.source);
  session.source.reset();
  if (server.budget.in_use() != 0) std::abort();
  o.replies = sink->frames;
  o.responses = sink->responses;
  if (o.responses > o.messages) std::abort();
  return o;
}

}  // namespace edgesplit_fuzz

// edgesplit/runtime/server_options.hpp - how a cloud server batches, bounds and guards its work.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <functional>
#include <string_view>

#include "edgesplit/wire/frame.hpp"
#include "edgesplit/wire/tensor_payload.hpp"

namespace edgesplit {

/// How a CloudServer (and its DynamicBatcher and front ends) batches, queues and bounds its work.
/// Every limit has a default that suits a server on the open network; docs/deployment.md lists
/// them with what a peer meets when it passes one.
struct ServerOptions {
  // --- batching (DynamicBatcher) ---
  std::size_t workers = 1;     ///< threads running tails
  std::size_t max_batch = 32;  ///< requests merged into one forward pass (1: no batching)
  /// Longest a request waits for company. A worker waits only while some source (connection)
  /// that sent within the last 100 x max_queue_delay (at least 10 ms, at most a minute) has no
  /// request queued or running and usually sends again within max_queue_delay of an answer (a
  /// moving average per source; a source not yet measured counts). When every such source
  /// already has one in the batch or the queue, waiting cannot help and the batch runs at once;
  /// idle connections, peers that never sent and peers that send only now and then hold
  /// nothing back.
  std::chrono::microseconds max_queue_delay{1000};
  /// A batch stops taking requests once it holds this many bytes of features (a single larger
  /// request runs alone): bounds each worker's working memory.
  std::size_t max_batch_bytes = std::size_t{16} << 20;
  /// Requests queued, all sources together, before `overloaded`. Its upper half is shared: once
  /// it is half full, a source may have at most queue_capacity / 2 split evenly among the sources
  /// with requests pending, so a source with little pending always finds room.
  std::size_t queue_capacity = 1024;
  /// Requests one source (a connection; a client of the ZeroMQ broker) may have queued or
  /// running; beyond it that source alone gets `overloaded`. Batches are filled round-robin
  /// across sources, so one source's flood never delays its neighbours' requests for long.
  std::size_t max_pending_per_source = 64;
  int response_bits = wire::raw_f32_bits;  ///< replies carry exact floats unless told otherwise

  // --- memory ---
  /// Bytes the server may hold for its peers at once: requests being read, decoded features
  /// waiting or running, replies not yet written. A request that would pass it is answered
  /// `overloaded` before anything is allocated for it.
  std::size_t memory_budget = std::size_t{256} << 20;
  wire::DecodeLimits limits{};  ///< caps on every incoming frame (each must fit the budget)

  // --- connections (the socket front end of listen()) ---
  std::size_t max_connections = 16384;  ///< open at once; further ones get ERROR `overloaded` and are closed
  /// A connection that completes no message for this long, with nothing of its own pending, is
  /// closed. Edges keep theirs open with PING (EdgeOptions::keepalive).
  std::chrono::milliseconds idle_timeout{std::chrono::minutes(5)};
  std::chrono::milliseconds stall_timeout{5000};  ///< a peer stuck inside a frame this long is dropped
  /// From accept to a completed HELLO (and TLS handshake); a peer that takes longer is dropped.
  std::chrono::milliseconds handshake_timeout{5000};
  /// Reply bytes a connection may leave unread; past this the peer is not reading and is closed
  /// (the server never waits for a reader).
  std::size_t max_unread_reply_bytes = std::size_t{4} << 20;
  /// Deadline of the WEIGHTS sends of push_weights() and of replies on connections served
  /// through serve(Channel) whose transport cannot queue them at once.
  std::chrono::milliseconds send_timeout{5000};

  /// Where the server reports what it refuses and whom it drops (one line each, no newline).
  /// Empty: standard error.
  std::function<void(std::string_view)> log;
};

namespace detail {
/// Writes `line` to the options' log, or to standard error.
inline void server_log(const ServerOptions& o, std::string_view line) noexcept {
  try {
    if (o.log) {
      o.log(line);
      return;
    }
    std::fprintf(stderr, "edgesplit server: %.*s\n", static_cast<int>(line.size()), line.data());
  } catch (...) {
    // a failing logger must not take a request or a thread down with it
  }
}
}  // namespace detail

}  // namespace edgesplit

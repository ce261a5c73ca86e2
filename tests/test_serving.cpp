// Tests for serving under attack: the DynamicBatcher on a virtual clock (fairness, waiting,
// poison requests, overflow), the memory budget, the socket front end's limits (connections,
// stalls, idleness, unread replies, file descriptors), the HELLO model check, and steady-state
// serving without allocation. Loopback only; every wait is bounded.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "alloc_counter.hpp"
#include "fuzz/server_entry.hpp"
#include "edgesplit/edgesplit.hpp"
#include "edgesplit/runtime/cloud_server.hpp"
#include "edgesplit/runtime/dynamic_batcher.hpp"
#include "edgesplit/runtime/edge_client.hpp"
#include "edgesplit/transport/inproc.hpp"
#include "edgesplit/transport/tcp.hpp"
#include "edgesplit/wire/protocol.hpp"
#include "model_fixtures.hpp"
#include "runtime_fixtures.hpp"
#include "test_util.hpp"
#if EDGESPLIT_HAS_TLS
#include "edgesplit/transport/tls.hpp"
#include "tls_fixtures.hpp"
#endif

using namespace edgesplit;
using namespace std::chrono_literals;
using edgesplit_test::expect_errc;
using edgesplit_test::mlp;
using edgesplit_test::random_input;
using edgesplit_test::Hook;
using edgesplit_test::Sleep;

namespace {

using edgesplit_test::edge_options;
using edgesplit_test::kHidden;
using edgesplit_test::kIn;
using edgesplit_test::kModel;
using edgesplit_test::kOut;
using edgesplit_test::make_split;

// Collects what a server logs, for tests that check a refusal is reported.
struct LogCapture {
  std::mutex mutex;
  std::vector<std::string> lines;
  std::function<void(std::string_view)> sink() {
    return [this](std::string_view l) {
      std::lock_guard lock(mutex);
      lines.emplace_back(l);
    };
  }
  bool has(const std::string& part) {
    std::lock_guard lock(mutex);
    for (const auto& l : lines)
      if (l.find(part) != std::string::npos) return true;
    return false;
  }
};

// A reply sink that keeps every frame it is given, decoded enough to check.
struct Collected {
  std::uint32_t request_id = 0;
  bool response = false;
  errc code = errc::invalid_argument;  // for an ERROR
  std::string message;
  Tensor<float> output;                // for a RESPONSE
};
struct CollectingSink final : ReplySink {
  std::mutex mutex;
  std::vector<Collected> replies;
  void deliver(std::span<const std::byte> frame, MemoryBudget::Reservation) override {
    Collected c;
    const auto h = wire::peek(frame);
    c.request_id = h.request_id;
    if (h.type == wire::MessageType::response) {
      wire::FeatureDecoder codec;
      (void)wire::decode_response(frame, codec, c.output);
      c.response = true;
    } else {
      const auto e = wire::decode_error(frame);
      c.code = e.code;
      c.message = e.message;
    }
    std::lock_guard lock(mutex);
    replies.push_back(std::move(c));
  }
  std::vector<Collected> take() {
    std::lock_guard lock(mutex);
    return std::exchange(replies, {});
  }
  std::size_t size() {
    std::lock_guard lock(mutex);
    return replies.size();
  }
};

// A batcher without workers, driven by the test with run_ready() on a virtual clock (every
// step deterministic), serving `tail` as kModel with the options given.
struct ManualBatcher {
  ModelRegistry registry;
  VirtualClock clock;
  ServerOptions options;
  std::unique_ptr<DynamicBatcher> batcher;
  ManualBatcher(const Sequential<float>& tail, ServerOptions o) : options(std::move(o)) {
    registry.add(kModel, tail);
    options.workers = 0;
    batcher = std::make_unique<DynamicBatcher>(registry, options, clock);
  }
  DynamicBatcher* operator->() { return batcher.get(); }
};

// A batcher on virtual time (max_batch 4, max_queue_delay 1 ms) with three sources, a sink each.
struct ThreeSources {
  edgesplit_test::Split s = make_split(3);
  ManualBatcher mb{s.tail, [] {
                     ServerOptions o;
                     o.max_batch = 4;
                     o.max_queue_delay = std::chrono::microseconds(1000);
                     return o;
                   }()};
  std::array<std::shared_ptr<CollectingSink>, 3> sinks{std::make_shared<CollectingSink>(), std::make_shared<CollectingSink>(),
                                                       std::make_shared<CollectingSink>()};
  std::array<DynamicBatcher::Source, 3> sources{mb->open_source(sinks[0]), mb->open_source(sinks[1]),
                                                mb->open_source(sinks[2])};
};

BatchRequest request(std::uint32_t id, Tensor<float> features, Clock::time_point deadline = Clock::time_point::max()) {
  BatchRequest r;
  r.request_id = id;
  r.key = {kModel.model_id, kModel.split};
  r.features = std::move(features);
  r.deadline = deadline;
  return r;
}

// How a user layer with a bug that one request can reach fails.
enum class How { runtime_error, bad_alloc };
// An identity layer that fails that way when its input holds `trigger`.
Hook throws_on(float trigger, How how) {
  return Hook([trigger, how](TensorView<const float> in) {
    for (std::size_t i = 0; i < in.size(); ++i)
      if (in.data()[i] == trigger) {
        if (how == How::bad_alloc) throw std::bad_alloc();
        throw std::runtime_error("layer bug reached");
      }
  });
}

// A raw TCP peer that has said HELLO for kModel.
TcpTransport greeted_peer(std::uint16_t port, TcpOptions options = {}) {
  auto t = TcpTransport::connect("127.0.0.1", port, deadline_after(5s), options);
  std::vector<std::byte> frame;
  wire::encode_hello(frame, kModel);
  t.send(frame);
  Message m;
  if (!t.receive(deadline_after(5s), m) || wire::peek(m.view()).type != wire::MessageType::hello)
    FAIL("no HELLO answer");
  return t;
}

std::vector<std::byte> infer_frame(std::uint32_t id, TensorView<const float> x, CodecConfig cfg = [] {
  CodecConfig c;
  c.bits = wire::raw_f32_bits;
  return c;
}()) {
  FeatureCodec codec(cfg);
  std::vector<std::byte> frame;
  wire::encode_infer(frame, id, {kModel.model_id, kModel.split, 0}, codec, x);
  return frame;
}

// Waits (bounded) until `done` holds.
template <class F>
bool eventually(F done, std::chrono::milliseconds limit = 5s) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

}  // namespace

// --- the batcher on a virtual clock ------------------------------------------------------------

TEST_CASE("Batcher: a batch waits only for sources that sent recently, and only max_queue_delay, on virtual time", "[runtime][batcher]") {
  ThreeSources f;
  DynamicBatcher& b = *f.mb.batcher;
  VirtualClock& clock = f.mb.clock;
  auto& [sink_a, sink_b, sink_idle] = f.sinks;
  auto& [a, q, idle] = f.sources;
  // Sources that never sent (idle connections) hold nothing back: q's request runs at once.
  CHECK_FALSE(b.waiting_for_company());
  REQUIRE(b.submit(q, request(9, random_input(1, kHidden, 9))));
  CHECK(b.run_ready() == 1);
  REQUIRE(sink_b->take().size() == 1);
  CHECK(b.waiting_for_company());  // q was just answered: it may send again soon

  REQUIRE(b.submit(a, request(1, random_input(1, kHidden, 1))));
  CHECK(b.run_ready() == 0);  // q is quiet and warm: it could still join the batch
  clock.advance_by(999us);
  CHECK(b.run_ready() == 0);
  clock.advance_by(1us);
  CHECK(b.run_ready() == 1);  // waited max_queue_delay: runs alone
  auto got = sink_a->take();
  REQUIRE(got.size() == 1);
  CHECK(got[0].response);

  // Both sources with a request: nobody is quiet, waiting cannot help, the batch runs at once.
  REQUIRE(b.submit(a, request(2, random_input(1, kHidden, 2))));
  REQUIRE(b.submit(q, request(3, random_input(1, kHidden, 3))));
  CHECK(b.run_ready() == 1);
  CHECK(b.stats().batches == 3);
  CHECK(sink_a->take().size() == 1);
  CHECK(sink_b->take().size() == 1);

  // A deadline that passes while queued: answered `timeout`, never computed.
  REQUIRE(b.submit(a, request(4, random_input(1, kHidden, 4), clock.now() + 500us)));
  clock.advance_by(2ms);
  CHECK(b.run_ready() == 1);
  got = sink_a->take();
  REQUIRE(got.size() == 1);
  CHECK_FALSE(got[0].response);
  CHECK(got[0].code == errc::timeout);
  CHECK(b.stats().expired == 1);
  CHECK(b.stats().batches == 3);
  // A source quiet for longer than the warm window (100 x max_queue_delay) no longer counts.
  clock.advance_by(200ms);
  CHECK_FALSE(b.waiting_for_company());
  REQUIRE(b.submit(a, request(5, random_input(1, kHidden, 5))));
  CHECK(b.run_ready() == 1);
  CHECK(sink_idle->take().empty());
}

TEST_CASE("Batcher: a source that sends only now and then does not hold batches back, a quick one does", "[runtime][batcher]") {
  // A peer that sends every 20 ms is quiet most of the time; waiting max_queue_delay (1 ms) for
  // it would delay every other lone request and find company one time in twenty.
  ThreeSources f;
  DynamicBatcher& b = *f.mb.batcher;
  VirtualClock& clock = f.mb.clock;
  auto& [sink_a, sink_p, sink_r] = f.sinks;
  auto& [a, p, r] = f.sources;
  // p: a request every 20 ms. The first answer leaves its habit unknown: it still counts.
  REQUIRE(b.submit(p, request(1, random_input(1, kHidden, 1))));
  CHECK(b.run_ready() == 1);
  CHECK(b.waiting_for_company());
  for (std::uint32_t i = 0; i < 3; ++i) {
    clock.advance_by(20ms);
    REQUIRE(b.submit(p, request(2 + i, random_input(1, kHidden, 2))));
    CHECK(b.run_ready() == 1);
  }
  CHECK(sink_p->take().size() == 4);
  CHECK_FALSE(b.waiting_for_company());  // p is quiet and warm, but slow: nobody waits for it
  clock.advance_by(1ms);
  REQUIRE(b.submit(a, request(10, random_input(1, kHidden, 10))));
  CHECK(b.run_ready() == 1);  // at once
  CHECK(sink_a->take().size() == 1);

  // r sends again within 0.1 ms of each reply: a lone request (p's) waits for it. (a, whose
  // habit is unknown, leaves the warm window first.)
  clock.advance_by(200ms);
  for (std::uint32_t i = 0; i < 3; ++i) {
    REQUIRE(b.submit(r, request(20 + i, random_input(1, kHidden, 20))));
    CHECK(b.run_ready() == 1);
    clock.advance_by(100us);
  }
  CHECK(sink_r->take().size() == 3);
  REQUIRE(b.submit(p, request(11, random_input(1, kHidden, 11))));
  CHECK(b.run_ready() == 0);  // r may join
  REQUIRE(b.submit(r, request(30, random_input(1, kHidden, 30))));
  CHECK(b.run_ready() == 1);  // and did: one batch of two
  CHECK(sink_p->take().size() == 1);
  CHECK(sink_r->take().size() == 1);
  CHECK(b.stats().batches == 4 + 1 + 3 + 1);
}

TEST_CASE("Batcher: a worker waiting for company runs the batch as soon as it is full", "[runtime][batcher]") {
  // max_queue_delay of an hour: a worker that slept it out would miss the 20 s bound below. Two
  // tails: a slow one keeps the only worker busy while a and b queue a request each, so their
  // first batch runs with both and both are then warm (answered a moment ago).
  auto s = make_split(4);
  Sequential<float> slow;
  slow.add<Sleep>(300ms);
  for (std::size_t i = 0; i < s.tail.size(); ++i) slow.add(s.tail[i].clone());
  ModelRegistry registry;
  registry.add(kModel, s.tail);
  registry.add({"slow", 1, 0, 2}, slow);
  ServerOptions o;
  o.workers = 1;
  o.max_batch = 2;
  o.max_queue_delay = std::chrono::hours(1);
  DynamicBatcher b(registry, o);
  auto sink_a = std::make_shared<CollectingSink>(), sink_b = std::make_shared<CollectingSink>(),
       sink_z = std::make_shared<CollectingSink>();
  auto a = b.open_source(sink_a), bb = b.open_source(sink_b), z = b.open_source(sink_z);
  BatchRequest slow_request = request(1, random_input(1, kHidden, 1));
  slow_request.key = {"slow", 2};
  REQUIRE(b.submit(z, std::move(slow_request)));
  CHECK(eventually([&] { return b.stats().batches == 0 && b.stats().queue_depth == 0; }));  // z's batch running
  REQUIRE(b.submit(a, request(2, random_input(1, kHidden, 2))));
  REQUIRE(b.submit(bb, request(3, random_input(1, kHidden, 3))));
  REQUIRE(eventually([&] { return sink_a->size() == 1 && sink_b->size() == 1; }, 20s));
  CHECK(b.stats().batches == 2);  // z's, then a's and b's together
  for (int round = 0; round < 3; ++round) {
    // a's request: b and z are warm and quiet, so the worker waits for company (an hour at
    // most); b's request fills the batch, and the worker must run it at once.
    REQUIRE(b.submit(a, request(10 + round, random_input(1, kHidden, 10))));
    REQUIRE(b.submit(bb, request(20 + round, random_input(1, kHidden, 20))));
    REQUIRE(eventually([&] { return sink_a->size() == std::size_t(2 + round) && sink_b->size() == std::size_t(2 + round); }, 20s));
  }
  CHECK(b.stats().batches == 5);
  b.stop(0ms);
}

TEST_CASE("Batcher: batches are filled round-robin across sources, each source capped", "[runtime][batcher]") {
  auto s = make_split(5);
  ServerOptions o;
  o.max_batch = 4;
  o.max_pending_per_source = 8;
  // Every source's replies go into one log, in the order the workers deliver them (declared
  // before the batcher: a batcher answers what it still holds when it is destroyed).
  struct Log {
    std::mutex m;
    std::vector<std::pair<char, Collected>> order;
  } log;
  ManualBatcher mb(s.tail, o);
  DynamicBatcher& b = *mb.batcher;
  VirtualClock& clock = mb.clock;
  struct Tagged final : ReplySink {
    Tagged(Log& l, char t) : log(l), tag(t) {}
    Log& log;
    char tag;
    CollectingSink decode;
    void deliver(std::span<const std::byte> f, MemoryBudget::Reservation held) override {
      decode.deliver(f, std::move(held));
      std::lock_guard l(log.m);
      log.order.emplace_back(tag, decode.take().front());
    }
  };
  auto a = b.open_source(std::make_shared<Tagged>(log, 'a'));
  auto bb = b.open_source(std::make_shared<Tagged>(log, 'b'));
  auto c = b.open_source(std::make_shared<Tagged>(log, 'c'));
  int refused = 0;
  for (std::uint32_t i = 0; i < 10; ++i) refused += !b.submit(a, request(100 + i, random_input(1, kHidden, i)));
  CHECK(refused == 2);  // the flooder's 9th and 10th: over its cap of 8, answered at once
  REQUIRE(log.order.size() == 2);
  for (const auto& [tag, r] : log.order) CHECK(r.code == errc::overloaded);
  log.order.clear();
  REQUIRE(b.submit(bb, request(200, random_input(1, kHidden, 20))));
  REQUIRE(b.submit(bb, request(201, random_input(1, kHidden, 21))));
  REQUIRE(b.submit(c, request(300, random_input(1, kHidden, 30))));

  // 11 requests, 4 a batch: two full batches run at once; the last three wait for company while
  // b and c, answered, are quiet again, until max_queue_delay has passed.
  CHECK(b.run_ready() == 2);
  CHECK(log.order.size() == 8);
  clock.advance_by(o.max_queue_delay);
  CHECK(b.run_ready() == 1);
  REQUIRE(log.order.size() == 11);
  // First batch: a's oldest (the seed), then one from each of b and c, then a again; b's second
  // comes in the second batch, although a queued eight before any of them.
  std::string tags;
  for (const auto& [tag, r] : log.order) tags.push_back(tag);
  CHECK(tags.substr(0, 4) == "abca");
  CHECK(tags.find('b', 4) < 8);
  std::vector<std::uint32_t> a_ids;
  for (const auto& [tag, r] : log.order) {
    CHECK(r.response);
    if (tag == 'a') a_ids.push_back(r.request_id);
  }
  CHECK(std::is_sorted(a_ids.begin(), a_ids.end()));  // each source's own order is kept
  CHECK(a_ids.size() == 8);
  CHECK(b.stats().batches == 3);
  CHECK(b.stats().rejected_overloaded == 2);
}

TEST_CASE("Batcher: a request that breaks its layer is answered alone, its batch-mates are served", "[runtime][batcher]") {
  auto s = make_split(9);
  const auto how = GENERATE(How::runtime_error, How::bad_alloc);
  Sequential<float> tail;
  tail.add(throws_on(42.0f, how).clone());
  for (std::size_t i = 0; i < s.tail.size(); ++i) tail.add(s.tail[i].clone());
  ServerOptions o;
  o.max_batch = 8;
  ManualBatcher mb(tail, o);
  DynamicBatcher& b = *mb.batcher;
  auto sink = std::make_shared<CollectingSink>();
  auto src = b.open_source(sink);
  Tensor<float> poison = random_input(1, kHidden, 2);
  poison[3] = 42.0f;
  REQUIRE(b.submit(src, request(1, random_input(1, kHidden, 1))));
  REQUIRE(b.submit(src, request(2, std::move(poison))));
  REQUIRE(b.submit(src, request(3, random_input(1, kHidden, 3))));
  CHECK(b.run_ready() == 1);
  auto got = sink->take();
  REQUIRE(got.size() == 3);
  Sequential<float> ref = s.tail;
  for (const auto& r : got) {
    INFO("request " << r.request_id);
    if (r.request_id == 2) {
      CHECK_FALSE(r.response);
      CHECK(r.code == errc::internal);
      CHECK(r.message.find(how == How::bad_alloc ? "out of memory" : "layer bug reached") != std::string::npos);
    } else {
      REQUIRE(r.response);
      const Tensor<float> want = ref.predict(random_input(1, kHidden, r.request_id).cview());
      for (std::size_t j = 0; j < want.size(); ++j) CHECK(r.output[j] == want[j]);  // run alone: same order of sums
    }
  }
  CHECK(b.stats().isolated_reruns == 3);
  CHECK(b.stats().request_errors == 1);
}

TEST_CASE("Batcher: features that overflow the tail are answered non_finite, the rest of the batch is served", "[runtime][batcher]") {
  auto s = make_split(11);
  ManualBatcher mb(s.tail, {});
  DynamicBatcher& b = *mb.batcher;
  auto sink = std::make_shared<CollectingSink>();
  auto src = b.open_source(sink);
  Tensor<float> huge(Shape{1, kHidden}, 3e38f);  // finite, but the first Dense overflows
  REQUIRE(b.submit(src, request(1, random_input(2, kHidden, 1))));
  REQUIRE(b.submit(src, request(2, std::move(huge))));
  CHECK(b.run_ready() == 1);
  auto got = sink->take();
  REQUIRE(got.size() == 2);
  CHECK(got[0].response);
  CHECK(got[0].output.shape() == Shape{2, kOut});
  CHECK_FALSE(got[1].response);
  CHECK(got[1].code == errc::non_finite);
  CHECK(b.stats().batches == 1);  // one pass: only the overflowing rows are refused
}

// --- whole servers ---------------------------------------------------------------------------

TEST_CASE("Requests that overflow the tail cannot kill the server, over TCP, raw or quantized", "[runtime]") {
  auto s = make_split(13);
  CloudServer server;
  server.register_model(kModel, s.tail);
  auto listener = TcpListener::bind("127.0.0.1", 0);
  const auto port = listener.port();
  server.listen(std::move(listener));
  auto peer = greeted_peer(port);
  Message m;
  // fp32 3e38 everywhere; and int8 codes at the largest scale 8 bits accept.
  peer.send(infer_frame(1, Tensor<float>(Shape{1, kHidden}, 3e38f).cview()));
  REQUIRE(peer.receive(deadline_after(5s), m));
  CHECK(wire::decode_error(m.view()).code == errc::non_finite);
  CodecConfig q;
  q.bits = 8;
  FeatureCodec codec(q);
  float largest = std::numeric_limits<float>::max() / 255.0f;
  while (!valid_scale(largest, 8)) largest = std::nextafter(largest, 0.0f);
  codec.set_params(QuantParams::tensor(largest, 0, 8));
  std::vector<std::byte> frame;
  wire::encode_infer(frame, 2, {kModel.model_id, kModel.split, 0}, codec, Tensor<float>(Shape{1, kHidden}, 127 * largest).cview());
  peer.send(frame);
  REQUIRE(peer.receive(deadline_after(5s), m));
  CHECK(wire::decode_error(m.view()).code == errc::non_finite);
  // Still serving, the same connection and a new one.
  peer.send(infer_frame(3, random_input(1, kHidden, 3).cview()));
  REQUIRE(peer.receive(deadline_after(5s), m));
  CHECK(wire::peek(m.view()).type == wire::MessageType::response);
  EdgeClient client(s.head, [port] { return Channel(TcpTransport::connect("127.0.0.1", port)); }, edge_options());
  CHECK(client.infer(random_input(1, kIn, 4).cview(), deadline_after(5s)).path == AnswerPath::cloud);
  CHECK(server.stats().request_errors == 2);
}

#if EDGESPLIT_HAS_ZSTD  // the bomb is a zstd frame
TEST_CASE("Memory budget: a compressed frame that decodes past the budget is refused before decoding", "[runtime]") {
  auto s = make_split(17);
  Sequential<float> slow_tail;
  slow_tail.add<Sleep>(300ms);  // holds its request's memory while the others arrive
  for (std::size_t i = 0; i < s.tail.size(); ++i) slow_tail.add(s.tail[i].clone());
  ServerOptions so;
  so.limits.max_payload_bytes = 1 << 20;
  so.limits.max_elements = 4 << 20;            // 16 MiB of floats
  so.limits.max_decompressed_bytes = 16 << 20;
  so.memory_budget = 24 << 20;                 // room for one such request, not two
  CloudServer server(so);
  server.register_model(kModel, slow_tail);
  auto listener = TcpListener::bind("127.0.0.1", 0);
  const auto port = listener.port();
  server.listen(std::move(listener));
  auto peer = greeted_peer(port);
  std::vector<std::byte> bomb;
  {
    CodecConfig z;
    z.bits = wire::raw_f32_bits;
    z.lossless = wire::Lossless::zstd;
    z.limits = so.limits;
    const Tensor<float> zeros(Shape{(4u << 20) / kHidden, kHidden}, 0.0f);  // 16 MiB that zstd makes tiny
    bomb = infer_frame(0, zeros.cview(), z);
  }
  INFO("frame of " << bomb.size() << " bytes");
  REQUIRE(bomb.size() < 8192);
  constexpr int n = 6;
  for (int i = 0; i < n; ++i) {
    std::vector<std::byte> f = bomb;
    wire::store_le32(f.data() + 16, static_cast<std::uint32_t>(i + 1));  // request id
    wire::store_le32(f.data() + wire::frame_crc_offset, wire::frame_crc(f));
    peer.send(f);
  }
  int responses = 0, overloaded = 0;
  Message m;
  for (int i = 0; i < n; ++i) {
    REQUIRE(peer.receive(deadline_after(10s), m));
    const auto h = wire::peek(m.view());
    if (h.type == wire::MessageType::response) ++responses;
    else if (wire::decode_error(m.view()).code == errc::overloaded) ++overloaded;
  }
  CHECK(responses >= 1);
  CHECK(overloaded >= n - 2);  // the first holds the budget for 300 ms; the rest arrive meanwhile
  CHECK(responses + overloaded == n);
  const auto st = server.stats();
  CHECK(st.memory_peak <= so.memory_budget);
  CHECK(eventually([&] { return server.stats().memory_in_use == 0; }));
}
#endif

TEST_CASE("Memory budget: length prefixes allocate nothing, buffers grow as bytes arrive and go with their connection", "[runtime]") {
  auto s = make_split(19);
  ServerOptions so;
  so.stall_timeout = 20s;  // these peers sit inside frames on purpose
  CloudServer server(so);
  server.register_model(kModel, s.tail);
  auto listener = TcpListener::bind("127.0.0.1", 0);
  const auto port = listener.port();
  server.listen(std::move(listener));
  constexpr int peers = 20;
  std::vector<TcpTransport> open;
  for (int i = 0; i < peers; ++i) open.push_back(greeted_peer(port));
  const std::uint32_t announced = 60u << 20;  // under the 64 MiB cap
  for (auto& p : open) {
    const unsigned char prefix[4] = {announced & 0xFF, (announced >> 8) & 0xFF, (announced >> 16) & 0xFF, announced >> 24};
    REQUIRE(::send(p.native_handle(), prefix, 4, MSG_NOSIGNAL) == 4);
  }
  std::this_thread::sleep_for(100ms);
  CHECK(server.stats().memory_in_use == 0);  // 20 x 60 MiB announced, nothing held
  std::vector<char> part(100 * 1024, 'x');
  for (auto& p : open) {
    std::size_t sent = 0;
    while (sent < part.size()) {
      const auto w = ::send(p.native_handle(), part.data() + sent, part.size() - sent, MSG_NOSIGNAL);
      REQUIRE(w > 0);
      sent += static_cast<std::size_t>(w);
    }
  }
  // Each buffer holds what arrived, at most doubled: 20 x 2 x 100 KiB.
  CHECK(eventually([&] { return server.front_end_stats().bytes_received >= std::size_t(peers) * (part.size() + 4); }));
  const auto held = server.stats().memory_in_use;
  CHECK(held >= std::size_t(peers) * part.size());
  CHECK(held <= std::size_t(peers) * 2 * part.size() + std::size_t(peers) * 256);
  open.clear();  // the peers leave mid-frame
  CHECK(eventually([&] { return server.stats().memory_in_use == 0; }));
  CHECK(eventually([&] { return server.stats().connections_open == 0; }));
}

TEST_CASE("Connections: stalls, silence before HELLO, idleness and the connection limit end only their own", "[runtime]") {
  auto s = make_split(23);
  LogCapture log;
  ServerOptions so;
  so.stall_timeout = 200ms;
  so.handshake_timeout = 300ms;
  so.idle_timeout = 400ms;
  so.max_connections = 6;
  so.log = log.sink();
  CloudServer server(so);
  server.register_model(kModel, s.tail);
  auto listener = TcpListener::bind("127.0.0.1", 0);
  const auto port = listener.port();
  server.listen(std::move(listener));
  auto opts = edge_options();
  opts.keepalive = 100ms;  // keeps the well-behaved edge's connection open through it all
  EdgeClient good(s.head, [port] { return Channel(TcpTransport::connect("127.0.0.1", port)); }, opts);
  REQUIRE(good.connected());

  auto stalled = greeted_peer(port);
  const std::vector<std::byte> frame = infer_frame(1, random_input(1, kHidden, 1).cview());
  {
    std::vector<unsigned char> head(4 + frame.size() / 2);
    const auto n = static_cast<std::uint32_t>(frame.size());
    std::memcpy(head.data(), &n, 4);
    std::memcpy(head.data() + 4, frame.data(), frame.size() / 2);
    REQUIRE(::send(stalled.native_handle(), head.data(), head.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(head.size()));
  }
  auto silent = TcpTransport::connect("127.0.0.1", port);  // never says HELLO
  auto idle = greeted_peer(port);                          // says HELLO, then nothing
  Message m;
  {
    // A large message before HELLO: refused from its length prefix, nothing read or held for it.
    auto eager = TcpTransport::connect("127.0.0.1", port);
    const std::uint32_t announced = 1u << 20;
    REQUIRE(::send(eager.native_handle(), &announced, 4, MSG_NOSIGNAL) == 4);  // little-endian host
    REQUIRE(eager.receive(deadline_after(5s), m));
    const auto e = wire::decode_error(m.view());
    CHECK(e.code == errc::unsupported);
    CHECK(e.message.find("HELLO must come first") != std::string::npos);
    expect_errc(errc::unreachable, [&] { (void)eager.receive(deadline_after(3s), m); });
  }
  expect_errc(errc::unreachable, [&] { (void)silent.receive(deadline_after(3s), m); });
  expect_errc(errc::unreachable, [&] { (void)stalled.receive(deadline_after(3s), m); });
  expect_errc(errc::unreachable, [&] { (void)idle.receive(deadline_after(3s), m); });
  const auto f = server.front_end_stats();
  CHECK(f.dropped_stalled == 1);
  CHECK(f.dropped_idle == 2);
  CHECK(f.dropped_protocol == 1);
  CHECK(log.has("stalled inside a frame"));
  CHECK(log.has("no HELLO within the handshake timeout"));

  // The limit: 6 open (the good edge and 5 more); the 7th is told why and closed.
  std::vector<TcpTransport> fill;
  for (int i = 0; i < 5; ++i) fill.push_back(greeted_peer(port));
  auto extra = TcpTransport::connect("127.0.0.1", port);
  REQUIRE(extra.receive(deadline_after(5s), m));
  const auto e = wire::decode_error(m.view());
  CHECK(e.code == errc::overloaded);
  CHECK(e.message.find("connection limit") != std::string::npos);
  expect_errc(errc::unreachable, [&] { (void)extra.receive(deadline_after(3s), m); });
  CHECK(server.stats().connections_refused == 1);
  fill.pop_back();
  CHECK(eventually([&] { return server.stats().connections_open == 5; }));
  auto again = greeted_peer(port);  // room again
  // All along, the good edge was served and never dropped.
  CHECK(good.infer(random_input(1, kIn, 2).cview(), deadline_after(5s)).path == AnswerPath::cloud);
  CHECK(good.stats().reconnects == 0);
}

TEST_CASE("A peer that never reads its replies is dropped, its neighbour's answers keep coming", "[runtime]") {
  auto s = make_split(29);
  Rng rng(4);
  Sequential<float> wide_tail = s.tail;
  wide_tail.add<Dense<float>>(kOut, 4096, rng);  // 16 KiB replies fill the rogue's buffers fast
  ServerOptions so;
  so.max_unread_reply_bytes = 256 << 10;
  so.max_pending_per_source = 1024;
  so.queue_capacity = 4096;
  CloudServer server(so);
  server.register_model(kModel, wide_tail);
  auto listener = TcpListener::bind("127.0.0.1", 0);
  const auto port = listener.port();
  server.listen(std::move(listener));
  TcpOptions small;
  small.send_timeout = 2s;
  auto rogue = greeted_peer(port, small);
  const std::vector<std::byte> frame = infer_frame(1, random_input(1, kHidden, 1).cview());
  int sent = 0;
  for (; sent < 4000; ++sent) {
    try {
      rogue.send(frame);
    } catch (const error&) {
      break;  // dropped while still sending: what the server must do
    }
    if (server.front_end_stats().dropped_unread != 0) break;
  }
  INFO(sent << " requests sent before the drop");
  CHECK(eventually([&] { return server.front_end_stats().dropped_unread == 1; }));
  auto opts = edge_options();
  auto whole = s.whole;
  whole.add<Dense<float>>(kOut, 4096, rng);
  EdgeClient good(s.head, [port] { return Channel(TcpTransport::connect("127.0.0.1", port)); }, opts);
  for (int i = 0; i < 5; ++i) CHECK(good.infer(random_input(1, kIn, 10 + i).cview(), deadline_after(5s)).path == AnswerPath::cloud);
  CHECK(server.stats().memory_peak <= so.memory_budget);
}

TEST_CASE("Thousands of messages in one write are handled in turns, every one answered, the neighbours served meanwhile", "[runtime]") {
  auto s = make_split(33);
  CloudServer server;
  server.register_model(kModel, s.tail);
  auto listener = TcpListener::bind("127.0.0.1", 0);
  const auto port = listener.port();
  server.listen(std::move(listener));
  auto pinger = greeted_peer(port);
  constexpr int pings = 3000;
  std::vector<std::byte> burst;
  for (int i = 0; i < pings; ++i) {
    std::vector<std::byte> f;
    wire::encode_ping(f, static_cast<std::uint32_t>(i + 1), static_cast<std::uint64_t>(i));
    const auto n = static_cast<std::uint32_t>(f.size());
    for (int k = 0; k < 4; ++k) burst.push_back(std::byte(static_cast<unsigned char>(n >> (8 * k))));
    burst.insert(burst.end(), f.begin(), f.end());
  }
  std::atomic<int> pongs{0};
  std::thread reader([&] {
    Message m;
    for (int i = 0; i < pings; ++i) {
      if (!pinger.receive(deadline_after(20s), m)) return;
      if (wire::peek(m.view()).request_id == static_cast<std::uint32_t>(i + 1)) ++pongs;  // in order
    }
  });
  std::size_t sent = 0;
  while (sent < burst.size()) {
    const auto w = ::send(pinger.native_handle(), burst.data() + sent, burst.size() - sent, MSG_NOSIGNAL);
    REQUIRE(w > 0);
    sent += static_cast<std::size_t>(w);
  }
  EdgeClient good(s.head, [port] { return Channel(TcpTransport::connect("127.0.0.1", port)); }, edge_options());
  for (int i = 0; i < 5; ++i) CHECK(good.infer(random_input(1, kIn, i).cview(), deadline_after(10s)).path == AnswerPath::cloud);
  reader.join();
  CHECK(pongs == pings);
  CHECK(server.front_end_stats().dropped_stalled == 0);
}

TEST_CASE("One pipelining connection gets overloaded, its well-behaved neighbour does not", "[runtime]") {
  auto s = make_split(31);
  Sequential<float> slow_tail;
  slow_tail.add<Sleep>(2ms);
  for (std::size_t i = 0; i < s.tail.size(); ++i) slow_tail.add(s.tail[i].clone());
  ServerOptions so;
  so.max_batch = 8;
  so.max_pending_per_source = 32;
  CloudServer server(so);
  server.register_model(kModel, slow_tail);
  auto listener = TcpListener::bind("127.0.0.1", 0);
  const auto port = listener.port();
  server.listen(std::move(listener));
  auto flooder = greeted_peer(port);
  const std::vector<std::byte> frame = infer_frame(1, random_input(1, kHidden, 1).cview());
  constexpr int flood = 400;
  std::thread reader([&] {
    Message m;
    for (int i = 0; i < flood; ++i)
      if (!flooder.receive(deadline_after(20s), m)) break;
  });
  for (int i = 0; i < flood; ++i) flooder.send(frame);
  EdgeClient good(s.head, [port] { return Channel(TcpTransport::connect("127.0.0.1", port)); }, edge_options());
  int cloud = 0;
  for (int i = 0; i < 20; ++i) cloud += good.infer(random_input(1, kIn, i).cview(), deadline_after(10s)).path == AnswerPath::cloud;
  reader.join();
  CHECK(cloud == 20);
  CHECK(server.stats().rejected_overloaded >= 1);  // the flooder's share was capped
  CHECK(good.stats().fallbacks == 0);
}

TEST_CASE("Out of file descriptors, the server refuses without spinning and accepts again once they free up", "[runtime]") {
  auto s = make_split(37);
  CloudServer server;
  server.register_model(kModel, s.tail);
  auto listener = TcpListener::bind("127.0.0.1", 0);
  const auto port = listener.port();
  server.listen(std::move(listener));
  {
    // One round trip first: the server's threads are running before descriptors run out (a
    // sanitizer's first check of a thread's state needs a descriptor of its own).
    EdgeClient first(s.head, [port] { return Channel(TcpTransport::connect("127.0.0.1", port)); }, edge_options());
    REQUIRE(first.infer(random_input(1, kIn, 2).cview(), deadline_after(5s)).path == AnswerPath::cloud);
  }
  // and its connection closed on the server's side too, or that descriptor would free up below.
  REQUIRE(eventually([&] { return server.stats().connections_open == 0; }));
  rlimit saved{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &saved) == 0);
  // Count the descriptors in use, then allow 40 more, and take all but one.
  int probe = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  REQUIRE(probe >= 0);
  ::close(probe);
  rlimit low = saved;
  low.rlim_cur = static_cast<rlim_t>(probe + 40);
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
  std::vector<int> hogs;
  for (int fd; (fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;) hogs.push_back(fd);
  ::close(hogs.back());
  hogs.pop_back();
  // The last free descriptor goes to a client socket: the server's accept meets EMFILE.
  const int client = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(client >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(client, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  const bool refused = eventually([&] { return server.front_end_stats().refused_descriptors >= 1; });
  char byte;
  const auto r = ::recv(client, &byte, 1, 0);  // the server closed it: end of stream
  ::close(client);
  for (int fd : hogs) ::close(fd);
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &saved) == 0);
  CHECK(refused);
  CHECK(r == 0);
  // Descriptors are free again: a new edge is served.
  EdgeClient good(s.head, [port] { return Channel(TcpTransport::connect("127.0.0.1", port)); }, edge_options());
  CHECK(good.infer(random_input(1, kIn, 1).cview(), deadline_after(5s)).path == AnswerPath::cloud);
}

TEST_CASE("HELLO: a head that does not fit the tail is refused at connect time, and the edge says why", "[runtime]") {
  auto s = make_split(41);
  LogCapture log;
  ServerOptions so;
  so.log = log.sink();
  CloudServer server(so);
  server.register_model(kModel, s.tail);
  const auto connector = [&server] {
    auto [a, b] = InProcTransport::make_pair();
    server.serve(std::move(b));
    return Channel(std::move(a));
  };
  SECTION("features of another width") {
    auto [head3, tail3] = s.whole.split(3);  // produces 12 per sample; the split-2 tail takes 16
    EdgeClient edge(head3, connector, edge_options());
    CHECK_FALSE(edge.connected());
    CHECK(edge.feature_shape() == std::vector<std::size_t>{12});
    CHECK(edge.last_error().find("produces features of shape [12] per sample; the tail takes [16]") != std::string::npos);
    auto r = edge.submit(random_input(1, kIn, 1).cview(), deadline_after(1s));
    try {
      (void)r.get();
      FAIL("expected the refusal");
    } catch (const error& e) {
      CHECK(e.code() == errc::unreachable);
      CHECK(std::string(e.what()).find("the tail takes [16]") != std::string::npos);  // the cloud's text reaches the caller
    }
    CHECK(log.has("refused HELLO"));
    CHECK(server.stats().hellos_refused >= 1);  // the client retries in the background: maybe more
  }
  SECTION("another tail fingerprint") {
    auto opts = edge_options();
    Sequential<float> other = mlp({kHidden, 7, kOut}, 1);  // another architecture
    opts.tail_fingerprint = model_fingerprint(other, input_signature(other), 1);
    EdgeClient edge(s.head, connector, opts);
    CHECK_FALSE(edge.connected());
    CHECK(edge.last_error().find("tail fingerprint") != std::string::npos);
    CHECK(edge.last_error().find("Dense(16 -> 12)") != std::string::npos);  // what the cloud serves
  }
  SECTION("the right fingerprint is accepted") {
    auto opts = edge_options();
    opts.tail_fingerprint = model_fingerprint(s.tail, input_signature(s.tail), kModel.major);
    EdgeClient edge(s.head, connector, opts);
    CHECK(edge.connected());
    CHECK(edge.last_error().empty());
    CHECK(edge.infer(random_input(1, kIn, 1).cview(), deadline_after(5s)).path == AnswerPath::cloud);
  }
}

TEST_CASE("Weights that do not match are refused loudly, on the cloud and on the edge", "[runtime]") {
  auto s = make_split(43);
  LogCapture log;
  ServerOptions so;
  so.log = log.sink();
  CloudServer server(so);
  server.register_model(kModel, s.tail);
  // The cloud's own update: a wrong shape or an unknown name changes nothing and names the tensor.
  std::vector<wire::NamedTensor> bad(1);
  bad[0].name = "0.weight";
  bad[0].value = Tensor<float>(Shape{3, 3}, 1.0f);
  expect_errc(errc::shape_mismatch, [&] { server.update_weights(kModel.model_id, kModel.split, 1, bad); });
  bad[0].name = "9.weight";
  expect_errc(errc::invalid_argument, [&] { server.update_weights(kModel.model_id, kModel.split, 1, bad); });
  // A push to the edge whose shapes are not the head's: refused, counted, reported back.
  EdgeClient edge(s.head, [&server] {
    auto [a, b] = InProcTransport::make_pair();
    server.serve(std::move(b));
    return Channel(std::move(a));
  }, edge_options());
  REQUIRE(edge.connected());
  bad[0].name = "0.weight";
  CHECK(server.push_weights(kModel, bad) == 1);
  CHECK(eventually([&] { return edge.stats().weights_refused == 1; }));
  CHECK(edge.last_error().find("parameter '0.weight' is [16, 24], the push has [3, 3]") != std::string::npos);
  CHECK(eventually([&] { return log.has("reports shape_mismatch: weights push refused"); }));
  CHECK(edge.stats().weight_updates == 0);
  CHECK(edge.infer(random_input(1, kIn, 1).cview(), deadline_after(5s)).path == AnswerPath::cloud);
}

TEST_CASE("Steady-state serving over TCP allocates nothing on the server", "[runtime][alloc]") {
#if !EDGESPLIT_TEST_COUNTS_ALLOCATIONS
  WARN("allocation counting is not available in this build (sanitizer allocator)");
  SUCCEED();
#else
  auto s = make_split(47);
  CloudServer server;
  server.register_model(kModel, s.tail);
  auto listener = TcpListener::bind("127.0.0.1", 0);
  const auto port = listener.port();
  server.listen(std::move(listener));
  auto peer = greeted_peer(port);
  const std::vector<std::byte> frame = infer_frame(5, random_input(1, kHidden, 5).cview());
  Message m;
  const auto round_trip = [&] {
    peer.send(frame);
    if (!peer.receive(deadline_after(5s), m)) FAIL("no reply");
  };
  for (int i = 0; i < 200; ++i) round_trip();  // warm up: buffers, pools, the worker's tail copy
  REQUIRE(wire::peek(m.view()).type == wire::MessageType::response);
  const long long before = edgesplit_test::allocations();
  for (int i = 0; i < 200; ++i) round_trip();
  const long long after = edgesplit_test::allocations();
  CHECK(after - before == 0);
#endif
}

#if EDGESPLIT_HAS_TLS
TEST_CASE("TLS on the event loop: mutual TLS admits certified edges only, answers equal the whole model", "[runtime][tls]") {
  const auto& pki = edgesplit_test::pki();
  auto s = make_split(53);
  LogCapture log;
  ServerOptions so;
  so.log = log.sink();
  CloudServer server(so);
  server.register_model(kModel, s.tail);
  auto listener = TcpListener::bind("127.0.0.1", 0);
  const auto port = listener.port();
  server.listen(std::move(listener), TlsContext::server(pki.server(/*mutual=*/true)));

  const TlsContext certified = TlsContext::client(pki.client(/*with_certificate=*/true));
  EdgeClient edge(s.head, [&] { return Channel(TlsTransport::connect("127.0.0.1", port, certified)); }, edge_options());
  REQUIRE(edge.connected());
  for (int i = 0; i < 20; ++i) {
    const auto x = random_input(1 + i % 3, kIn, 100 + i);
    const InferResult r = edge.infer(x.cview(), deadline_after(5s));
    REQUIRE(r.path == AnswerPath::cloud);
    const Tensor<float> want = s.whole.predict(x.cview());
    for (std::size_t j = 0; j < want.size(); ++j) CHECK(std::abs(r.output[j] - want[j]) <= 1e-5f * (1 + std::abs(want[j])));
  }

  // Without a certificate: TLS 1.3 lets the client finish its handshake, the server refuses it,
  // and the edge never gets its HELLO answered.
  const TlsContext anonymous = TlsContext::client(pki.client(/*with_certificate=*/false));
  EdgeClient stranger(s.head, [&] { return Channel(TlsTransport::connect("127.0.0.1", port, anonymous)); }, edge_options());
  CHECK_FALSE(stranger.connected());
  CHECK_FALSE(stranger.last_error().empty());
  // Plain TCP to the TLS port: not TLS, dropped.
  auto plain = TcpTransport::connect("127.0.0.1", port);
  std::vector<std::byte> hello;
  wire::encode_hello(hello, kModel);
  plain.send(hello);
  Message m;
  try {
    while (plain.receive(deadline_after(3s), m)) {
    }
    FAIL("the server kept a plain-TCP peer on its TLS port");
  } catch (const error& e) {
    CHECK((e.code() == errc::unreachable || e.code() == errc::corrupt_frame || e.code() == errc::too_large));
  }
  CHECK(eventually([&] { return log.has("TLS with"); }));
  CHECK(server.front_end_stats().dropped_protocol >= 2);
  CHECK(edge.infer(random_input(1, kIn, 7).cview(), deadline_after(5s)).path == AnswerPath::cloud);
}
#endif

// --- the server fuzz target's seed corpus ------------------------------------------------------

namespace {
// A connection's byte stream: each message behind its 4-byte length, as the front end frames them.
std::vector<std::byte> stream(std::initializer_list<std::vector<std::byte>> messages) {
  std::vector<std::byte> out;
  for (const auto& m : messages) {
    const auto n = static_cast<std::uint32_t>(m.size());
    for (int i = 0; i < 4; ++i) out.push_back(std::byte(static_cast<unsigned char>(n >> (8 * i))));
    out.insert(out.end(), m.begin(), m.end());
  }
  return out;
}
// The seeds, by name, with the RESPONSEs each must get (the fuzz server serves "toy" at split 2,
// 6 features per sample).
std::vector<std::pair<std::string, std::pair<std::vector<std::byte>, std::size_t>>> server_seeds() {
  const wire::ModelIdentity toy{"toy", 1, 0, 2};
  std::vector<std::byte> hello, hello_check_bad, hello_other, ping;
  wire::encode_hello(hello, toy, 1);
  wire::encode_hello(hello_check_bad, toy, 1, {0, {7}});
  wire::encode_hello(hello_other, {"other", 1, 0, 2}, 1);
  wire::encode_ping(ping, 9, 1234);
  CodecConfig raw;
  raw.bits = wire::raw_f32_bits;
  CodecConfig int4;
  int4.bits = 4;
#if EDGESPLIT_HAS_ZSTD
  CodecConfig bomb;
  bomb.bits = wire::raw_f32_bits;
  bomb.lossless = wire::Lossless::zstd;
  bomb.limits = edgesplit_fuzz::fuzz_limits();
#endif
  const auto infer = [&](std::uint32_t id, const Tensor<float>& x, CodecConfig cfg) {
    FeatureCodec c(cfg);
    std::vector<std::byte> f;
    wire::encode_infer(f, id, {"toy", 2, 0}, c, x.cview());
    return f;
  };
  const auto x = random_input(2, 6, 1);
  std::vector<std::pair<std::string, std::pair<std::vector<std::byte>, std::size_t>>> seeds;
  seeds.push_back({"hello-infer-ping", {stream({hello, infer(2, x, raw), infer(3, x, int4), ping}), 2}});
  seeds.push_back({"infer-before-hello", {stream({infer(2, x, raw), hello}), 0}});
  seeds.push_back({"hello-unknown-model", {stream({hello_other, infer(2, x, raw)}), 0}});
  seeds.push_back({"hello-wrong-shape", {stream({hello_check_bad, infer(2, x, raw)}), 0}});
  seeds.push_back({"infer-overflow", {stream({hello, infer(2, Tensor<float>(Shape{1, 6}, 3e38f), raw), infer(3, x, raw)}), 1}});
  seeds.push_back({"infer-wrong-width", {stream({hello, infer(2, random_input(1, 5, 2), raw), infer(3, x, raw)}), 1}});
#if EDGESPLIT_HAS_ZSTD  // without zstd the corpus file is still replayed, with no count expected
  seeds.push_back({"infer-zstd-4mib", {stream({hello, infer(2, Tensor<float>(Shape{(1u << 20) / 6, 6}, 0.0f), bomb)}), 1}});
#endif
  std::vector<std::byte> garbage(64);
  Rng rng(5);
  for (auto& b : garbage) b = std::byte(rng.below(256));
  seeds.push_back({"hello-garbage", {stream({hello, garbage, infer(3, x, raw)}), 0}});
  return seeds;
}
}  // namespace

TEST_CASE("The server fuzz corpus replays through the fuzzer's entry point", "[runtime][fuzz]") {
  namespace fs = std::filesystem;
  const auto seeds = server_seeds();
  std::size_t replayed = 0;
  for (const auto& e : fs::directory_iterator(EDGESPLIT_SERVER_CORPUS_DIR)) {
    if (!e.is_regular_file()) continue;
    std::ifstream in(e.path(), std::ios::binary);
    const std::vector<char> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto o = edgesplit_fuzz::serve_connection(std::as_bytes(std::span(raw)));
    ++replayed;
    const std::string name = e.path().filename().string();
    INFO(name);
    for (const auto& [seed, expect] : seeds)
      if (seed == name) CHECK(o.responses == expect.second);
  }
  CHECK(replayed >= seeds.size());
}

// Writes the seed corpus; run by hand after a protocol change:
//   edgesplit_tests "[.generate-server-corpus]"
TEST_CASE("Generate the server fuzz seed corpus", "[.generate-server-corpus]") {
  namespace fs = std::filesystem;
  const fs::path dir = EDGESPLIT_SERVER_CORPUS_DIR;
  fs::create_directories(dir);
  for (const auto& [name, seed] : server_seeds())
    std::ofstream(dir / name, std::ios::binary)
        .write(reinterpret_cast<const char*>(seed.first.data()), static_cast<std::streamsize>(seed.first.size()));
}

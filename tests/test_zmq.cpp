// Tests for the ZeroMQ transport (the transport conformance suite, transport_conformance.hpp, over
// tcp and ipc; then what is particular to ZeroMQ), CURVE keys and ZAP, and the broker/worker
// cluster (transport/zmq.hpp, transport/zmq_curve.hpp, runtime/zmq_broker.hpp,
// runtime/zmq_worker.hpp).
// Loopback TCP and ipc under a temporary directory only; keys are generated at run time; every
// wait is bounded, and heartbeats are shortened so that failures are detected in well under a
// second.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "edgesplit/edgesplit.hpp"
#include "edgesplit/runtime/edge_client.hpp"
#include "edgesplit/runtime/zmq_broker.hpp"
#include "edgesplit/runtime/zmq_worker.hpp"
#include "edgesplit/transport/zmq.hpp"
#include "edgesplit/transport/zmq_curve.hpp"
#include "edgesplit/wire/cluster_protocol.hpp"
#include "edgesplit/wire/protocol.hpp"
#include "model_fixtures.hpp"
#include "test_util.hpp"
#include "transport_conformance.hpp"

using namespace edgesplit;
using namespace std::chrono_literals;
using edgesplit_test::expect_errc;

// libzmq (and libsodium, its CURVE crypto) is not built with ThreadSanitizer: libzmq hands messages between our threads and its I/O
// threads through lock-free queues whose atomics TSan cannot see, so memory libzmq allocates in
// one thread and copies or frees in another looks like a race inside libzmq. Those accesses are
// libzmq's, not ours: TSan is told to ignore what libzmq itself calls (our own code stays
// checked, including every buffer we read from or hand to it).
#if defined(__SANITIZE_THREAD__)
#define EDGESPLIT_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define EDGESPLIT_TEST_TSAN 1
#endif
#endif
#ifdef EDGESPLIT_TEST_TSAN
extern "C" const char* __tsan_default_suppressions() { return "called_from_lib:libzmq.so\ncalled_from_lib:libsodium.so\n"; }
#endif

namespace {

using edgesplit_test::mlp;
using edgesplit_test::random_input;
using edgesplit_test::Sleep;

constexpr std::size_t kIn = 24, kOut = 5;
const wire::ModelIdentity kModel{"toy", 1, 0, 2};

struct Split {
  Sequential<float> whole, head, tail;
};
Split make_split(std::chrono::milliseconds tail_sleep = 0ms) {
  Split s;
  s.whole = mlp({kIn, 16, 12, kOut}, 7);
  auto [h, t] = s.whole.split(kModel.split);
  s.head = std::move(h);
  s.tail = std::move(t);
  if (tail_sleep > 0ms) s.tail.add<Sleep>(tail_sleep);
  return s;
}

// Batched on a worker, rows may be summed in another order than locally: each output is within
// 2 gamma_n sum|x_i w_i| of the other, far below 1e-5 relative here (n <= 16, terms of order 1).
bool close_to(const Tensor<float>& got, const Tensor<float>& want) {
  if (got.shape() != want.shape()) return false;
  for (std::size_t j = 0; j < want.size(); ++j)
    if (std::abs(got[j] - want[j]) > 1e-5f * (1 + std::abs(want[j]))) return false;
  return true;
}

// Polls `done` until it holds or `limit` passes; returns whether it held.
bool eventually(const std::function<bool()>& done, std::chrono::milliseconds limit = 15s) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    if (done()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return done();
}

// Keys of one cluster, generated now: broker, two allowed clients, workers, and outsiders.
struct Keys {
  CurveKeyPair broker = generate_curve_keypair();
  CurveKeyPair client = generate_curve_keypair();
  CurveKeyPair client2 = generate_curve_keypair();
  CurveKeyPair worker = generate_curve_keypair();
  CurveKeyPair stranger = generate_curve_keypair();  // on no allow-list
};

constexpr auto kHeartbeat = 100ms;

BrokerOptions broker_options(const Keys& k) {
  BrokerOptions o;
  o.frontend = "tcp://127.0.0.1:*";
  o.backend = "tcp://127.0.0.1:*";
  o.curve = k.broker;
  o.client_keys = {k.client.public_key, k.client2.public_key};
  o.worker_keys = {k.worker.public_key};
  o.heartbeat_interval = kHeartbeat;
  o.liveness = 3;
  return o;
}

WorkerOptions worker_options(const Keys& k, const ZmqBroker& b, std::uint32_t capacity = 16) {
  WorkerOptions o;
  o.broker = b.backend_endpoint();
  o.curve = CurveClientKeys{k.worker, k.broker.public_key};
  o.heartbeat_interval = kHeartbeat;
  o.liveness = 3;
  o.reconnect_initial = 20ms;
  o.reconnect_max = 200ms;
  o.capacity = capacity;
  o.server.max_batch = 8;
  o.server.max_queue_delay = 500us;
  return o;
}

std::unique_ptr<ZmqWorker> start_worker(const Keys& k, const ZmqBroker& b, const Split& s, std::uint32_t capacity = 16) {
  auto w = std::make_unique<ZmqWorker>(worker_options(k, b, capacity));
  w->register_model(kModel, s.tail);
  w->start();
  return w;
}

ZmqOptions client_zmq(const CurveKeyPair& own, const CurveKeyPair& broker) {
  ZmqOptions o;
  o.curve_client = CurveClientKeys{own, broker.public_key};
  o.reconnect_interval = 20ms;
  return o;
}

EdgeOptions edge_options() {
  EdgeOptions o;
  o.model = kModel;
  o.codec.bits = wire::raw_f32_bits;
  o.connect_timeout = 5000ms;
  o.backoff_initial = 10ms;
  o.backoff_max = 100ms;
  return o;
}

// A raw client socket, to send what EdgeClient never would.
struct RawClient {
  std::shared_ptr<zmq::context_t> ctx = std::make_shared<zmq::context_t>(1);
  zmq::socket_t s;
  RawClient(const std::string& endpoint, const std::optional<CurveClientKeys>& curve) : s(*ctx, zmq::socket_type::dealer) {
    s.set(zmq::sockopt::linger, 0);
    s.set(zmq::sockopt::heartbeat_ivl, 500);  // as ZmqTransport does (1 s there): a dead
    s.set(zmq::sockopt::heartbeat_timeout, 1500);  // connection is closed and re-established
    if (curve) configure_curve_client(s, *curve);
    s.connect(endpoint);
  }
  void send(std::span<const std::byte> b, bool more = false) {
    REQUIRE(s.send(zmq::buffer(b.data(), b.size()), more ? zmq::send_flags::sndmore : zmq::send_flags::none));
  }
  // The next single-part message, or nullopt after `wait`.
  std::optional<std::vector<std::byte>> receive(std::chrono::milliseconds wait) {
    zmq_pollitem_t item{s.handle(), 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, static_cast<long>(wait.count())) <= 0) return std::nullopt;
    zmq::message_t m;
    if (!s.recv(m, zmq::recv_flags::dontwait)) return std::nullopt;
    const auto* p = static_cast<const std::byte*>(m.data());
    return std::vector<std::byte>(p, p + m.size());
  }
};

std::vector<std::byte> infer_frame(std::uint32_t id, std::uint64_t seed) {
  CodecConfig cfg;
  cfg.bits = wire::raw_f32_bits;
  FeatureCodec codec(cfg);
  Split s = make_split();
  const auto x = random_input(1, kIn, seed);
  const TensorView<const float> f = s.head.forward(x.cview());
  std::vector<std::byte> out;
  wire::encode_infer(out, id, {kModel.model_id, kModel.split, 0}, codec, f);
  return out;
}

std::filesystem::path temp_dir(const char* name) {
  const auto d = std::filesystem::temp_directory_path() /
                 ("edgesplit-zmq-" + std::to_string(::getpid()) + "-" + name);
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

}  // namespace

// --- The conformance suite ---------------------------------------------------------------------

namespace {

namespace conf = edgesplit_test::conformance;

ZmqOptions conformance_options(std::size_t cap, bool bounded) {
  ZmqOptions o;
  o.max_message_bytes = cap;
  if (bounded) o.high_water_mark = 4;
  return o;
}

// What ZeroMQ does differently, as zmq.hpp documents it: libzmq refuses a message over the
// receiver's cap itself (the connection is dropped and made again), sockets linger 0 (messages
// still queued at close() are dropped), and connection loss is hidden (only deadlines pass).
constexpr conf::Traits zmq_traits{
    .over_cap_closes = false,
    .peer_sees_close = false,
    .peer_close_wakes_sender = false,
    .allocates = "libzmq allocates the body of every message sent that is longer than what a zmq_msg_t holds "
                 "inline (33 bytes on 64-bit systems), a buffer of its own for a message received that is "
                 "larger than its 8 KiB read batch, and now and then a chunk for its pipes and command "
                 "mailboxes, on its I/O thread too"};

/// A DEALER bound at `endpoint` (end b) and one connected to it (end a).
struct ZmqPair {
  ZmqPair(const std::string& endpoint, const conf::PairOptions& o)
      : b(ZmqTransport::bind(endpoint, conformance_options(o.b_max, o.bounded))),
        a(ZmqTransport::connect(b.endpoint(), conformance_options(o.a_max, o.bounded))) {}
  const Clock& clock() const { return SteadyClock::instance(); }
  ZmqTransport b, a;  // b first: a connects to where it is bound
};

struct ZmqOverTcp : ZmqPair {
  static constexpr const char* name = "ZeroMQ over tcp";
  static constexpr conf::Traits traits = zmq_traits;
  static bool available() { return true; }
  explicit ZmqOverTcp(const conf::PairOptions& o) : ZmqPair("tcp://127.0.0.1:*", o) {}
};

struct ZmqOverIpc : ZmqPair {
  static constexpr const char* name = "ZeroMQ over ipc";
  static constexpr conf::Traits traits = zmq_traits;
  static bool available() { return true; }
  explicit ZmqOverIpc(const conf::PairOptions& o) : ZmqPair(next_endpoint(), o) {}
  /// A socket of its own in a directory of this process's, removed at exit.
  static std::string next_endpoint() {
    struct Dir {
      std::filesystem::path path = temp_dir("conformance");
      ~Dir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
      }
    };
    static const Dir dir;
    static std::atomic<int> n{0};
    return "ipc://" + (dir.path / ("pair-" + std::to_string(n++) + ".sock")).string();
  }
};

}  // namespace

EDGESPLIT_TRANSPORT_CONFORMANCE("[zmq]", ZmqOverTcp, ZmqOverIpc)

TEST_CASE("CURVE keys: generated, written, read back and validated", "[zmq]") {
  REQUIRE(curve_available());
  const auto dir = temp_dir("keys");
  const CurveKeyPair k = generate_curve_keypair();
  CHECK(k.public_key.size() == 40);
  CHECK(k.secret_key.size() == 40);
  CHECK(curve_public_key_of(k.secret_key) == k.public_key);
  CHECK(generate_curve_keypair().public_key != k.public_key);

  write_curve_key_files(k, dir / "edge1");
  const CurveKeyPair back = read_curve_secret_file(dir / "edge1.key");
  CHECK(back.public_key == k.public_key);
  CHECK(back.secret_key == k.secret_key);
  CHECK(read_curve_public_file(dir / "edge1.pub") == k.public_key);
  CHECK((std::filesystem::status(dir / "edge1.key").permissions() & std::filesystem::perms::others_read) ==
        std::filesystem::perms::none);
  {
    std::ifstream pub(dir / "edge1.pub");
    const std::string text((std::istreambuf_iterator<char>(pub)), {});
    CHECK(text.find(k.secret_key) == std::string::npos);
  }

  // An allow-list made by concatenating .pub files, plus a bare key line and a comment.
  const CurveKeyPair k2 = generate_curve_keypair();
  write_curve_key_files(k2, dir / "edge2");
  {
    std::ofstream list(dir / "allowed");
    list << "# edges\n" << std::ifstream(dir / "edge1.pub").rdbuf() << "\n" << k2.public_key << "\n";
  }
  const auto allowed = read_curve_allow_list(dir / "allowed");
  REQUIRE(allowed.size() == 2);
  CHECK(allowed[0] == k.public_key);
  CHECK(allowed[1] == k2.public_key);

  const auto write = [&](const char* name, const std::string& text) {
    std::ofstream(dir / name) << text;
    return dir / name;
  };
  expect_errc(errc::io_error, [&] { (void)read_curve_secret_file(dir / "missing.key"); });
  expect_errc(errc::corrupt_frame, [&] { (void)read_curve_public_file(write("short.pub", "public-key = \"abc\"\n")); });
  expect_errc(errc::corrupt_frame, [&] {
    (void)read_curve_public_file(write("bad.pub", "public-key = \"" + std::string(40, '~') + "\"\n"));
  });
  expect_errc(errc::corrupt_frame, [&] { (void)read_curve_public_file(write("empty.pub", "# nothing\n")); });
  expect_errc(errc::corrupt_frame, [&] { (void)read_curve_public_file(write("name.pub", "private-key = " + k.public_key + "\n")); });
  // A secret file whose halves do not belong together, and one without its secret.
  expect_errc(errc::corrupt_frame, [&] {
    (void)read_curve_secret_file(write("mixed.key", "public-key = \"" + k2.public_key + "\"\nsecret-key = \"" + k.secret_key + "\"\n"));
  });
  expect_errc(errc::corrupt_frame, [&] { (void)read_curve_secret_file(dir / "edge1.pub"); });
  expect_errc(errc::corrupt_frame, [&] { (void)read_curve_allow_list(dir / "edge1.key"); });
  expect_errc(errc::invalid_argument, [&] { (void)decode_curve_key("short"); });
  expect_errc(errc::invalid_argument, [&] { write_curve_key_files({k2.public_key, k.secret_key}, dir / "x"); });
  std::filesystem::remove_all(dir);
}

TEST_CASE("ZmqTransport: CURVE over tcp and ipc, sends while another thread receives, multi-part messages, the high-water mark", "[zmq][transport]") {
  const Keys k;
  const auto dir = temp_dir("p2p");
  for (const std::string& endpoint : {std::string("tcp://127.0.0.1:*"), "ipc://" + (dir / "p2p.sock").string()}) {
    INFO(endpoint);
    ZmqOptions so;
    so.curve_server = CurveServerKeys{k.broker, ""};
    so.max_message_bytes = 2 << 20;
    ZmqTransport server = ZmqTransport::bind(endpoint, so);
    ZmqOptions co = client_zmq(k.client, k.broker);
    co.max_message_bytes = 2 << 20;
    ZmqTransport client = ZmqTransport::connect(server.endpoint(), co);

    // An echo thread on the server side while the client sends and receives at once.
    std::atomic<int> echoed{0};
    std::thread echo([&] {  // no Catch macros off the main thread: Catch is not thread-safe
      Message m;
      for (int i = 0; i < 5 && server.receive(deadline_after(10s), m); ++i) {
        server.send(m.view(), deadline_after(10s));
        ++echoed;
      }
    });
    std::vector<std::vector<std::byte>> sent;
    for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{1024}, std::size_t{65536}, std::size_t{1} << 20}) {
      std::vector<std::byte> b(n);
      for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::byte>((i * 131 + n) & 0xFF);
      sent.push_back(b);
    }
    // Sends from another thread while this one is blocked in receive(): the sends go through the
    // receiving thread (the socket is never used by two threads at once).
    std::thread sender([&] {
      std::this_thread::sleep_for(20ms);
      for (const auto& b : sent) client.send(b, deadline_after(10s));
    });
    Message m;
    for (const auto& b : sent) {
      REQUIRE(client.receive(deadline_after(10s), m));
      CHECK(m.bytes == b);
    }
    sender.join();
    echo.join();
    CHECK(echoed == 5);

    client.close();
    CHECK_FALSE(client.is_open());
  }
  // A multi-part message is not a message of ours: corrupt_frame; the next one still arrives.
  ZmqTransport server = ZmqTransport::bind("tcp://127.0.0.1:*");
  RawClient raw(server.endpoint(), std::nullopt);
  const std::byte a[2] = {std::byte{1}, std::byte{2}};
  raw.send(a, /*more=*/true);
  raw.send(a);
  raw.send(a);
  expect_errc(errc::corrupt_frame, [&] { (void)server.receive(deadline_after(10s)); });
  const auto next = server.receive(deadline_after(10s));
  REQUIRE(next);
  CHECK(next->bytes.size() == 2);
  // Nobody at the other end: ZeroMQ queues up to the high-water mark, then send() times out.
  {
    ZmqOptions o;
    o.high_water_mark = 4;
    ZmqTransport lonely = ZmqTransport::connect("ipc://" + (temp_dir("lonely") / "nobody.sock").string(), o);
    int queued = 0;
    bool timed_out = false;
    for (; queued < 10000 && !timed_out; ++queued) {
      try {
        lonely.send(std::vector<std::byte>(16), deadline_after(20ms));
      } catch (const error& e) {
        CHECK(e.code() == errc::timeout);
        timed_out = true;
      }
    }
    CHECK(timed_out);
    CHECK(queued == 4 + 1);  // the pipe to the absent peer holds high_water_mark messages; the next waits
  }
  std::filesystem::remove_all(temp_dir("lonely"));
  // Bad endpoints are typed errors.
  expect_errc(errc::invalid_argument, [&] { (void)ZmqTransport::connect("nonsense://x"); });
  expect_errc(errc::invalid_argument, [&] {
    ZmqOptions o;
    o.routing_id = std::string(1, '\0') + "x";
    (void)ZmqTransport::connect("tcp://127.0.0.1:1", o);
  });
  std::filesystem::remove_all(dir);
}

TEST_CASE("Cluster: split inference through a CURVE broker and two workers equals the whole model", "[zmq]") {
  const Keys k;
  Split s = make_split();
  ZmqBroker broker(broker_options(k));
  auto w1 = start_worker(k, broker, s);
  auto w2 = start_worker(k, broker, s);
  REQUIRE(eventually([&] { return broker.stats().workers == 2; }));

  constexpr int clients = 8, per_client = 25;
  std::atomic<int> good{0}, bad{0};
  std::atomic<std::size_t> late{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c)
    threads.emplace_back([&, c] {
      try {
        const CurveKeyPair& own = c % 2 ? k.client : k.client2;
        const std::string front = broker.frontend_endpoint();
        EdgeClient client(s.head, [&, front] { return Channel(ZmqTransport::connect(front, client_zmq(own, k.broker))); },
                          edge_options());
        Sequential<float> whole = s.whole;
        std::vector<std::pair<std::future<InferResult>, Tensor<float>>> window;
        for (int i = 0; i < per_client; ++i) {
          auto x = random_input(1 + i % 2, kIn, 1000 * c + i);
          window.emplace_back(client.submit(x.cview(), deadline_after(30s)), whole.predict(x.cview()));
          if (window.size() == 4 || i + 1 == per_client) {
            for (auto& [f, want] : window) {
              const InferResult r = f.get();
              (r.path == AnswerPath::cloud && close_to(r.output, want) ? good : bad)++;
            }
            window.clear();
          }
        }
        late += client.stats().late_replies;
      } catch (...) {
        bad++;
      }
    });
  for (auto& t : threads) t.join();
  CHECK(good == clients * per_client);
  CHECK(bad == 0);
  CHECK(late == 0);
  // Both workers took a share of the work; every request was answered once. Requests are the
  // INFERs plus one HELLO per client.
  REQUIRE(eventually([&] { return broker.stats().replies == std::size_t(clients * (per_client + 1)); }));
  const BrokerStats st = broker.stats();
  CHECK(st.requests == std::size_t(clients * (per_client + 1)));
  CHECK(st.dispatched == st.requests);
  CHECK(st.resent == 0);
  CHECK(st.malformed_client == 0);
  CHECK(st.duplicate_replies == 0);
  CHECK(st.zap.allowed >= std::size_t(clients + 2));  // every client connection and both workers
  CHECK(st.zap.denied == 0);
  CHECK(w1->stats().requests > 0);
  CHECK(w2->stats().requests > 0);
  CHECK(w1->stats().requests + w2->stats().requests == st.dispatched);
  // A graceful leave: the broker forgets the worker at once.
  w2->stop();
  REQUIRE(eventually([&] { return broker.stats().workers == 1; }));
  CHECK(broker.stats().workers_left == 1);
}

TEST_CASE("An edge over ZeroMQ falls back while no broker runs and is served once one comes up", "[zmq]") {
  const Keys k;
  Split s = make_split();
  const auto dir = temp_dir("late");
  const std::string front = "ipc://" + (dir / "front.sock").string();
  EdgeOptions eo = edge_options();
  eo.connect_timeout = 200ms;  // each attempt's HELLO waits this long
  EdgeClient client(s.head, [&] { return Channel(ZmqTransport::connect(front, client_zmq(k.client, k.broker))); }, eo,
                    Fallback{s.whole, Fallback::Input::input});
  const auto x = random_input(2, kIn, 5);
  const Tensor<float> want = s.whole.predict(x.cview());
  const InferResult local = client.infer(x.cview(), deadline_after(300ms));
  CHECK(local.path == AnswerPath::fallback);
  CHECK(close_to(local.output, want));

  BrokerOptions bo = broker_options(k);
  bo.frontend = front;
  ZmqBroker broker(bo);
  auto w = start_worker(k, broker, s);
  REQUIRE(eventually([&] { return client.connected(); }));
  const InferResult remote = client.infer(x.cview(), deadline_after(10s));
  CHECK(remote.path == AnswerPath::cloud);
  CHECK(close_to(remote.output, want));
  CHECK(client.stats().connect_failures >= 1);
  CHECK(client.stats().reconnects >= 1);
  std::filesystem::remove_all(dir);
}

namespace {

// Closed-loop load from `clients` EdgeClients until `stop`; counts answers checked against the
// whole model. Any request not answered by the cloud within its (long) deadline is an error.
struct Load {
  std::atomic<int> good{0}, bad{0}, errors{0};
  std::atomic<std::size_t> late{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;

  void start(const Keys& k, const ZmqBroker& broker, const Split& s, int clients) {
    for (int c = 0; c < clients; ++c)
      threads.emplace_back([this, &k, &broker, &s, c] {
        try {
          const std::string front = broker.frontend_endpoint();
          EdgeClient client(s.head, [&, front] { return Channel(ZmqTransport::connect(front, client_zmq(k.client, k.broker))); },
                            edge_options());
          Sequential<float> whole = s.whole;
          for (int i = 0; !stop; ++i) {
            std::vector<std::pair<std::future<InferResult>, Tensor<float>>> window;
            for (int j = 0; j < 4; ++j) {
              auto x = random_input(1, kIn, 100000 * c + 4 * i + j);
              window.emplace_back(client.submit(x.cview(), deadline_after(30s)), whole.predict(x.cview()));
            }
            for (auto& [f, want] : window) {
              try {
                const InferResult r = f.get();
                (r.path == AnswerPath::cloud && close_to(r.output, want) ? good : bad)++;
              } catch (const error&) {
                errors++;
              }
            }
          }
          late += client.stats().late_replies;
        } catch (...) {
          errors++;
        }
      });
  }
  void finish() {
    stop = true;
    for (auto& t : threads) t.join();
  }
};

}  // namespace

namespace {

// A broker with two workers whose tail holds each batch for 2 ms, so requests stay in flight.
struct ChaosCluster {
  Keys k;
  Split s = make_split(2ms);
  ZmqBroker broker{broker_options(k)};
  std::unique_ptr<ZmqWorker> w1 = start_worker(k, broker, s), w2 = start_worker(k, broker, s);
  Load load;
};

// Freezes `w` at a moment it holds requests it has not answered, so that its death or silence
// strands work the broker must re-send. Returns whether it managed.
bool freeze_holding_work(ZmqWorker& w) {
  for (int i = 0; i < 2000; ++i) {
    w.freeze(true);
    std::this_thread::sleep_for(10ms);  // the worker's loop notices within 5 ms
    const WorkerStats st = w.stats();
    if (st.requests > st.replies) return true;
    w.freeze(false);
    std::this_thread::sleep_for(1ms);
  }
  return false;
}

}  // namespace

TEST_CASE("Chaos: a worker killed mid-run loses nothing, a new one joins and takes work, another leaves", "[zmq]") {
  ChaosCluster c;
  REQUIRE(eventually([&] { return c.broker.stats().workers == 2; }));
  c.load.start(c.k, c.broker, c.s, 6);
  REQUIRE(eventually([&] { return c.load.good >= 100 && c.w2->stats().requests > 0; }));
  // Kill w2 while it holds requests: the broker sees its connection go (or its heartbeats stop)
  // and re-sends what it held to w1.
  REQUIRE(freeze_holding_work(*c.w2));
  c.w2->kill();
  REQUIRE(eventually([&] { return c.broker.stats().workers == 1; }));
  const int at_kill = c.load.good;
  REQUIRE(eventually([&] { return c.load.good >= at_kill + 100; }));
  // A new worker joins under load and takes work.
  auto w3 = start_worker(c.k, c.broker, c.s);
  REQUIRE(eventually([&] { return c.broker.stats().workers == 2 && w3->stats().requests >= 20; }));
  // And w1 leaves under load (a graceful stop: DISCONNECT, the broker re-sends what it held).
  c.w1->stop();
  REQUIRE(eventually([&] { return c.broker.stats().workers == 1; }));
  const int at_leave = c.load.good;
  REQUIRE(eventually([&] { return c.load.good >= at_leave + 50; }));
  c.load.finish();

  REQUIRE(eventually([&] { return c.broker.stats().requests == c.broker.stats().replies; }));
  const BrokerStats st = c.broker.stats();
  INFO("requests " << st.requests << " resent " << st.resent << " expired " << st.workers_expired << " lost "
                   << st.workers_lost);
  CHECK(c.load.bad == 0);     // every answer equals the whole model's
  CHECK(c.load.errors == 0);  // every request was answered by the cloud: none lost
  CHECK(c.load.late == 0);    // no request was answered twice
  CHECK(st.resent >= 1);      // w2 held requests when it died, and they were re-sent
  CHECK(st.workers_expired + st.workers_lost == 1);
  CHECK(st.workers_left == 1);
  CHECK(st.duplicate_replies == 0);  // a killed worker answers nothing more
  CHECK(st.replies == st.requests);
  CHECK(w3->stats().replies > 0);
}

TEST_CASE("Chaos: a hung worker is found by its missing heartbeats, its work is re-sent, answered once", "[zmq]") {
  ChaosCluster c;
  REQUIRE(eventually([&] { return c.broker.stats().workers == 2; }));
  c.load.start(c.k, c.broker, c.s, 4);
  REQUIRE(eventually([&] { return c.load.good >= 50 && c.w2->stats().requests > 0; }));
  // Connection kept, silent: only the heartbeats tell.
  REQUIRE(freeze_holding_work(*c.w2));
  REQUIRE(eventually([&] { return c.broker.stats().workers_expired == 1; }));
  const int at_expiry = c.load.good;
  REQUIRE(eventually([&] { return c.load.good >= at_expiry + 50; }));
  // It wakes up: its late answers are dropped as duplicates, it registers again and works.
  const std::size_t before = c.w2->stats().requests;
  c.w2->freeze(false);
  REQUIRE(eventually([&] { return c.w2->stats().reconnects >= 1 && c.w2->stats().requests > before + 10; }));
  c.load.finish();

  REQUIRE(eventually([&] { return c.broker.stats().requests == c.broker.stats().replies; }));
  const BrokerStats st = c.broker.stats();
  CHECK(c.load.bad == 0);
  CHECK(c.load.errors == 0);
  CHECK(c.load.late == 0);
  CHECK(st.resent >= 1);
  CHECK(st.duplicate_replies >= 1);  // the frozen worker's answers, too late
  CHECK(st.replies == st.requests);
  CHECK(st.workers_joined == 3);  // w1, w2, and w2 again
}

namespace {

// A broker with one worker, registered.
struct OneWorker {
  Keys k;
  Split s = make_split();
  ZmqBroker broker{broker_options(k)};
  std::unique_ptr<ZmqWorker> w = start_worker(k, broker, s);
  OneWorker() { REQUIRE(eventually([&] { return broker.stats().workers == 1; })); }
};

}  // namespace

TEST_CASE("Retries: a request sent twice is computed once and answered with the same bytes", "[zmq]") {
  OneWorker cluster;
  const Keys& k = cluster.k;
  ZmqBroker& broker = cluster.broker;
  auto& w = cluster.w;
  RawClient c(broker.frontend_endpoint(), CurveClientKeys{k.client, k.broker.public_key});

  const auto req = infer_frame(77, 1);
  c.send(req);
  c.send(req);  // a retry while the first is pending (or just answered)
  const auto first = c.receive(10s);
  REQUIRE(first);
  CHECK(wire::peek(*first).type == wire::MessageType::response);
  CHECK(wire::peek(*first).request_id == 77);
  // The retry either was dropped as pending or replayed the cached answer: never a second
  // computation, and any second reply is the first one byte for byte.
  if (const auto second = c.receive(300ms)) CHECK(*second == *first);
  c.send(req);  // a retry after the answer: the same bytes again
  const auto replay = c.receive(10s);
  REQUIRE(replay);
  CHECK(*replay == *first);
  CHECK_FALSE(c.receive(100ms));
  REQUIRE(eventually([&] { return broker.stats().duplicate_requests + broker.stats().replayed == 2; }));
  BrokerStats st = broker.stats();
  CHECK(st.requests == 1);
  CHECK(st.dispatched == 1);
  CHECK(w->stats().requests == 1);
  CHECK(st.duplicate_requests + st.replayed == 2);
  // The same id with other contents is refused, not answered from the cache.
  c.send(infer_frame(77, 2));
  const auto refused = c.receive(10s);
  REQUIRE(refused);
  CHECK(wire::decode_error(*refused).code == errc::invalid_argument);
  CHECK(eventually([&] { return broker.stats().conflicting_requests == 1; }));
  // Another client may use the same request id: it is another request.
  RawClient c2(broker.frontend_endpoint(), CurveClientKeys{k.client2, k.broker.public_key});
  c2.send(req);
  const auto other = c2.receive(10s);
  REQUIRE(other);
  CHECK(wire::peek(*other).type == wire::MessageType::response);
  CHECK(eventually([&] { return broker.stats().requests == 2; }));
}

TEST_CASE("Security: clients with no key, an unlisted key or the wrong server key are refused", "[zmq]") {
  OneWorker cluster;
  const Keys& k = cluster.k;
  Split& s = cluster.s;
  ZmqBroker& broker = cluster.broker;
  const auto req = infer_frame(1, 1);

  // No key at all (NULL mechanism against a CURVE server): the handshake fails.
  {
    RawClient c(broker.frontend_endpoint(), std::nullopt);
    c.send(req);
    CHECK_FALSE(c.receive(500ms));
  }
  REQUIRE(eventually([&] { return broker.stats().protocol_failures >= 1; }));
  // A well-formed key the broker has never heard of: ZAP says 400.
  {
    RawClient c(broker.frontend_endpoint(), CurveClientKeys{k.stranger, k.broker.public_key});
    c.send(req);
    CHECK_FALSE(c.receive(500ms));
  }
  REQUIRE(eventually([&] { return broker.stats().auth_failures >= 1; }));
  CHECK(broker.stats().zap.denied >= 1);
  // An allowed client key but the wrong broker key: the broker cannot open the client's HELLO.
  {
    RawClient c(broker.frontend_endpoint(), CurveClientKeys{k.client, k.stranger.public_key});
    c.send(req);
    CHECK_FALSE(c.receive(500ms));
  }
  // A worker with an unlisted key never joins.
  WorkerOptions wo = worker_options(k, broker);
  wo.curve = CurveClientKeys{k.stranger, k.broker.public_key};
  ZmqWorker intruder(wo);
  intruder.register_model(kModel, s.tail);
  intruder.start();
  std::this_thread::sleep_for(300ms);
  CHECK(broker.stats().workers == 1);
  CHECK(broker.stats().workers_joined == 1);
  CHECK(intruder.stats().requests == 0);
  // None of them got a request through.
  CHECK(broker.stats().requests == 0);
  // The allowed client is served.
  RawClient ok(broker.frontend_endpoint(), CurveClientKeys{k.client, k.broker.public_key});
  ok.send(req);
  const auto reply = ok.receive(10s);
  REQUIRE(reply);
  CHECK(wire::peek(*reply).type == wire::MessageType::response);
  CHECK(eventually([&] { return broker.stats().requests == 1; }));
}

namespace {

// A TCP relay between a client and the broker that can flip one bit of the next chunk the
// client sends: a man in the middle tampering with an encrypted message.
class TamperingRelay {
 public:
  explicit TamperingRelay(std::uint16_t upstream_port) : upstream_(upstream_port) {
    listen_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(listen_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(listen_, 8) == 0);
    socklen_t len = sizeof a;
    ::getsockname(listen_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { run(); });
  }
  ~TamperingRelay() {
    stop_ = true;
    thread_.join();
    ::close(listen_);
  }
  std::uint16_t port() const { return port_; }
  void tamper_next() { tamper_ = true; }
  int tampered() const { return tampered_; }
  int accepted() const { return accepted_; }

 private:
  void run() {
    std::vector<std::pair<int, int>> pairs;  // (client, upstream)
    char buf[65536];
    while (!stop_) {
      std::vector<pollfd> fds{{listen_, POLLIN, 0}};
      for (auto& [c, u] : pairs) {
        fds.push_back({c, POLLIN, 0});
        fds.push_back({u, POLLIN, 0});
      }
      if (::poll(fds.data(), fds.size(), 20) <= 0) continue;
      if (fds[0].revents & POLLIN) {
        const int c = ::accept(listen_, nullptr, nullptr);
        const int u = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(upstream_);
        if (c >= 0 && ::connect(u, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
          pairs.emplace_back(c, u);
          ++accepted_;
        } else {
          if (c >= 0) ::close(c);
          ::close(u);
        }
        continue;
      }
      for (std::size_t i = 0; i < pairs.size(); ++i) {
        for (int dir = 0; dir < 2; ++dir) {
          if (!(fds[1 + 2 * i + dir].revents & (POLLIN | POLLHUP | POLLERR))) continue;
          const int from = dir == 0 ? pairs[i].first : pairs[i].second;
          const int to = dir == 0 ? pairs[i].second : pairs[i].first;
          const ssize_t n = ::read(from, buf, sizeof buf);
          if (n <= 0) {
            ::close(pairs[i].first);
            ::close(pairs[i].second);
            pairs.erase(pairs.begin() + static_cast<long>(i));
            goto next_round;
          }
          if (dir == 0 && tamper_.exchange(false)) {
            buf[n - 1] ^= 0x01;  // the last byte: inside the message's authenticator or body
            ++tampered_;
          }
          (void)::write(to, buf, static_cast<std::size_t>(n));
        }
      }
    next_round:;
    }
    for (auto& [c, u] : pairs) {
      ::close(c);
      ::close(u);
    }
  }

  std::uint16_t upstream_, port_ = 0;
  int listen_ = -1;
  std::atomic<bool> stop_{false}, tamper_{false};
  std::atomic<int> tampered_{0}, accepted_{0};
  std::thread thread_;
};

}  // namespace

TEST_CASE("Security: a message tampered with on the wire is rejected by CURVE", "[zmq]") {
  OneWorker cluster;
  const Keys& k = cluster.k;
  ZmqBroker& broker = cluster.broker;
  const std::string front = broker.frontend_endpoint();
  const auto port = static_cast<std::uint16_t>(std::stoi(front.substr(front.rfind(':') + 1)));
  TamperingRelay relay(port);
  RawClient c("tcp://127.0.0.1:" + std::to_string(relay.port()), CurveClientKeys{k.client, k.broker.public_key});

  c.send(infer_frame(1, 1));
  REQUIRE(c.receive(10s));  // the handshake is done and the relay passes messages
  const std::size_t failures_before = broker.stats().crypto_failures;
  relay.tamper_next();
  c.send(infer_frame(2, 2));
  CHECK_FALSE(c.receive(500ms));  // never answered: the broker refused the message
  CHECK(relay.tampered() == 1);
  REQUIRE(eventually([&] { return broker.stats().crypto_failures > failures_before; }));
  CHECK(broker.stats().requests == 1);  // the tampered request never got in
  // The client gets a fresh connection through the relay, with a fresh handshake, and is served.
  // The broker may close the tampered connection at once (plain builds, usually) or keep it open
  // (seen under ThreadSanitizer with several suites running at once): then the ZMTP heartbeats
  // find it dead and the client reconnects. A message written into the dying connection is lost
  // with it, so the client sends again when no answer comes, as one with a deadline would; the
  // broker answers a request sent twice once.
  REQUIRE(eventually([&] { return relay.accepted() >= 2; }));
  std::optional<std::vector<std::byte>> third;
  for (int attempt = 0; attempt < 3 && !third; ++attempt) {
    c.send(infer_frame(3, 3));
    third = c.receive(3s);
  }
  REQUIRE(third);
  CHECK(wire::peek(*third).request_id == 3);
  CHECK(eventually([&] { return broker.stats().requests == 2; }));
}

TEST_CASE("Malformed frames from outside are answered with typed errors, the cluster keeps serving", "[zmq]") {
  OneWorker cluster;
  const Keys& k = cluster.k;
  ZmqBroker& broker = cluster.broker;
  auto& w = cluster.w;
  RawClient c(broker.frontend_endpoint(), CurveClientKeys{k.client, k.broker.public_key});
  const auto error_for = [&](const std::vector<std::byte>& bytes, bool multipart = false) {
    if (multipart) c.send(bytes, true);
    c.send(bytes);
    const auto reply = c.receive(10s);
    REQUIRE(reply);
    return wire::decode_error(*reply);  // throws unless the reply is a valid ERROR frame
  };

  std::vector<std::byte> garbage(40);
  for (std::size_t i = 0; i < garbage.size(); ++i) garbage[i] = static_cast<std::byte>(i * 7);
  CHECK(error_for(garbage).code == errc::corrupt_frame);
  CHECK(error_for({}).code == errc::corrupt_frame);
  CHECK(error_for(infer_frame(5, 5), /*multipart=*/true).code == errc::corrupt_frame);

  auto bad_crc = infer_frame(6, 6);
  bad_crc.back() ^= std::byte{0x10};
  auto e = error_for(bad_crc);
  CHECK(e.code == errc::checksum_mismatch);

  auto truncated = infer_frame(7, 7);
  truncated.resize(truncated.size() - 3);
  CHECK(error_for(truncated).code == errc::corrupt_frame);

  std::vector<std::byte> pong;
  wire::encode_ping(pong, 8, 1, /*pong=*/true);
  CHECK(error_for(pong).code == errc::unsupported);

  // A frame whose header and CRC are right but whose tensor is not: it passes the broker and is
  // refused by the worker's decoder, which answers for it.
  auto bad_tensor = infer_frame(9, 9);
  const std::size_t rank_at = wire::frame_header_size + 2 + kModel.model_id.size() + 2 + 4 + 4;
  bad_tensor[rank_at] = std::byte{0};  // rank 0
  wire::store_le32(bad_tensor.data() + wire::frame_crc_offset, wire::frame_crc(bad_tensor));
  CHECK(error_for(bad_tensor).code == errc::corrupt_frame);
  CHECK(w->stats().rejected == 1);

  // Garbage from a peer on the workers' side (an admitted key, a broken program): dropped and
  // counted; the broker neither crashes nor registers it.
  {
    RawClient rogue(broker.backend_endpoint(), CurveClientKeys{k.worker, k.broker.public_key});
    rogue.send(garbage);
    const auto h = wire::cluster::header(wire::cluster::Command::ready);
    rogue.send(h, true);
    rogue.send(garbage);  // a capacity of 40 bytes
    const auto r = wire::cluster::header(wire::cluster::Command::reply);
    rogue.send(r, true);
    rogue.send(garbage, true);
    rogue.send(infer_frame(1, 1));  // a reply with a client id that is not one
    REQUIRE(eventually([&] { return broker.stats().malformed_worker >= 3; }));
  }
  CHECK(broker.stats().workers == 1);

  // Through all of it the cluster kept serving.
  c.send(infer_frame(10, 10));
  const auto fine = c.receive(10s);
  REQUIRE(fine);
  CHECK(wire::peek(*fine).type == wire::MessageType::response);
  CHECK(wire::peek(*fine).request_id == 10);
  REQUIRE(eventually([&] { return broker.stats().replies == 2; }));
  const BrokerStats st = broker.stats();
  CHECK(st.malformed_client == 6);
  CHECK(st.requests == 2);  // the bad tensor and the last one
  CHECK(st.replies == 2);
}

TEST_CASE("Cluster protocol: command headers, capacities and client ids are validated", "[zmq][wire]") {
  using namespace wire::cluster;
  auto h = header(Command::reply);
  CHECK(parse_header(h) == Command::reply);
  CHECK(parts_of(Command::reply) == 3);
  CHECK(parts_of(Command::ready) == 2);
  CHECK(parts_of(Command::heartbeat) == 1);
  expect_errc(errc::corrupt_frame, [&] { (void)parse_header(std::span(h).first(5)); });
  auto bad = h;
  bad[0] = std::byte{'X'};
  expect_errc(errc::corrupt_frame, [&] { (void)parse_header(bad); });
  bad = h;
  bad[4] = std::byte{2};
  expect_errc(errc::version_mismatch, [&] { (void)parse_header(bad); });
  bad = h;
  bad[5] = std::byte{9};
  expect_errc(errc::unsupported, [&] { (void)parse_header(bad); });
  bad[5] = std::byte{0};
  expect_errc(errc::unsupported, [&] { (void)parse_header(bad); });

  CHECK(parse_capacity(encode_capacity(64)) == 64);
  expect_errc(errc::corrupt_frame, [&] { (void)parse_capacity(encode_capacity(0)); });
  expect_errc(errc::corrupt_frame, [&] { (void)parse_capacity(encode_capacity(max_capacity + 1)); });
  expect_errc(errc::corrupt_frame, [&] { const auto four = encode_capacity(1);
    (void)parse_capacity(std::span(four).first(3)); });

  const std::string id = make_client_id("user", "route");
  const auto idb = std::as_bytes(std::span(id));
  CHECK(routing_id_of(idb) == "route");
  expect_errc(errc::corrupt_frame, [&] { (void)routing_id_of({}); });
  const std::string no_route = make_client_id("user", "r").substr(0, 5);
  expect_errc(errc::corrupt_frame, [&] { (void)routing_id_of(std::as_bytes(std::span(no_route))); });
  std::string lying = id;
  lying[0] = static_cast<char>(200);
  expect_errc(errc::corrupt_frame, [&] { (void)routing_id_of(std::as_bytes(std::span(lying))); });
  expect_errc(errc::invalid_argument, [&] { (void)make_client_id("u", ""); });

  // relabel: a new id and a valid CRC, but never for a frame that was not valid before.
  auto f = infer_frame(5, 1);
  const auto old = relabel(f, 99);
  CHECK(old.request_id == 5);
  CHECK(wire::parse_frame(f).header.request_id == 99);
  f[30] ^= std::byte{1};
  expect_errc(errc::checksum_mismatch, [&] { (void)relabel(f, 100); });
}

namespace {

// --- Quarantine and fairness --------------------------------------------------------------------

// The features of a poison request: every value 666. The fake workers below die on it.
constexpr float kPoison = 666.0f;

CodecConfig raw_codec() {
  CodecConfig cfg;
  cfg.bits = wire::raw_f32_bits;
  return cfg;
}

// INFER frame `id` carrying the head's output for input `seed` (or, poisoned, the same shape
// filled with kPoison).
std::vector<std::byte> request_frame(Sequential<float>& head, std::uint32_t id, std::uint64_t seed, bool poison = false) {
  FeatureCodec codec(raw_codec());
  const auto x = random_input(1, kIn, seed);
  const TensorView<const float> f = head.forward(x.cview());
  std::vector<std::byte> out;
  if (poison) {
    const Tensor<float> p(f.shape(), kPoison);
    wire::encode_infer(out, id, {kModel.model_id, kModel.split, 0}, codec, p.cview());
  } else {
    wire::encode_infer(out, id, {kModel.model_id, kModel.split, 0}, codec, f);
  }
  return out;
}

// A worker of the test's own making: a raw DEALER socket speaking the cluster protocol (READY,
// heartbeats, REQUEST in, REPLY out with the tail computed here). It dies as a crashed process
// does, its socket closed at once and no DISCONNECT said, when a poison request reaches it.
// While `gated`, it answers a request only when release() allows one more (oldest first), so
// that it holds what it took; otherwise it answers each at once.
class FakeWorker {
 public:
  FakeWorker(const Keys& k, const std::string& backend, const Split& s, std::uint32_t capacity, bool gated)
      : tail_(s.tail), gated_(gated) {
    thread_ = std::thread([this, &k, backend, capacity] { run(k, backend, capacity); });
  }
  FakeWorker(const FakeWorker&) = delete;
  FakeWorker& operator=(const FakeWorker&) = delete;
  ~FakeWorker() {
    stop_ = true;
    thread_.join();
  }

  void release(int n) { allowance_ += n; }
  bool dead() const { return dead_; }
  int received() const { return received_; }
  int answered() const { return answered_; }
  // Requests the worker had taken and not answered when it died (the poison included): what the
  // broker had given it.
  int held_at_death() const { return held_at_death_; }
  int poisons_seen() const { return poisons_; }
  // Whether the worker's own code failed (a test error, not a death).
  bool failed() const { return failed_; }
  // (client id, request id) of every request received, in order.
  std::vector<std::pair<std::string, std::uint32_t>> log() const {
    std::lock_guard lock(mutex_);
    return log_;
  }

 private:
  struct Held {
    std::string client_id;
    std::vector<std::byte> frame;
  };

  static void send_parts(zmq::socket_t& s, std::initializer_list<std::span<const std::byte>> parts) {
    std::size_t i = 0;
    for (const auto& p : parts)
      (void)s.send(zmq::buffer(p.data(), p.size()), ++i < parts.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
  }

  // Reads one multi-part message (empty when none waits).
  static std::vector<zmq::message_t> read(zmq::socket_t& s) {
    std::vector<zmq::message_t> parts;
    for (;;) {
      zmq::message_t m;
      if (!s.recv(m, zmq::recv_flags::dontwait)) return parts;
      const bool more = m.more();
      parts.push_back(std::move(m));
      if (!more) return parts;
    }
  }

  void answer(zmq::socket_t& s, const Held& h) {
    FeatureCodec codec(raw_codec());
    Tensor<float> features;
    std::uint32_t id = 0;
    (void)wire::decode_infer(h.frame, codec, features, &id);
    const Tensor<float> y = tail_.predict(features.cview());
    std::vector<std::byte> out;
    wire::encode_response(out, id, wire::InferResponse{}, codec, y.cview());
    const auto hdr = wire::cluster::header(wire::cluster::Command::reply);
    send_parts(s, {hdr, std::as_bytes(std::span(h.client_id)), out});
    ++answered_;
  }

  static bool poisoned(std::span<const std::byte> frame) {
    FeatureCodec codec(raw_codec());
    Tensor<float> features;
    (void)wire::decode_infer(frame, codec, features);
    return features.size() > 0 && features[0] == kPoison;
  }

  void run(const Keys& k, const std::string& backend, std::uint32_t capacity) {
    try {
      zmq::context_t ctx(1);
      zmq::socket_t s(ctx, zmq::socket_type::dealer);
      s.set(zmq::sockopt::linger, 0);
      configure_curve_client(s, CurveClientKeys{k.worker, k.broker.public_key});
      s.connect(backend);
      const auto ready = wire::cluster::header(wire::cluster::Command::ready);
      send_parts(s, {ready, wire::cluster::encode_capacity(capacity)});
      const auto heartbeat = wire::cluster::header(wire::cluster::Command::heartbeat);
      auto next_heartbeat = std::chrono::steady_clock::now();
      std::deque<Held> held;
      while (!stop_) {
        if (std::chrono::steady_clock::now() >= next_heartbeat) {
          send_parts(s, {heartbeat});
          next_heartbeat = std::chrono::steady_clock::now() + kHeartbeat;
        }
        zmq_pollitem_t item{s.handle(), 0, ZMQ_POLLIN, 0};
        (void)zmq_poll(&item, 1, 5);
        for (auto parts = read(s); !parts.empty(); parts = read(s)) {
          const auto cmd = wire::cluster::parse_header({static_cast<const std::byte*>(parts[0].data()), parts[0].size()});
          if (cmd != wire::cluster::Command::request) continue;  // heartbeats
          Held h{parts[1].to_string(), {}};
          const auto* b = static_cast<const std::byte*>(parts[2].data());
          h.frame.assign(b, b + parts[2].size());
          ++received_;
          {
            std::lock_guard lock(mutex_);
            log_.emplace_back(wire::cluster::routing_id_of(std::as_bytes(std::span(h.client_id))),
                              wire::peek(h.frame).request_id);
          }
          if (poisoned(h.frame)) {
            ++poisons_;
            // Count what else the broker had sent along (nothing, if it isolated the suspect),
            // then die: no DISCONNECT, the socket closed with nothing lingering.
            int others = 0;
            std::this_thread::sleep_for(20ms);
            for (auto more = read(s); !more.empty(); more = read(s))
              if (wire::cluster::parse_header({static_cast<const std::byte*>(more[0].data()), more[0].size()}) ==
                  wire::cluster::Command::request)
                ++others;
            held_at_death_ = static_cast<int>(held.size()) + 1 + others;
            s.close();
            dead_ = true;
            return;
          }
          held.push_back(std::move(h));
        }
        while (!held.empty() && (!gated_ || allowance_ > 0)) {
          if (gated_) --allowance_;
          answer(s, held.front());
          held.pop_front();
        }
      }
    } catch (...) {
      failed_ = true;  // checked through dead()/answered() by the test: no Catch macros here
    }
  }

  Sequential<float> tail_;
  const bool gated_;
  std::atomic<bool> stop_{false}, dead_{false}, failed_{false};
  std::atomic<int> allowance_{0}, received_{0}, answered_{0}, held_at_death_{0}, poisons_{0};
  mutable std::mutex mutex_;
  std::vector<std::pair<std::string, std::uint32_t>> log_;
  std::thread thread_;
};

// What one pipelining client saw. answers[id] counts every message that answered request id.
struct Tally {
  std::vector<int> answers;  // index: request id (1-based; [0] unused)
  std::atomic<int> good{0}, wrong{0}, overloaded{0}, other_errors{0}, unknown{0};
  std::atomic<bool> done{false};
  std::string routing_id;
};

// Sends requests 1..total, at most `window` unanswered at once, checking each answer against the
// whole model; once every request has an answer, listens 200 ms more for answers sent twice.
// Runs on a thread of its own (no Catch macros): the caller reads the tally.
void pipelined_client(const std::string& endpoint, const CurveClientKeys& keys, const Split& s, std::uint32_t total,
                      std::size_t window, std::uint64_t seed, Tally& t, std::chrono::milliseconds limit = 60s) {
  t.answers.assign(total + 1, 0);
  try {
    Sequential<float> head = s.head, whole = s.whole;
    FeatureCodec codec(raw_codec());
    zmq::context_t ctx(1);
    zmq::socket_t sock(ctx, zmq::socket_type::dealer);
    sock.set(zmq::sockopt::linger, 0);
    t.routing_id = detail::zmq::random_routing_id();
    sock.set(zmq::sockopt::routing_id, t.routing_id);
    configure_curve_client(sock, keys);
    sock.connect(endpoint);
    const auto until = std::chrono::steady_clock::now() + limit;
    std::uint32_t next = 1, answered = 0;
    std::size_t open = 0;
    Tensor<float> y;
    auto quiet_until = std::chrono::steady_clock::time_point::max();
    while (std::chrono::steady_clock::now() < std::min(until, quiet_until)) {
      while (next <= total && open < window) {
        const auto f = request_frame(head, next, seed + next);
        sock.send(zmq::buffer(f.data(), f.size()), zmq::send_flags::none);
        ++next;
        ++open;
      }
      zmq_pollitem_t item{sock.handle(), 0, ZMQ_POLLIN, 0};
      if (zmq_poll(&item, 1, 20) <= 0) continue;
      zmq::message_t m;
      while (sock.recv(m, zmq::recv_flags::dontwait)) {
        const std::span<const std::byte> b{static_cast<const std::byte*>(m.data()), m.size()};
        const auto h = wire::peek(b);
        if (h.request_id == 0 || h.request_id >= next) {
          ++t.unknown;
          continue;
        }
        if (t.answers[h.request_id]++ == 0) {
          ++answered;
          --open;
        }
        if (h.type == wire::MessageType::response) {
          (void)wire::decode_response(b, codec, y);
          const auto x = random_input(1, kIn, seed + h.request_id);
          (close_to(y, whole.predict(x.cview())) ? t.good : t.wrong)++;
        } else if (wire::decode_error(b).code == errc::overloaded) {
          ++t.overloaded;
        } else {
          ++t.other_errors;
        }
      }
      if (answered == total && quiet_until == std::chrono::steady_clock::time_point::max())
        quiet_until = std::chrono::steady_clock::now() + 200ms;
    }
  } catch (...) {
    ++t.other_errors;
  }
  t.done = true;
}

// How many requests of a tally were answered exactly once, and how many more than once.
std::pair<int, int> once_and_twice(const Tally& t) {
  int once = 0, twice = 0;
  for (std::size_t i = 1; i < t.answers.size(); ++i) {
    once += t.answers[i] == 1;
    twice += t.answers[i] > 1;
  }
  return {once, twice};
}

}  // namespace

TEST_CASE("Quarantine: a poison request kills at most two workers, is answered 'quarantined', and no innocent is",
          "[zmq]") {
  const Keys k;
  Split s = make_split();
  BrokerOptions bo = broker_options(k);
  bo.liveness = 10;  // deaths here are crashes (connections gone); a slow heartbeat must not count as one
  ZmqBroker broker(bo);
  const auto real_worker = [&] {
    WorkerOptions wo = worker_options(k, broker, 4);
    wo.liveness = 10;
    auto w = std::make_unique<ZmqWorker>(wo);
    w->register_model(kModel, s.tail);
    w->start();
    return w;
  };
  auto r1 = real_worker(), r2 = real_worker();
  REQUIRE(eventually([&] { return broker.stats().workers == 2; }));

  // Normal traffic: three clients (two keys; two connections share one), 4 requests in flight each.
  constexpr int clients = 3;
  constexpr std::uint32_t per_client = 150;
  constexpr std::size_t window = 4;
  std::array<Tally, clients> tallies;
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c)
    threads.emplace_back([&, c] {
      pipelined_client(broker.frontend_endpoint(), CurveClientKeys{c == 1 ? k.client2 : k.client, k.broker.public_key}, s,
                       per_client, window, 10000u * static_cast<unsigned>(c), tallies[c]);
    });
  const auto good = [&] {
    int n = 0;
    for (const auto& t : tallies) n += t.good;
    return n;
  };
  REQUIRE(eventually([&] { return good() >= 60; }));  // through the real workers

  // The real workers leave (in good order: no death) and a worker that dies on the poison takes
  // over. It holds every request it takes, so that it dies holding all 12 of the clients' and
  // the poison: 12 innocents on a dying worker.
  auto f1 = std::make_unique<FakeWorker>(k, broker.backend_endpoint(), s, 64, /*gated=*/true);
  REQUIRE(eventually([&] { return broker.stats().workers == 3; }));
  r1->stop();
  r2->stop();
  REQUIRE(eventually([&] { return broker.stats().workers == 1; }));
  REQUIRE(eventually([&] { return f1->received() == clients * static_cast<int>(window); }));
  CHECK(broker.stats().suspects == 0);

  RawClient poisoner(broker.frontend_endpoint(), CurveClientKeys{k.client, k.broker.public_key});
  const auto poison = request_frame(s.head, 4242, 1, /*poison=*/true);
  poisoner.send(poison);
  REQUIRE(eventually([&] { return f1->dead(); }));
  CHECK(f1->held_at_death() == clients * static_cast<int>(window) + 1);
  // Every request it held is a suspect now; a replacement takes them one at a time.
  REQUIRE(eventually([&] { return broker.stats().suspects >= 1 && broker.stats().workers == 0; }));
  auto f2 = std::make_unique<FakeWorker>(k, broker.backend_endpoint(), s, 64, /*gated=*/false);
  REQUIRE(eventually([&] { return f2->dead(); }));
  CHECK(f2->held_at_death() == 1);  // the suspect alone: nothing else was sent along with it
  // The poison's second death: it is answered 'quarantined' and sent nowhere again. A
  // replacement and a real worker take the rest.
  auto f3 = std::make_unique<FakeWorker>(k, broker.backend_endpoint(), s, 64, /*gated=*/false);
  auto r3 = real_worker();
  const auto verdict = poisoner.receive(15s);
  REQUIRE(verdict);
  CHECK(wire::peek(*verdict).request_id == 4242);
  CHECK(wire::decode_error(*verdict).code == errc::quarantined);

  for (auto& t : threads) t.join();
  CHECK_FALSE(poisoner.receive(200ms));  // answered exactly once
  // A retry of the poison gets the same answer, byte for byte, and reaches no worker.
  poisoner.send(poison);
  const auto again = poisoner.receive(10s);
  REQUIRE(again);
  CHECK(*again == *verdict);

  int normal_once = 0, normal_twice = 0;
  for (const auto& t : tallies) {
    INFO("good " << t.good << " wrong " << t.wrong << " overloaded " << t.overloaded << " errors " << t.other_errors
                 << " unknown " << t.unknown);
    CHECK(t.done);
    CHECK(t.good == static_cast<int>(per_client));  // every normal request answered, correctly
    CHECK(t.wrong == 0);
    CHECK(t.overloaded == 0);
    CHECK(t.other_errors == 0);  // none quarantined, none lost to an error
    CHECK(t.unknown == 0);
    const auto [once, twice] = once_and_twice(t);
    normal_once += once;
    normal_twice += twice;
  }
  CHECK(normal_once == clients * static_cast<int>(per_client));
  CHECK(normal_twice == 0);
  CHECK(f1->poisons_seen() + f2->poisons_seen() == 2);
  CHECK_FALSE(f1->failed());
  CHECK_FALSE(f2->failed());
  CHECK_FALSE(f3->failed());
  CHECK_FALSE(f3->dead());
  CHECK(f3->poisons_seen() == 0);  // never sent a third time
  REQUIRE(eventually([&] { return broker.stats().replayed == 1; }));
  const BrokerStats st = broker.stats();
  INFO("suspects " << st.suspects << " resent " << st.resent << " lost " << st.workers_lost << " expired "
                   << st.workers_expired);
  CHECK(st.quarantined == 1);
  CHECK(st.suspects == static_cast<std::size_t>(clients * window + 1));  // what f1 held; f2 held the poison alone
  CHECK(st.workers_lost + st.workers_expired == 2);  // f1 and f2: the poison's two deaths
  CHECK(st.workers_left == 2);                        // r1 and r2, in good order
  CHECK(st.requests == static_cast<std::size_t>(clients * per_client + 1));
  CHECK(st.replies == st.requests);
  CHECK(st.internal_errors == 0);
  CHECK(st.suspects_waiting == 0);
  CHECK(st.clients == 0);
  CHECK(r3->stats().replies + static_cast<std::size_t>(f2->answered() + f3->answered()) > 0);
}

TEST_CASE("Fairness: a client over its share is refused 'overloaded' alone, and clients are served in turn", "[zmq]") {
  const Keys k;
  Split s = make_split();
  BrokerOptions bo = broker_options(k);
  bo.max_queued_per_client = 8;
  bo.liveness = 10;  // the gated worker must not be taken for dead while it holds its request
  ZmqBroker broker(bo);
  // One worker that takes one request at a time and answers only when let: the broker's queues
  // hold everything else, and the order in which they are served shows.
  FakeWorker gate(k, broker.backend_endpoint(), s, 1, /*gated=*/true);
  REQUIRE(eventually([&] { return broker.stats().workers == 1; }));

  // The flooder pipelines 100 requests: 8 are taken (1 at the worker, 7 queued), 92 refused at
  // once, and nothing it sends makes room for more while none is answered.
  RawClient flooder(broker.frontend_endpoint(), CurveClientKeys{k.client, k.broker.public_key});
  constexpr std::uint32_t flood = 100, share = 8;
  for (std::uint32_t id = 1; id <= flood; ++id) flooder.send(request_frame(s.head, id, id));
  std::set<std::uint32_t> refused;
  while (refused.size() < flood - share) {
    const auto r = flooder.receive(10s);
    REQUIRE(r);
    REQUIRE(wire::decode_error(*r).code == errc::overloaded);
    refused.insert(wire::peek(*r).request_id);
  }
  CHECK(*refused.begin() == share + 1);  // the first 8 were taken, every later one refused
  CHECK(*refused.rbegin() == flood);
  // A well-behaved client beside it: 4 requests, all taken.
  RawClient polite(broker.frontend_endpoint(), CurveClientKeys{k.client2, k.broker.public_key});
  for (std::uint32_t id = 1; id <= 4; ++id) polite.send(request_frame(s.head, id, 1000 + id));
  REQUIRE(eventually([&] { return broker.stats().requests == share + 4; }));
  CHECK(gate.received() == 1);

  // Let the worker answer one at a time: the queues take turns, one request each.
  for (int i = 1; i < static_cast<int>(share) + 4; ++i) {
    gate.release(1);
    REQUIRE(eventually([&] { return gate.received() == i + 1; }));
  }
  gate.release(1);
  const auto log = gate.log();
  REQUIRE(log.size() == share + 4);
  std::string order;
  for (const auto& [routing, id] : log) order += routing == log[0].first ? 'F' : 'P';
  CHECK(order == "FFPFPFPFPFFF");  // with one queue for all: FFFFFFFFPPPP

  int polite_good = 0, flooder_good = 0;
  for (int i = 0; i < 4; ++i) {
    const auto r = polite.receive(10s);
    REQUIRE(r);
    polite_good += wire::peek(*r).type == wire::MessageType::response;
  }
  for (std::uint32_t i = 0; i < share; ++i) {
    const auto r = flooder.receive(10s);
    REQUIRE(r);
    flooder_good += wire::peek(*r).type == wire::MessageType::response;
  }
  CHECK(polite_good == 4);
  CHECK(flooder_good == static_cast<int>(share));
  CHECK_FALSE(polite.receive(100ms));
  CHECK_FALSE(flooder.receive(100ms));
  REQUIRE(eventually([&] { return broker.stats().replies == share + 4; }));
  const BrokerStats st = broker.stats();
  CHECK(st.client_overloaded == flood - share);
  CHECK(st.rejected_overloaded == flood - share);  // all of them the flooder's own share
  CHECK(st.clients == 0);
  CHECK_FALSE(gate.failed());
  BrokerOptions none = broker_options(k);
  none.max_queued_per_client = 0;
  expect_errc(errc::invalid_argument, [&] { ZmqBroker b(none); });
}

TEST_CASE("Fairness under load: a flooding client gets 'overloaded', its neighbour all its answers", "[zmq]") {
  const Keys k;
  Split s = make_split(1ms);
  BrokerOptions bo = broker_options(k);
  bo.queue_capacity = 64;  // one queue for all would be full after the flooder's first 64
  bo.max_queued_per_client = 16;
  ZmqBroker broker(bo);
  auto w = start_worker(k, broker, s, 4);
  REQUIRE(eventually([&] { return broker.stats().workers == 1; }));

  // The well-behaved client keeps 4 requests in flight, 120 in all, while the flooder sends 600
  // without waiting for answers.
  constexpr std::uint32_t polite_total = 120, flood = 600;
  Tally polite;
  std::thread polite_thread([&] {
    pipelined_client(broker.frontend_endpoint(), CurveClientKeys{k.client2, k.broker.public_key}, s, polite_total, 4, 500,
                     polite);
  });
  REQUIRE(eventually([&] { return polite.good >= 10; }));
  Tally flooder;
  std::thread flooder_thread([&] {
    pipelined_client(broker.frontend_endpoint(), CurveClientKeys{k.client, k.broker.public_key}, s, flood, flood, 7000,
                     flooder);
  });
  polite_thread.join();
  flooder_thread.join();

  CHECK(polite.good == static_cast<int>(polite_total));
  CHECK(polite.overloaded == 0);
  CHECK(polite.wrong + polite.other_errors + polite.unknown == 0);
  CHECK(once_and_twice(polite) == std::pair<int, int>{static_cast<int>(polite_total), 0});
  // The flooder: every request answered exactly once, the excess with 'overloaded'.
  CHECK(once_and_twice(flooder) == std::pair<int, int>{static_cast<int>(flood), 0});
  CHECK(flooder.good + flooder.overloaded == static_cast<int>(flood));
  CHECK(flooder.overloaded > 0);
  CHECK(flooder.good >= 16);
  CHECK(flooder.wrong + flooder.other_errors + flooder.unknown == 0);
  REQUIRE(eventually([&] { return broker.stats().replies == broker.stats().requests; }));
  const BrokerStats st = broker.stats();
  CHECK(st.client_overloaded == static_cast<std::size_t>(flooder.overloaded.load()));
  CHECK(st.rejected_overloaded == st.client_overloaded);  // the global queue never filled
  CHECK(st.requests == polite_total + static_cast<std::size_t>(flooder.good.load()));
}

namespace {

// --- The broker on a virtual clock -------------------------------------------------------------

// A worker that says only what the test makes it say, over a raw DEALER socket: READY, then a
// REPLY when told. It sends no heartbeats, so to the broker it is silent from READY on.
struct SilentWorker {
  zmq::context_t ctx{1};
  zmq::socket_t s{ctx, zmq::socket_type::dealer};

  SilentWorker(const Keys& k, const std::string& backend) {
    s.set(zmq::sockopt::linger, 0);
    configure_curve_client(s, CurveClientKeys{k.worker, k.broker.public_key});
    s.connect(backend);
  }
  void send(std::initializer_list<std::span<const std::byte>> parts) {
    std::size_t i = 0;
    for (const auto& p : parts)
      REQUIRE(s.send(zmq::buffer(p.data(), p.size()), ++i < parts.size() ? zmq::send_flags::sndmore : zmq::send_flags::none));
  }
  void ready(std::uint32_t capacity) {
    send({wire::cluster::header(wire::cluster::Command::ready), wire::cluster::encode_capacity(capacity)});
  }
  // The next message carrying command `want` (others are skipped); empty when none came in `wait`.
  std::vector<zmq::message_t> next(wire::cluster::Command want, std::chrono::milliseconds wait) {
    const auto until = std::chrono::steady_clock::now() + wait;
    while (std::chrono::steady_clock::now() < until) {
      zmq_pollitem_t item{s.handle(), 0, ZMQ_POLLIN, 0};
      if (zmq_poll(&item, 1, 5) <= 0) continue;
      std::vector<zmq::message_t> parts;
      for (bool more = true; more;) {
        zmq::message_t m;
        if (!s.recv(m, zmq::recv_flags::dontwait)) break;
        more = m.more();
        parts.push_back(std::move(m));
      }
      if (!parts.empty() &&
          wire::cluster::parse_header({static_cast<const std::byte*>(parts[0].data()), parts[0].size()}) == want)
        return parts;
    }
    return {};
  }
};

}  // namespace

TEST_CASE("ZmqBroker on a virtual clock: heartbeats and worker expiry follow the clock, not real time", "[zmq]") {
  // Liveness 3 x 1 s: a silent worker is dead after 3 s of the broker's clock. The clock is
  // virtual and moved by the test, so the worker dies when the test says, without 3 s of waiting.
  const Keys k;
  Split s = make_split();
  BrokerOptions bo = broker_options(k);
  bo.heartbeat_interval = 1000ms;
  bo.liveness = 3;
  VirtualClock clock;
  ZmqBroker broker(bo, clock);
  SilentWorker a(k, broker.backend_endpoint());
  a.ready(1);  // at virtual time 0: dead after 3 s
  REQUIRE(eventually([&] { return broker.stats().workers == 1; }));

  // Heartbeats go out as the clock passes each interval.
  clock.advance_by(1000ms);
  CHECK_FALSE(a.next(wire::cluster::Command::heartbeat, 10s).empty());

  // At 2.9 s the worker is alive: a request goes to it (and it keeps it, unanswered).
  clock.advance_by(1900ms);
  RawClient client(broker.frontend_endpoint(), CurveClientKeys{k.client, k.broker.public_key});
  client.send(infer_frame(7, 70));
  const auto held = a.next(wire::cluster::Command::request, 10s);
  REQUIRE(held.size() == 3);
  CHECK(broker.stats().workers_expired == 0);

  // At 3.1 s it is dead: declared so on the broker's next turn, its request a suspect.
  clock.advance_by(200ms);
  REQUIRE(eventually([&] { return broker.stats().workers_expired == 1; }));
  BrokerStats st = broker.stats();
  CHECK(st.workers == 0);
  CHECK(st.suspects == 1);
  CHECK(st.resent == 1);

  // A new worker gets the suspect alone and answers it: the client gets the whole model's answer.
  SilentWorker b(k, broker.backend_endpoint());
  b.ready(1);
  const auto again = b.next(wire::cluster::Command::request, 10s);
  REQUIRE(again.size() == 3);
  CodecConfig cfg;
  cfg.bits = wire::raw_f32_bits;
  FeatureCodec codec(cfg);
  Tensor<float> features, y;
  std::uint32_t id = 0;
  (void)wire::decode_infer({static_cast<const std::byte*>(again[2].data()), again[2].size()}, codec, features, &id);
  CHECK(id == 7);
  std::vector<std::byte> out;
  wire::encode_response(out, id, wire::InferResponse{}, codec, s.tail.predict(features.cview()).cview());
  b.send({wire::cluster::header(wire::cluster::Command::reply),
          {static_cast<const std::byte*>(again[1].data()), again[1].size()}, out});
  const auto answer = client.receive(10s);
  REQUIRE(answer);
  (void)wire::decode_response(*answer, codec, y);
  CHECK(close_to(y, s.whole.predict(random_input(1, kIn, 70).cview())));
  REQUIRE(eventually([&] { return broker.stats().replies == 1; }));
  st = broker.stats();
  CHECK(st.workers_expired == 1);
  CHECK(st.dispatched == 2);
  CHECK(st.quarantined == 0);
}

// bench/transport_bench.cpp - round trips over loopback TCP through TcpTransport, beside a raw
// socket ping-pong of the same payload bytes in the same process.
//
// Variants (each its own connection to its own echo thread, which uses the same API as the client):
//   raw          blocking send()/recv() loops of exactly the payload, TCP_NODELAY, no framing:
//                the floor any message transport over TCP pays
//   edgesplit    TcpTransport::send / receive(no_deadline, reused Message): one blocking sendmsg
//                of length prefix + payload, blocking recv into the message
//   edgesplit_dl the same with a deadline on every call (poll before each read, non-blocking I/O),
//                as a server that must not hang on a stalled peer runs it
//
// Benchmarks:
//   TcpRoundTrip/<variant>/bytes:N   one variant; bytes_per_second counts both directions
//   TcpRoundTrip/paired/bytes:N      the three variants in turn, one round trip each per
//       iteration, every round trip timed on its own; counters are the median round-trip times
//       (us_raw, us_es, us_es_dl) and the ratios of the medians (es_over_raw, es_dl_over_raw).
//       This is the figure to quote on a shared, noisy machine: slow phases hit all variants
//       alike, and the median drops preempted calls.
//
// docs/performance.md has the command line and the figures.
#include <benchmark/benchmark.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

#include "edgesplit/core/random.hpp"
#include "edgesplit/transport/tcp.hpp"

namespace {

using namespace std::chrono_literals;
using edgesplit::Deadline;
using edgesplit::Message;
using edgesplit::TcpListener;
using edgesplit::TcpTransport;

// ---- raw sockets: the baseline -------------------------------------------------------------

void check(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(std::string(what) + ": " + std::to_string(errno));
}

void write_all(int fd, const std::byte* p, std::size_t n) {
  while (n > 0) {
    const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    check(w > 0, "send");
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

/// False on end of stream.
bool read_all(int fd, std::byte* p, std::size_t n) {
  while (n > 0) {
    const ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

/// A connected pair of plain blocking loopback sockets with TCP_NODELAY: {client, server}.
std::pair<int, int> raw_pair() {
  const int l = ::socket(AF_INET, SOCK_STREAM, 0);
  check(l >= 0, "socket");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  check(::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && ::listen(l, 1) == 0, "listen");
  check(::getsockname(l, reinterpret_cast<sockaddr*>(&a), &len) == 0, "getsockname");
  const int c = ::socket(AF_INET, SOCK_STREAM, 0);
  check(c >= 0 && ::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0, "connect");
  const int s = ::accept(l, nullptr, nullptr);
  check(s >= 0, "accept");
  ::close(l);
  const int one = 1;
  ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return {c, s};
}

// ---- one connection of each variant, with its echo thread ---------------------------------

class RawEcho {
 public:
  explicit RawEcho(std::size_t bytes) : bytes_(bytes) {
    auto [c, s] = raw_pair();
    client_ = c;
    server_ = s;
    echo_ = std::thread([s = s, bytes] {
      std::vector<std::byte> buf(bytes);
      while (read_all(s, buf.data(), bytes)) write_all(s, buf.data(), bytes);
    });
  }
  ~RawEcho() {
    ::shutdown(client_, SHUT_RDWR);
    echo_.join();
    ::close(client_);
    ::close(server_);
  }
  void round_trip(std::vector<std::byte>& payload, std::vector<std::byte>& back) {
    write_all(client_, payload.data(), bytes_);
    check(read_all(client_, back.data(), bytes_), "echo closed");
  }

 private:
  std::size_t bytes_;
  int client_ = -1, server_ = -1;
  std::thread echo_;
};

class TransportEcho {
 public:
  explicit TransportEcho(bool with_deadline) : with_deadline_(with_deadline) {
    TcpListener listener = TcpListener::bind("127.0.0.1", 0);
    client_ = std::make_unique<TcpTransport>(TcpTransport::connect("127.0.0.1", listener.port()));
    auto server = listener.accept(edgesplit::deadline_after(5s));
    check(server.has_value(), "accept");
    echo_ = std::thread([t = std::move(*server), with_deadline]() mutable {
      Message m;
      try {
        for (;;) {
          const Deadline d = with_deadline ? edgesplit::deadline_after(10s) : edgesplit::no_deadline;
          if (!t.receive(d, m)) return;
          t.send(m.view(), with_deadline ? edgesplit::deadline_after(10s) : edgesplit::no_deadline);
        }
      } catch (const edgesplit::error&) {  // the client closed: done
      }
    });
  }
  ~TransportEcho() {
    client_->close();
    echo_.join();
  }
  void round_trip(std::vector<std::byte>& payload, Message& back) {
    const auto deadline = [&] { return with_deadline_ ? edgesplit::deadline_after(10s) : edgesplit::no_deadline; };
    client_->send(payload, deadline());
    check(client_->receive(deadline(), back), "receive timed out");
  }

 private:
  bool with_deadline_;
  std::unique_ptr<TcpTransport> client_;
  std::thread echo_;
};

std::vector<std::byte> payload_of(std::size_t n) {
  edgesplit::Rng rng(0x7c9);
  std::vector<std::byte> p(n);
  for (auto& b : p) b = static_cast<std::byte>(rng.next());
  return p;
}

void set_bytes(benchmark::State& state, std::size_t n) {
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * 2 * static_cast<std::int64_t>(n));
}

void BM_Raw(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  auto payload = payload_of(n);
  std::vector<std::byte> back(n);
  RawEcho echo(n);
  for (auto _ : state) echo.round_trip(payload, back);
  set_bytes(state, n);
}

void BM_Transport(benchmark::State& state, bool with_deadline) {
  const auto n = static_cast<std::size_t>(state.range(0));
  auto payload = payload_of(n);
  Message back;
  TransportEcho echo(with_deadline);
  for (auto _ : state) echo.round_trip(payload, back);
  if (back.bytes != payload) state.SkipWithError("echo differs from what was sent");
  set_bytes(state, n);
}

double median(std::vector<double>& v) {
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

void BM_Paired(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  auto payload = payload_of(n);
  std::vector<std::byte> raw_back(n);
  Message es_back, dl_back;
  RawEcho raw(n);
  TransportEcho es(false), dl(true);
  std::vector<double> t_raw, t_es, t_dl;
  const auto timed = [](std::vector<double>& into, auto&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    into.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  };
  std::uint64_t turn = 0;
  for (auto _ : state) {
    // Rotate which variant goes first, so none always follows the same one.
    for (int k = 0; k < 3; ++k) {
      switch ((turn + static_cast<std::uint64_t>(k)) % 3) {
        case 0: timed(t_raw, [&] { raw.round_trip(payload, raw_back); }); break;
        case 1: timed(t_es, [&] { es.round_trip(payload, es_back); }); break;
        default: timed(t_dl, [&] { dl.round_trip(payload, dl_back); }); break;
      }
    }
    ++turn;
  }
  if (es_back.bytes != payload || dl_back.bytes != payload || raw_back != payload) {
    state.SkipWithError("echo differs from what was sent");
    return;
  }
  const double m_raw = median(t_raw), m_es = median(t_es), m_dl = median(t_dl);
  state.counters["us_raw"] = m_raw;
  state.counters["us_es"] = m_es;
  state.counters["us_es_dl"] = m_dl;
  state.counters["es_over_raw"] = m_es / m_raw;
  state.counters["es_dl_over_raw"] = m_dl / m_raw;
}

void sizes(benchmark::internal::Benchmark* b) {
  b->ArgName("bytes")->Arg(1 << 10)->Arg(64 << 10)->Arg(1 << 20)->UseRealTime()->Unit(benchmark::kMicrosecond);
}

}  // namespace

BENCHMARK(BM_Raw)->Name("TcpRoundTrip/raw")->Apply(sizes);
BENCHMARK_CAPTURE(BM_Transport, edgesplit, false)->Name("TcpRoundTrip/edgesplit")->Apply(sizes);
BENCHMARK_CAPTURE(BM_Transport, edgesplit_dl, true)->Name("TcpRoundTrip/edgesplit_dl")->Apply(sizes);
BENCHMARK(BM_Paired)->Name("TcpRoundTrip/paired")->Apply(sizes);

BENCHMARK_MAIN();

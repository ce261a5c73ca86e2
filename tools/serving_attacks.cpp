// serving_attacks: replays hostile clients against a real cloud_node process and measures what
// each attack costs the server and a well-behaved client beside it.
//
//   serving_attacks --server LABEL=PATH [--server LABEL=PATH ...] [--server-arg LABEL=ARG ...]
//                   (--model FILE | --make-model FILE) [--split 2] [--model-id fmnist-mlp]
//                   [--attacks all|LIST] [--scale quick|full] [--runs 1] [--csv FILE]
//                   [--duration-s S] [--baseline-s S] [--idle-counts 5000,10000]
//                   [--rss-cap-mib 4096] [--max-seconds 3600] [--work-dir DIR]
//                   [--check --check-budget-mib N [--check-overhead-mib 64]]
//
// For every run, attack and server (servers alternate within an attack, so old and new are
// measured side by side under the same machine load), a fresh cloud_node is started with
// posix_spawn on 127.0.0.1 (--port 0, --port-file), a well-behaved client (HELLO, then one INFER
// at a time with fp32 features of the split's width) measures its latency alone for a baseline,
// then the attack runs while the client keeps measuring, and the server is stopped (SIGTERM,
// then SIGKILL). Server side: VmRSS and VmHWM (/proc/<pid>/status), threads, CPU time during
// the attack (utime + stime of /proc/<pid>/stat, as % of one core), alive or how it died.
// Attacker side: replies counted by kind (RESPONSE, ERROR code), connections the server closed,
// bytes. Both sides also keep what each RESPONSE says of itself (queue_us, compute_us), so that
// the well-behaved client's latency splits into the server's queue, the forward pass and the
// rest (the event loop, the sockets, the client's own thread). One line per attack on standard output; --csv writes one row per measurement.
//
// Attacks (each bounded in time, connections, requests and bytes on this side):
//   poison     INFER with fp32 features of 3e38, and int8 codes at the largest scale 8-bit codes
//              accept (quant/quant_params.hpp valid_scale), alternately, every 20 ms
//   prefix     connections that send a length prefix announcing 64 MiB, then 1 byte a second
//   helloprefix the same after a HELLO (a peer let in, stuck inside a frame it never finishes)
//   bomb       legal zstd INFER frames (about 600 bytes: 16 Mi int8 codes of 0) that decode to 64 MiB
//              of fp32 features, pipelined on a few connections that read their answers
//   noread     clients pipelining INFERs as fast as the socket takes them, never reading
//   slowread   rotating peers (4 KiB receive buffers) whose requests' replies outgrow the kernel's
//              socket buffers (zstd-compressed fp32 zeros), never reading
//   idle       N connections that say HELLO and then nothing (a row per count of --idle-counts)
//   flood      one client pipelining INFERs as fast as it can, reading its answers
//   slowloris  connections sending a HELLO one byte a second, reconnecting when dropped
// and, by name only (not in "all"):
//   noreadhold peers that never read and stop sending just below the server's unread-reply
//              limit (found by one probing connection), then hold their connection: PINGs
//   emfile     the server's open-files limit lowered (prlimit) below the connections offered
//
// --check (for CI) fails (exit 1) unless, for every attack, the server survived, the
// well-behaved client got every answer (no ERROR, no timeout, no lost connection) and VmHWM
// stayed under --check-budget-mib + --check-overhead-mib.
//
// Exit status: 0 on success, 1 when a check failed, 2 on bad arguments, 3 when --max-seconds
// passed (the server is killed).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cfloat>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <edgesplit/edgesplit.hpp>
#include <edgesplit/io/safetensors.hpp>
#include <edgesplit/transport/tcp.hpp>
#include <edgesplit/wire/protocol.hpp>
#include <edgesplit/wire/tensor_payload.hpp>
#if EDGESPLIT_HAS_ZSTD
#include <zstd.h>
#endif

extern char** environ;

namespace {

using namespace edgesplit;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;
namespace fs = std::filesystem;

double since(SteadyClock::time_point t) { return std::chrono::duration<double>(SteadyClock::now() - t).count(); }
void sleep_s(double s) { std::this_thread::sleep_for(std::chrono::duration<double>(s)); }
SteadyClock::time_point after(double s) {
  return SteadyClock::now() + std::chrono::duration_cast<SteadyClock::duration>(std::chrono::duration<double>(s));
}

// --- options -------------------------------------------------------------------------------------

/// How big and how long each attack is.
struct Scale {
  std::string name;
  double baseline_s, duration_s, client_timeout_s, stop_grace_s, setup_timeout_s;
  std::size_t poison_max;
  std::size_t prefix_conns;
  std::size_t bomb_conns, bomb_window, bomb_max;
  std::size_t noread_conns, noread_max_requests;
  std::size_t noreadhold_conns;
  std::size_t slowread_slots, slowread_requests, slowread_rows;
  double slowread_life_s;
  std::vector<std::size_t> idle_counts;
  double hold_s;
  std::size_t flood_max;
  std::size_t slowloris_conns;
  std::size_t emfile_limit, emfile_conns;
};

Scale quick_scale() {
  Scale s;
  s.name = "quick";
  s.baseline_s = 0.25, s.duration_s = 0.8, s.client_timeout_s = 3, s.stop_grace_s = 2, s.setup_timeout_s = 5;
  s.poison_max = 10;
  s.prefix_conns = 20;
  s.bomb_conns = 2, s.bomb_window = 4, s.bomb_max = 16;
  s.noread_conns = 4, s.noread_max_requests = 20000;
  s.noreadhold_conns = 4;
  s.slowread_slots = 2, s.slowread_requests = 32, s.slowread_rows = 64, s.slowread_life_s = 0.4;
  s.idle_counts = {300};
  s.hold_s = 0.5;
  s.flood_max = 200000;
  s.slowloris_conns = 20;
  s.emfile_limit = 64, s.emfile_conns = 100;
  return s;
}

Scale full_scale() {
  Scale s;
  s.name = "full";
  s.baseline_s = 3, s.duration_s = 15, s.client_timeout_s = 5, s.stop_grace_s = 8, s.setup_timeout_s = 60;
  s.poison_max = 400;
  s.prefix_conns = 1000;
  s.bomb_conns = 4, s.bomb_window = 16, s.bomb_max = 4000;
  s.noread_conns = 64, s.noread_max_requests = 200000;
  s.noreadhold_conns = 100;
  // 32 x 4096 samples: 5.2 MiB of replies per peer, more than the kernel's socket buffers hold
  // (tcp_wmem's 4 MiB), so that a server writing to it must wait or queue.
  s.slowread_slots = 4, s.slowread_requests = 32, s.slowread_rows = 4096, s.slowread_life_s = 6;
  s.idle_counts = {5000, 10000};
  s.hold_s = 10;
  s.flood_max = 20000000;
  s.slowloris_conns = 1000;
  s.emfile_limit = 512, s.emfile_conns = 800;
  return s;
}

struct ServerSpec {
  std::string label, path;
  std::vector<std::string> args;
};

struct Options {
  std::vector<ServerSpec> servers;
  std::string model, make_model, model_id = "fmnist-mlp", csv, work_dir;
  std::uint16_t split = 2;
  std::vector<std::string> attacks;
  Scale scale = full_scale();
  std::size_t runs = 1;
  double rss_cap_mib = 4096, max_seconds = 3600;
  bool check = false;
  double check_budget_mib = 0, check_overhead_mib = 64;
};

const std::vector<std::string> all_attacks = {"poison", "prefix", "helloprefix", "bomb", "noread", "slowread", "idle", "flood", "slowloris"};
const std::vector<std::string> extra_attacks = {"noreadhold", "emfile"};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

double parse_number(const std::string& v, const std::string& what, double lo, double hi) {
  char* end = nullptr;
  const double d = std::strtod(v.c_str(), &end);
  if (v.empty() || end == nullptr || *end != '\0' || !(d >= lo && d <= hi))
    fail(errc::invalid_argument, what + " must be a number in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], not '" + v + "'");
  return d;
}

Options parse(int argc, char** argv) {
  Options o;
  std::optional<double> duration, baseline;
  std::string idle_counts, attacks = "all";
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--check") {
      o.check = true;
      continue;
    }
    if (i + 1 >= argc) fail(errc::invalid_argument, "option " + k + " needs a value");
    const std::string v = argv[++i];
    const auto labelled = [&](std::string& label, std::string& rest) {
      const auto eq = v.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == v.size()) fail(errc::invalid_argument, k + " takes LABEL=VALUE, not '" + v + "'");
      label = v.substr(0, eq);
      rest = v.substr(eq + 1);
    };
    if (k == "--server") {
      ServerSpec s;
      labelled(s.label, s.path);
      for (const auto& e : o.servers)
        if (e.label == s.label) fail(errc::invalid_argument, "two servers labelled " + s.label);
      o.servers.push_back(s);
    } else if (k == "--server-arg") {
      std::string label, arg;
      labelled(label, arg);
      auto it = std::find_if(o.servers.begin(), o.servers.end(), [&](const ServerSpec& s) { return s.label == label; });
      if (it == o.servers.end()) fail(errc::invalid_argument, "--server-arg for unknown server " + label + " (give --server first)");
      it->args.push_back(arg);
    } else if (k == "--model") o.model = v;
    else if (k == "--make-model") o.make_model = v;
    else if (k == "--model-id") o.model_id = v;
    else if (k == "--split") o.split = static_cast<std::uint16_t>(parse_number(v, k, 0, 64));
    else if (k == "--attacks") attacks = v;
    else if (k == "--scale") {
      if (v == "quick") o.scale = quick_scale();
      else if (v == "full") o.scale = full_scale();
      else fail(errc::invalid_argument, "--scale is quick or full, not " + v);
    } else if (k == "--runs") o.runs = static_cast<std::size_t>(parse_number(v, k, 1, 50));
    else if (k == "--csv") o.csv = v;
    else if (k == "--duration-s") duration = parse_number(v, k, 0.1, 600);
    else if (k == "--baseline-s") baseline = parse_number(v, k, 0.1, 600);
    else if (k == "--idle-counts") idle_counts = v;
    else if (k == "--rss-cap-mib") o.rss_cap_mib = parse_number(v, k, 16, 1 << 20);
    else if (k == "--max-seconds") o.max_seconds = parse_number(v, k, 1, 86400);
    else if (k == "--work-dir") o.work_dir = v;
    else if (k == "--check-budget-mib") o.check_budget_mib = parse_number(v, k, 1, 1 << 20);
    else if (k == "--check-overhead-mib") o.check_overhead_mib = parse_number(v, k, 0, 1 << 20);
    else fail(errc::invalid_argument, "unknown option " + k);
  }
  if (duration) o.scale.duration_s = *duration, o.scale.hold_s = std::min(o.scale.hold_s, *duration);
  if (baseline) o.scale.baseline_s = *baseline;
  if (!idle_counts.empty()) {
    o.scale.idle_counts.clear();
    for (const auto& c : split_list(idle_counts)) o.scale.idle_counts.push_back(static_cast<std::size_t>(parse_number(c, "--idle-counts", 1, 19000)));
  }
  if (o.servers.empty()) fail(errc::invalid_argument, "give at least one --server LABEL=PATH (a cloud_node binary)");
  if (o.model.empty() == o.make_model.empty()) fail(errc::invalid_argument, "give exactly one of --model FILE and --make-model FILE");
  if (o.check && o.check_budget_mib <= 0) fail(errc::invalid_argument, "--check needs --check-budget-mib (the server's --memory-budget-mib)");
  for (const auto& a : split_list(attacks)) {
    if (a == "all") {
      o.attacks.insert(o.attacks.end(), all_attacks.begin(), all_attacks.end());
    } else if (a == "everything") {
      o.attacks.insert(o.attacks.end(), all_attacks.begin(), all_attacks.end());
      o.attacks.insert(o.attacks.end(), extra_attacks.begin(), extra_attacks.end());
    } else if (std::find(all_attacks.begin(), all_attacks.end(), a) != all_attacks.end() ||
               std::find(extra_attacks.begin(), extra_attacks.end(), a) != extra_attacks.end()) {
      o.attacks.push_back(a);
    } else {
      fail(errc::invalid_argument, "unknown attack " + a);
    }
  }
  if (o.attacks.empty()) fail(errc::invalid_argument, "no attack selected");
  return o;
}

// --- what the harness talks to ---------------------------------------------------------------------

/// The server under test, as the requests must name it.
struct Target {
  std::uint16_t port = 0;
  std::string model_id;
  std::uint16_t split = 0;
  std::size_t width = 0;  ///< features per sample at the split
};

std::vector<std::byte> hello_frame(const Target& t, std::uint32_t id) {
  std::vector<std::byte> f;
  wire::encode_hello(f, {t.model_id, 1, 0, t.split}, id);
  return f;
}

/// An INFER frame written field by field, so that the features can be anything the wire format
/// accepts (a chosen quantization scale, a chosen zstd frame).
void infer_frame(std::vector<std::byte>& out, const Target& t, std::uint32_t id, const Shape& shape, int bits,
                 wire::Lossless lossless, const QuantParams* params, std::span<const std::byte> data) {
  wire::begin_frame(out, wire::MessageType::infer, id);
  wire::ByteWriter w(out);
  wire::detail::write_string(w, t.model_id, wire::max_model_id_bytes, "model id");
  w.u16(t.split);
  w.u32(0);  // no deadline
  wire::write_tensor_header(w, shape, bits, lossless, params);
  w.u32(static_cast<std::uint32_t>(data.size()));
  const auto dst = w.reserve(data.size());
  if (!data.empty()) std::memcpy(dst.data(), data.data(), data.size());
  wire::finish_frame(out);
}

/// INFER with raw fp32 features, `rows` samples, every value `value` (or `values` when given).
void infer_f32(std::vector<std::byte>& out, const Target& t, std::uint32_t id, std::size_t rows, float value,
               const std::vector<float>* values = nullptr) {
  std::vector<std::byte> data(rows * t.width * 4);
  for (std::size_t i = 0; i < rows * t.width; ++i) {
    const float v = values ? (*values)[i % values->size()] : value;
    std::memcpy(data.data() + 4 * i, &v, 4);
  }
  infer_frame(out, t, id, Shape{rows, t.width}, wire::raw_f32_bits, wire::Lossless::none, nullptr, data);
}

void append_framed(std::vector<std::byte>& out, std::span<const std::byte> frame) {
  const auto n = static_cast<std::uint32_t>(frame.size());
  const std::byte prefix[4] = {std::byte(n & 0xFF), std::byte((n >> 8) & 0xFF), std::byte((n >> 16) & 0xFF), std::byte(n >> 24)};
  out.insert(out.end(), prefix, prefix + 4);
  out.insert(out.end(), frame.begin(), frame.end());
}

/// What a reply frame is, from its first bytes: "RESPONSE", "ERROR overloaded", "HELLO", ...
std::string frame_kind(const unsigned char* h, std::size_t n) {
  if (n < 8) return "short frame";
  switch (h[6]) {
    case 1: return "HELLO";
    case 3: return "RESPONSE";
    case 4: return n > wire::frame_header_size ? "ERROR " + std::string(to_string(static_cast<errc>(h[wire::frame_header_size]))) : "ERROR";
    case 5: return "WEIGHTS";
    case 7: return "PONG";
    default: return "type " + std::to_string(h[6]);
  }
}

/// The server's own account of its RESPONSEs (queue_us, compute_us of the frame), in ms: where a
/// request's time went inside the server. Keeps at most `cap` samples of each.
struct ServerTimes {
  static constexpr std::size_t cap = 200000;
  std::vector<double> queue_ms, compute_ms;
  void add(std::uint32_t queue_us, std::uint32_t compute_us) {
    if (queue_ms.size() >= cap) return;
    queue_ms.push_back(queue_us / 1000.0);
    compute_ms.push_back(compute_us / 1000.0);
  }
};

/// queue_us and compute_us of a RESPONSE frame from its first 33 bytes (frame header, u8 status,
/// u32 queue_us, u32 compute_us); false for anything else.
bool response_times(const unsigned char* h, std::size_t n, std::uint32_t& queue_us, std::uint32_t& compute_us) {
  constexpr std::size_t at = wire::frame_header_size + 1;
  if (n < at + 8 || h[6] != 3) return false;
  queue_us = wire::load_le32(reinterpret_cast<const std::byte*>(h + at));
  compute_us = wire::load_le32(reinterpret_cast<const std::byte*>(h + at + 4));
  return true;
}

/// Counts the frames of a reply stream by kind, keeping only each frame's first bytes: memory
/// stays constant whatever the server sends.
class Skimmer {
 public:
  /// Feeds `n` bytes; counts every completed frame in `counts` (and the server times of each
  /// RESPONSE in `times`, when given); returns the completed frames that were not HELLO answers.
  std::size_t feed(const std::byte* p, std::size_t n, std::map<std::string, std::size_t>& counts, ServerTimes* times = nullptr) {
    std::size_t done = 0;
    while (n > 0) {
      if (!in_frame_) {
        pre_[pre_n_++] = static_cast<unsigned char>(*p++), --n;
        if (pre_n_ < 4) continue;
        pre_n_ = 0;
        len_ = std::uint32_t{pre_[0]} | std::uint32_t{pre_[1]} << 8 | std::uint32_t{pre_[2]} << 16 | std::uint32_t{pre_[3]} << 24;
        in_frame_ = true, got_ = 0, head_n_ = 0;
      } else {
        const std::size_t take = std::min<std::size_t>(n, len_ - got_);
        for (std::size_t i = 0; i < take && head_n_ < sizeof head_; ++i) head_[head_n_++] = static_cast<unsigned char>(p[i]);
        got_ += take, p += take, n -= take;
      }
      if (in_frame_ && got_ == len_) {
        in_frame_ = false;
        const std::string kind = frame_kind(head_, head_n_);
        ++counts[kind];
        std::uint32_t q = 0, c = 0;
        if (times && response_times(head_, head_n_, q, c)) times->add(q, c);
        if (kind != "HELLO") ++done;
      }
    }
    return done;
  }

 private:
  unsigned char pre_[4] = {};
  std::size_t pre_n_ = 0;
  bool in_frame_ = false;
  std::uint32_t len_ = 0, got_ = 0;
  unsigned char head_[40] = {};
  std::size_t head_n_ = 0;
};

// --- sockets -------------------------------------------------------------------------------------

int open_socket(int rcvbuf) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (rcvbuf > 0) (void)::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  const int one = 1;
  (void)::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

bool start_connect(int fd, std::uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return ::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0 || errno == EINPROGRESS;
}

bool connect_finished(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  return ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0;
}

/// A connected non-blocking socket to 127.0.0.1:port, or -1.
int connect_wait(std::uint16_t port, double timeout_s, int rcvbuf = 0) {
  const int fd = open_socket(rcvbuf);
  if (fd < 0) return -1;
  if (!start_connect(fd, port)) {
    ::close(fd);
    return -1;
  }
  pollfd p{fd, POLLOUT, 0};
  if (::poll(&p, 1, static_cast<int>(timeout_s * 1000)) != 1 || !connect_finished(fd)) {
    ::close(fd);
    return -1;
  }
  return fd;
}

enum class Io { ok, closed };

/// Sends what the socket takes of out[pos..]; `closed` when the peer is gone.
Io send_some(int fd, const std::vector<std::byte>& out, std::size_t& pos, std::size_t& counter) {
  while (pos < out.size()) {
    const ssize_t w = ::send(fd, out.data() + pos, out.size() - pos, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) {
      pos += static_cast<std::size_t>(w), counter += static_cast<std::size_t>(w);
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Io::ok;
    return Io::closed;
  }
  return Io::ok;
}

/// Reads everything available into `sk`; `closed` at end of stream or on error.
Io read_some(int fd, Skimmer& sk, std::map<std::string, std::size_t>& counts, std::size_t& counter, std::size_t* frames = nullptr,
             ServerTimes* times = nullptr) {
  std::byte buf[64 * 1024];
  for (;;) {
    const ssize_t r = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (r > 0) {
      counter += static_cast<std::size_t>(r);
      const std::size_t f = sk.feed(buf, static_cast<std::size_t>(r), counts, times);
      if (frames) *frames += f;
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Io::ok;
    return Io::closed;
  }
}

/// Sends all of `bytes` within `timeout_s`; false if the peer is gone or the time passed.
bool send_whole(int fd, std::span<const std::byte> bytes, double timeout_s, std::size_t& counter) {
  const auto until = after(timeout_s);
  std::vector<std::byte> buf(bytes.begin(), bytes.end());
  std::size_t pos = 0;
  while (pos < buf.size()) {
    if (send_some(fd, buf, pos, counter) == Io::closed) return false;
    if (pos == buf.size()) break;
    if (SteadyClock::now() >= until) return false;
    pollfd p{fd, POLLOUT, 0};
    (void)::poll(&p, 1, 10);
  }
  return true;
}

/// True when the server has closed (or reset) the connection; reads nothing.
bool peer_closed(int fd) {
  pollfd p{fd, POLLRDHUP, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

void raise_file_limit() {
  rlimit r{};
  if (::getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    (void)::setrlimit(RLIMIT_NOFILE, &r);
  }
}

// --- the server process -------------------------------------------------------------------------

std::atomic<pid_t> g_server_pid{-1};

extern "C" void on_fatal_signal(int sig) {
  const pid_t p = g_server_pid.load();
  if (p > 0) ::kill(p, SIGKILL);
  static const char msg[] = "serving_attacks: stopped (signal or --max-seconds); the server was killed\n";
  [[maybe_unused]] const ssize_t w = ::write(STDERR_FILENO, msg, sizeof msg - 1);
  ::_exit(sig == SIGALRM ? 3 : 128 + sig);
}

std::string describe_status(int st) {
  if (WIFEXITED(st)) return "exit " + std::to_string(WEXITSTATUS(st));
  if (WIFSIGNALED(st)) {
    switch (WTERMSIG(st)) {
      case SIGABRT: return "SIGABRT";
      case SIGKILL: return "SIGKILL";
      case SIGSEGV: return "SIGSEGV";
      case SIGBUS: return "SIGBUS";
      case SIGTERM: return "SIGTERM";
      case SIGFPE: return "SIGFPE";
      case SIGILL: return "SIGILL";
      default: return "signal " + std::to_string(WTERMSIG(st));
    }
  }
  return "status " + std::to_string(st);
}

struct ProcStatus {
  bool ok = false;
  double rss_mib = 0, hwm_mib = 0;
  long threads = 0;
};

ProcStatus read_status(pid_t pid) {
  ProcStatus s;
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    const auto value = [&] { return std::strtod(line.c_str() + line.find(':') + 1, nullptr); };
    if (line.rfind("VmRSS:", 0) == 0) s.rss_mib = value() / 1024, s.ok = true;
    else if (line.rfind("VmHWM:", 0) == 0) s.hwm_mib = value() / 1024;
    else if (line.rfind("Threads:", 0) == 0) s.threads = static_cast<long>(value());
  }
  return s;
}

/// utime + stime of the process, in seconds.
std::optional<double> read_cpu_s(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto paren = text.rfind(')');
  if (paren == std::string::npos) return std::nullopt;
  std::istringstream rest(text.substr(paren + 2));
  std::vector<std::string> f;
  for (std::string x; rest >> x;) f.push_back(x);
  if (f.size() < 13) return std::nullopt;  // fields 3.. of stat: utime is field 14, stime 15
  const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  return (std::strtod(f[11].c_str(), nullptr) + std::strtod(f[12].c_str(), nullptr)) / ticks;
}

class ServerProcess {
 public:
  ServerProcess(const ServerSpec& spec, const std::string& model, const Target& t, const fs::path& port_file, const fs::path& log)
      : port_file_(port_file) {
    fs::remove(port_file);
    std::vector<std::string> args = {spec.path, "--model", model, "--split", std::to_string(t.split), "--model-id", t.model_id,
                                     "--host", "127.0.0.1", "--port", "0", "--port-file", port_file.string()};
    args.insert(args.end(), spec.args.begin(), spec.args.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none, defaults;
    sigemptyset(&none);
    sigemptyset(&defaults);
    for (int s : {SIGPIPE, SIGINT, SIGTERM, SIGALRM}) sigaddset(&defaults, s);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    const int rc = ::posix_spawn(&pid_, spec.path.c_str(), &fa, &attr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) fail(errc::io_error, "posix_spawn " + spec.path + ": " + std::strerror(rc));
    g_server_pid = pid_;
  }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;
  ~ServerProcess() {
    if (!exit_status()) {
      ::kill(pid_, SIGKILL);
      std::lock_guard lock(mutex_);
      int st = 0;
      if (::waitpid(pid_, &st, 0) == pid_) reaped_ = true, status_ = st;
    }
    g_server_pid = -1;
  }

  pid_t pid() const noexcept { return pid_; }
  std::uint16_t port() const noexcept { return port_; }

  /// Waits for the port file; false if the server died or did not write it in time.
  bool wait_port(double timeout_s) {
    const auto until = after(timeout_s);
    while (SteadyClock::now() < until) {
      if (exit_status()) return false;
      std::ifstream in(port_file_);
      std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (!text.empty() && text.back() == '\n') {
        const long p = std::strtol(text.c_str(), nullptr, 10);
        if (p > 0 && p < 65536) {
          port_ = static_cast<std::uint16_t>(p);
          return true;
        }
      }
      sleep_s(0.01);
    }
    return false;
  }

  /// The exit status once the process has ended (reaped here, once, from any thread).
  std::optional<int> exit_status() {
    std::lock_guard lock(mutex_);
    if (!reaped_) {
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) reaped_ = true, status_ = st;
    }
    return reaped_ ? std::optional<int>(status_) : std::nullopt;
  }

  /// SIGTERM, up to `grace_s` for a clean exit, then SIGKILL; how it ended.
  std::string stop(double grace_s) {
    if (auto st = exit_status()) return describe_status(*st);
    ::kill(pid_, SIGTERM);
    const auto until = after(grace_s);
    while (SteadyClock::now() < until) {
      if (auto st = exit_status()) return "stopped by SIGTERM: " + describe_status(*st);
      sleep_s(0.01);
    }
    ::kill(pid_, SIGKILL);
    std::lock_guard lock(mutex_);
    int st = 0;
    if (::waitpid(pid_, &st, 0) == pid_) reaped_ = true, status_ = st;
    return "SIGTERM ignored for " + std::to_string(static_cast<int>(grace_s)) + " s: SIGKILL";
  }

 private:
  fs::path port_file_;
  pid_t pid_ = -1;
  std::uint16_t port_ = 0;
  std::mutex mutex_;
  bool reaped_ = false;
  int status_ = 0;
};

/// Samples the server every 50 ms: resident memory, threads, CPU time, liveness; kills it when
/// its resident memory passes the cap (so that a bloating server cannot take the machine).
class Monitor {
 public:
  Monitor(ServerProcess& s, double cap_mib) : s_(s), cap_mib_(cap_mib) {
    thread_ = std::thread([this] { run(); });
  }
  Monitor(const Monitor&) = delete;
  Monitor& operator=(const Monitor&) = delete;
  ~Monitor() { stop(); }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  /// Starts the window over which maxima are taken.
  void reset_window() {
    std::lock_guard lock(mutex_);
    rss_max_ = rss_now_, threads_max_ = threads_now_;
  }
  struct Snapshot {
    double rss_now = 0, rss_max = 0, hwm = 0, cpu_s = 0;
    long threads_now = 0, threads_max = 0;
    bool dead = false;
    double killed_at_mib = 0;  // > 0: killed by the harness at this resident size
  };
  Snapshot snapshot() {
    sample();
    std::lock_guard lock(mutex_);
    return {rss_now_, rss_max_, hwm_, cpu_s_, threads_now_, threads_max_, dead_, killed_at_};
  }
  bool dead() {
    std::lock_guard lock(mutex_);
    return dead_;
  }

 private:
  void run() {
    while (!stop_) {
      sample();
      sleep_s(0.05);
    }
  }
  void sample() {
    if (s_.exit_status()) {
      std::lock_guard lock(mutex_);
      dead_ = true;
      return;
    }
    const ProcStatus st = read_status(s_.pid());
    const auto cpu = read_cpu_s(s_.pid());
    if (!st.ok) return;
    bool kill = false;
    {
      std::lock_guard lock(mutex_);
      rss_now_ = st.rss_mib, hwm_ = std::max(hwm_, st.hwm_mib), threads_now_ = st.threads;
      rss_max_ = std::max(rss_max_, st.rss_mib), threads_max_ = std::max(threads_max_, st.threads);
      if (cpu) cpu_s_ = *cpu;
      if (st.rss_mib > cap_mib_ && killed_at_ == 0) killed_at_ = st.rss_mib, kill = true;
    }
    if (kill) ::kill(s_.pid(), SIGKILL);
  }

  ServerProcess& s_;
  const double cap_mib_;
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  double rss_now_ = 0, rss_max_ = 0, hwm_ = 0, cpu_s_ = 0, killed_at_ = 0;
  long threads_now_ = 0, threads_max_ = 0;
  bool dead_ = false;
  std::thread thread_;
};

// --- the well-behaved client ---------------------------------------------------------------------

/// What the well-behaved client saw in one phase.
struct ClientPhase {
  std::vector<double> ms;  ///< latency of each RESPONSE, and of each timeout (as the timeout)
  /// Of each RESPONSE: the time the server says it spent on it (queue_us: waiting in its queue
  /// for a worker, company and the decoding of its batch; compute_us: the forward pass), and the
  /// rest of the latency (reading, the event loop, writing, this client's own thread).
  std::vector<double> queue_ms, compute_ms, outside_ms;
  std::size_t sent = 0, answered = 0, errors = 0, timeouts = 0, lost = 0;
  std::map<std::string, std::size_t> codes;  ///< ERROR replies and lost connections, by kind
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(std::ceil(p * static_cast<double>(v.size()))) - 1;
  return v[std::min(i, v.size() - 1)];
}

/// HELLO, then one INFER at a time (fp32 features of the split's width, one sample), each
/// waited for up to a timeout; reconnects when the connection is lost.
class GoodClient {
 public:
  GoodClient(const Target& t, double timeout_s) : t_(t), timeout_s_(timeout_s) {
    thread_ = std::thread([this] { run(); });
  }
  GoodClient(const GoodClient&) = delete;
  GoodClient& operator=(const GoodClient&) = delete;
  ~GoodClient() { stop(); }
  /// 0: baseline, 1: under attack, 2: paused (sends nothing).
  void set_phase(int p) { phase_ = p; }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  /// The phase's results; only after stop().
  const ClientPhase& phase(int p) const { return phases_[p]; }
  std::size_t answered_so_far() const { return progress_.load(); }

 private:
  void run() {
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    std::vector<float> values(t_.width);
    std::optional<TcpTransport> link;
    std::vector<std::byte> frame;
    Message m;
    std::uint32_t id = 1;
    const auto timeout = std::chrono::duration_cast<SteadyClock::duration>(std::chrono::duration<double>(timeout_s_));
    while (!stop_) {
      if (phase_.load() == 2) {
        sleep_s(0.01);
        continue;
      }
      ClientPhase& ph = phases_[phase_.load()];
      if (!link) {
        try {
          link.emplace(TcpTransport::connect("127.0.0.1", t_.port, deadline_after(2s)));
          const auto hello = hello_frame(t_, id++);
          link->send(hello, deadline_after(timeout));
          if (!link->receive(deadline_after(timeout), m) || wire::peek(m.view()).type != wire::MessageType::hello)
            fail(errc::unreachable, "no HELLO answer");
        } catch (const std::exception&) {
          link.reset();
          sleep_s(0.05);
          continue;
        }
      }
      for (auto& v : values) v = u(rng);
      infer_f32(frame, t_, id, 1, 0, &values);
      const auto t0 = SteadyClock::now();
      try {
        link->send(frame, t0 + timeout);
        ++ph.sent;
        for (;;) {
          if (!link->receive(t0 + timeout, m)) {
            ++ph.timeouts;
            ph.ms.push_back(timeout_s_ * 1000);
            break;
          }
          const wire::FrameHeader h = wire::peek(m.view());
          if (h.request_id != id) continue;  // a late answer to a request that timed out
          const double ms = since(t0) * 1000;
          if (h.type == wire::MessageType::response) {
            ++ph.answered, ++progress_;
            ph.ms.push_back(ms);
            const auto v = m.view();
            std::uint32_t q = 0, c = 0;
            if (response_times(reinterpret_cast<const unsigned char*>(v.data()), v.size(), q, c)) {
              ph.queue_ms.push_back(q / 1000.0), ph.compute_ms.push_back(c / 1000.0);
              ph.outside_ms.push_back(std::max(0.0, ms - (q + c) / 1000.0));
            }
          } else if (h.type == wire::MessageType::error) {
            ++ph.errors;
            ++ph.codes["ERROR " + std::string(to_string(wire::decode_error(m.view()).code))];
          } else {
            ++ph.errors;
            ++ph.codes["unexpected " + std::string(wire::to_string(h.type))];
          }
          break;
        }
      } catch (const error& e) {
        ++ph.lost;
        ++ph.codes["connection lost (" + std::string(to_string(e.code())) + ")"];
        link.reset();
      }
      ++id;
    }
  }

  Target t_;
  double timeout_s_;
  std::atomic<int> phase_{0};
  std::atomic<bool> stop_{false};
  std::atomic<std::size_t> progress_{0};
  ClientPhase phases_[2];
  std::thread thread_;
};

// --- attacks -------------------------------------------------------------------------------------

/// What the attacker got.
struct AttackerReport {
  std::size_t connections = 0;       ///< opened
  std::size_t connect_failed = 0;    ///< refused or timed out
  std::size_t closed_by_server = 0;  ///< connections the server closed (or reset)
  std::size_t requests = 0;          ///< frames sent (besides HELLO)
  std::size_t bytes_sent = 0, bytes_received = 0;
  std::map<std::string, std::size_t> got;  ///< replies by kind
  std::vector<double> close_after_s;       ///< for each closed connection, how long it had been open
  ServerTimes times;                       ///< the server's queue and compute times of its RESPONSEs (pipelining attacks)
  std::string note;
};

struct AttackContext {
  Target target;
  const Scale& sc;
  Monitor& monitor;
  ServerProcess& server;
  SteadyClock::time_point until;                       ///< the attack ends here (set by the attack for set-up + hold)
  std::optional<SteadyClock::time_point> steady_at;    ///< set-up done: CPU is measured from here
  std::optional<double> steady_cpu_s;
  GoodClient* client = nullptr;
  double quiet_cpu_pct = std::nan("");  ///< the server's CPU with the attack held and the client paused

  bool over() { return SteadyClock::now() >= until || monitor.dead(); }
  /// Marks the end of the set-up; the attack holds for `hold_s` more.
  void steady(double hold_s) {
    steady_at = SteadyClock::now();
    steady_cpu_s = monitor.snapshot().cpu_s;
    until = after(hold_s);
  }
  /// With the attack still held: pauses the well-behaved client and measures the server's CPU
  /// alone for `s` seconds, calling `tick` meanwhile (it must return within ~200 ms).
  void measure_quiet(double s, const std::function<void()>& tick) {
    if (monitor.dead()) return;
    client->set_phase(2);
    sleep_s(0.3);  // its last request answered
    const double c0 = monitor.snapshot().cpu_s;
    const auto t0 = SteadyClock::now();
    while (since(t0) < s && !monitor.dead()) tick();
    const double c1 = monitor.snapshot().cpu_s;
    if (!monitor.dead()) quiet_cpu_pct = 100.0 * (c1 - c0) / since(t0);
    client->set_phase(1);
  }
};

/// Opens `n` connections, at most 256 connecting at once; each gets `first` (if not empty) once
/// connected. Returns the connected sockets.
std::vector<int> connect_many(AttackContext& ctx, std::size_t n, std::span<const std::byte> first, AttackerReport& r,
                              double timeout_s, int rcvbuf = 0) {
  std::vector<int> done;
  const auto until = after(timeout_s);
  std::size_t started = 0;
  struct Pending {
    int fd;
    SteadyClock::time_point at;
  };
  std::vector<Pending> pending;
  while ((started < n || !pending.empty()) && SteadyClock::now() < until && !ctx.monitor.dead()) {
    while (started < n && pending.size() < 256) {
      const int fd = open_socket(rcvbuf);
      if (fd < 0) {
        ++r.connect_failed, ++started;
        continue;
      }
      if (!start_connect(fd, ctx.target.port)) {
        ::close(fd);
        ++r.connect_failed, ++started;
        continue;
      }
      pending.push_back({fd, SteadyClock::now()}), ++started;
    }
    std::vector<pollfd> pf;
    for (const auto& p : pending) pf.push_back({p.fd, POLLOUT, 0});
    (void)::poll(pf.data(), pf.size(), 50);
    std::vector<Pending> still;
    for (std::size_t i = 0; i < pending.size(); ++i) {
      if (pf[i].revents == 0) {
        if (since(pending[i].at) > 10) {
          ::close(pending[i].fd);
          ++r.connect_failed;
        } else {
          still.push_back(pending[i]);
        }
        continue;
      }
      if (!connect_finished(pending[i].fd)) {
        ::close(pending[i].fd);
        ++r.connect_failed;
        continue;
      }
      ++r.connections;
      if (!first.empty() && !send_whole(pending[i].fd, first, 1, r.bytes_sent)) {
        ::close(pending[i].fd);
        ++r.closed_by_server;
        continue;
      }
      done.push_back(pending[i].fd);
    }
    pending.swap(still);
  }
  for (const auto& p : pending) ::close(p.fd), ++r.connect_failed;
  return done;
}

/// A pipelining connection: bytes waiting to go out, a skimmer for what comes back.
struct Pipe {
  int fd = -1;
  std::vector<std::byte> out;
  std::size_t out_pos = 0;
  Skimmer sk;
  std::size_t in_flight = 0;
  SteadyClock::time_point opened{};
  std::uint32_t next_id = 1;
  std::size_t sent = 0;   ///< requests queued on this connection
  std::size_t target = 0;  ///< attack-specific
  bool holding = false;
};

bool open_pipe(Pipe& p, AttackContext& ctx, AttackerReport& r, int rcvbuf) {
  p = Pipe{};
  p.fd = connect_wait(ctx.target.port, 2, rcvbuf);
  if (p.fd < 0) {
    ++r.connect_failed;
    return false;
  }
  ++r.connections;
  p.opened = SteadyClock::now();
  append_framed(p.out, hello_frame(ctx.target, p.next_id++));
  return true;
}

void close_pipe(Pipe& p, AttackerReport& r, bool by_server) {
  if (p.fd < 0) return;
  if (by_server) {
    ++r.closed_by_server;
    r.close_after_s.push_back(since(p.opened));
  }
  ::close(p.fd);
  p.fd = -1;
}

/// Sends what it can and, when `reading`, reads replies. False when the server closed it.
bool service(Pipe& p, short revents, bool reading, AttackerReport& r) {
  if (revents & (POLLOUT | POLLERR | POLLHUP)) {
    if (send_some(p.fd, p.out, p.out_pos, r.bytes_sent) == Io::closed) return false;
    if (p.out_pos == p.out.size()) p.out.clear(), p.out_pos = 0;
  }
  if (reading && (revents & (POLLIN | POLLERR | POLLHUP | POLLRDHUP))) {
    std::size_t frames = 0;
    const Io io = read_some(p.fd, p.sk, r.got, r.bytes_received, &frames, &r.times);
    p.in_flight -= std::min(p.in_flight, frames);
    if (io == Io::closed) return false;
  } else if (!reading && (revents & (POLLRDHUP | POLLHUP | POLLERR))) {
    return false;
  }
  return true;
}

/// One poll over the pipes: what each wants (writing when it has bytes waiting).
void poll_pipes(std::vector<Pipe>& pipes, std::vector<pollfd>& pf, bool reading, int timeout_ms) {
  pf.clear();
  for (auto& p : pipes) {
    short ev = POLLRDHUP;
    if (reading) ev |= POLLIN;
    if (p.out_pos < p.out.size()) ev |= POLLOUT;
    pf.push_back({p.fd, ev, 0});
  }
  (void)::poll(pf.data(), pf.size(), timeout_ms);
}

void wait_answer(TcpTransport& link, std::uint32_t id, double timeout_s, std::string& what) {
  Message m;
  const auto until = after(timeout_s);
  for (;;) {
    if (!link.receive(until, m)) {
      what = "no answer in " + std::to_string(static_cast<int>(timeout_s)) + " s";
      return;
    }
    const wire::FrameHeader h = wire::peek(m.view());
    if (h.request_id != id) continue;
    if (h.type == wire::MessageType::error)
      what = "ERROR " + std::string(to_string(wire::decode_error(m.view()).code));
    else
      what = std::string(wire::to_string(h.type));
    return;
  }
}

/// The largest scale 8-bit codes accept: codes 127 with zero point -128 dequantize to about 3.4e38.
float largest_int8_scale() {
  float s = FLT_MAX / 255.0f;
  while (!valid_scale(s, 8)) s = std::nextafter(s, 0.0f);
  return s;
}

AttackerReport attack_poison(AttackContext& ctx) {
  AttackerReport r;
  const Target& t = ctx.target;
  const QuantParams q = QuantParams::tensor(largest_int8_scale(), -128, 8);
  const std::vector<std::byte> codes(t.width, std::byte{0x7F});
  std::optional<TcpTransport> link;
  std::vector<std::byte> frame;
  std::uint32_t id = 1;
  for (std::size_t i = 0; i < ctx.sc.poison_max && !ctx.over(); ++i) {
    if (!link) {
      try {
        link.emplace(TcpTransport::connect("127.0.0.1", t.port, deadline_after(2s)));
        ++r.connections;
        const std::uint32_t hid = id++;
        link->send(hello_frame(t, hid), deadline_after(2s));
        std::string what;
        wait_answer(*link, hid, 2, what);
      } catch (const error&) {
        link.reset();
        ++r.connect_failed;
        sleep_s(0.05);
        continue;
      }
    }
    const bool fp32 = i % 2 == 0;
    const std::string kind = fp32 ? "fp32 3e38" : "int8 at the largest scale";
    if (fp32)
      infer_f32(frame, t, id, 1, 3e38f);
    else
      infer_frame(frame, t, id, Shape{1, t.width}, 8, wire::Lossless::none, &q, codes);
    try {
      link->send(frame, deadline_after(2s));
      ++r.requests;
      r.bytes_sent += frame.size() + 4;
      std::string what;
      wait_answer(*link, id, 2, what);
      ++r.got[kind + ": " + what];
    } catch (const error& e) {
      ++r.got[kind + ": connection lost (" + std::string(to_string(e.code())) + ")"];
      ++r.closed_by_server;
      link.reset();
    }
    ++id;
    sleep_s(0.02);
  }
  char scale[32];
  std::snprintf(scale, sizeof scale, "%.7g", static_cast<double>(q.scale[0]));
  r.note = std::string("alternating fp32 features of 3e38 and int8 codes 127 with zero point -128 at scale ") + scale;
  return r;
}

/// Connections that announce a 64 MiB frame and then send one byte a second: before any HELLO
/// (`after_hello` false), or after a HELLO, as a peer that has been let in (true).
AttackerReport attack_prefix(AttackContext& ctx, bool after_hello) {
  AttackerReport r;
  const std::uint32_t announce = std::uint32_t{64} << 20;
  std::vector<std::byte> first;
  if (after_hello) append_framed(first, hello_frame(ctx.target, 1));
  for (int i = 0; i < 4; ++i) first.push_back(std::byte((announce >> (8 * i)) & 0xFF));
  std::vector<int> fds = connect_many(ctx, ctx.sc.prefix_conns, first, r, ctx.sc.setup_timeout_s);
  std::vector<SteadyClock::time_point> opened(fds.size(), SteadyClock::now());
  std::vector<Skimmer> sks(fds.size());
  r.requests = fds.size();
  ctx.steady(ctx.sc.duration_s);
  auto next_byte = SteadyClock::now() + 1s;
  const std::byte zero{0};
  while (!ctx.over()) {
    if (SteadyClock::now() >= next_byte) {
      next_byte += 1s;
      for (auto& fd : fds) {
        if (fd < 0) continue;
        const ssize_t w = ::send(fd, &zero, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w == 1) ++r.bytes_sent;
      }
    }
    std::vector<pollfd> pf;
    std::vector<std::size_t> which;
    for (std::size_t i = 0; i < fds.size(); ++i)
      if (fds[i] >= 0) pf.push_back({fds[i], POLLIN | POLLRDHUP, 0}), which.push_back(i);
    (void)::poll(pf.data(), pf.size(), 100);
    for (std::size_t k = 0; k < pf.size(); ++k) {
      if (pf[k].revents == 0) continue;
      const std::size_t i = which[k];
      if (read_some(fds[i], sks[i], r.got, r.bytes_received) == Io::closed || (pf[k].revents & (POLLHUP | POLLERR))) {
        ::close(fds[i]);
        fds[i] = -1;
        ++r.closed_by_server;
        r.close_after_s.push_back(since(opened[i]));
      }
    }
  }
  std::size_t open_at_end = 0;
  for (int fd : fds)
    if (fd >= 0) ::close(fd), ++open_at_end;
  r.note = std::string("each announced a 64 MiB frame ") + (after_hello ? "after its HELLO" : "before any HELLO") +
           ", then sent one byte a second while open; " + std::to_string(open_at_end) + " of " + std::to_string(fds.size()) +
           " still open at the end";
  return r;
}

/// The bomb's features, made once before any server starts: the most int8 codes a tensor may hold
/// (DecodeLimits::max_elements, whole samples), all zero, as one zstd frame.
struct Bomb {
  std::size_t rows = 0;
  std::vector<std::byte> blob;
};
Bomb g_bomb;
/// The slow readers' features: Scale::slowread_rows fp32 zeros, as one zstd frame.
std::vector<std::byte> g_slowread_blob;

#if EDGESPLIT_HAS_ZSTD
/// One zstd frame of `n` zero bytes that records its content size, compressed in pieces.
std::vector<std::byte> zstd_zeros(std::size_t n) {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  if (c == nullptr) fail(errc::io_error, "ZSTD_createCCtx");
  ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, 19);
  ZSTD_CCtx_setPledgedSrcSize(c, n);
  const std::vector<char> zeros(std::size_t{1} << 17, 0);
  std::vector<std::byte> out;
  std::vector<char> chunk(ZSTD_CStreamOutSize());
  std::size_t left = n;
  for (;;) {
    const std::size_t take = std::min(left, zeros.size());
    left -= take;
    ZSTD_inBuffer in{zeros.data(), take, 0};
    const ZSTD_EndDirective mode = left == 0 ? ZSTD_e_end : ZSTD_e_continue;
    for (;;) {
      ZSTD_outBuffer o{chunk.data(), chunk.size(), 0};
      const std::size_t rc = ZSTD_compressStream2(c, &o, &in, mode);
      if (ZSTD_isError(rc)) {
        ZSTD_freeCCtx(c);
        fail(errc::io_error, std::string("zstd: ") + ZSTD_getErrorName(rc));
      }
      const auto* b = reinterpret_cast<const std::byte*>(chunk.data());
      out.insert(out.end(), b, b + o.pos);
      if (mode == ZSTD_e_end ? rc == 0 : in.pos == in.size) break;
    }
    if (left == 0) break;
  }
  ZSTD_freeCCtx(c);
  return out;
}
#endif

AttackerReport attack_bomb(AttackContext& ctx) {
  AttackerReport r;
#if EDGESPLIT_HAS_ZSTD
  const Target& t = ctx.target;
  const std::size_t rows = g_bomb.rows;
  const std::vector<std::byte>& blob = g_bomb.blob;
  const QuantParams q = QuantParams::tensor(1.0f, 0, 8);
  std::vector<std::byte> frame;
  infer_frame(frame, t, 1, Shape{rows, t.width}, 8, wire::Lossless::zstd, &q, blob);
  r.note = "INFER frames of " + std::to_string(frame.size()) + " bytes: " + std::to_string(rows) + " x " + std::to_string(t.width) +
           " int8 codes 0 (" + std::to_string(rows * t.width >> 20) + " MiB) in one zstd frame, " +
           std::to_string(rows * t.width * 4 >> 20) + " MiB of fp32 features once decoded";
  std::vector<Pipe> pipes(ctx.sc.bomb_conns);
  for (auto& p : pipes) open_pipe(p, ctx, r, 0);
  std::vector<pollfd> pf;
  while (!ctx.over()) {
    for (auto& p : pipes) {
      if (p.fd < 0 && !open_pipe(p, ctx, r, 0)) continue;
      while (p.in_flight < ctx.sc.bomb_window && r.requests < ctx.sc.bomb_max) {
        infer_frame(frame, t, p.next_id++, Shape{rows, t.width}, 8, wire::Lossless::zstd, &q, blob);
        append_framed(p.out, frame);
        ++p.in_flight, ++r.requests;
      }
    }
    std::erase_if(pipes, [](const Pipe& p) { return p.fd < 0; });
    if (pipes.empty()) {
      sleep_s(0.05);
      pipes.resize(ctx.sc.bomb_conns);
      continue;
    }
    poll_pipes(pipes, pf, true, 50);
    for (std::size_t i = 0; i < pipes.size(); ++i)
      if (!service(pipes[i], pf[i].revents, true, r)) close_pipe(pipes[i], r, true);
  }
  for (auto& p : pipes) close_pipe(p, r, false);
#else
  (void)ctx;
  r.note = "skipped: built without zstd (EDGESPLIT_WITH_ZSTD)";
#endif
  return r;
}

/// Clients that pipeline INFERs (one fp32 sample each) as fast as the socket takes them and
/// never read; a connection the server closes is replaced.
AttackerReport attack_noread(AttackContext& ctx) {
  AttackerReport r;
  const Target& t = ctx.target;
  std::vector<Pipe> pipes(ctx.sc.noread_conns);
  for (auto& p : pipes) open_pipe(p, ctx, r, 4096);
  std::vector<std::byte> frame;
  std::vector<pollfd> pf;
  const std::size_t byte_cap = std::size_t{4} << 30;
  while (!ctx.over()) {
    for (auto& p : pipes) {
      if (p.fd < 0 && !open_pipe(p, ctx, r, 4096)) continue;
      if (p.out.size() - p.out_pos < 32 * 1024 && p.sent < ctx.sc.noread_max_requests && r.bytes_sent < byte_cap) {
        for (int k = 0; k < 64; ++k) {
          infer_f32(frame, t, p.next_id++, 1, 0.5f);
          append_framed(p.out, frame);
          ++p.sent, ++r.requests;
        }
      }
    }
    poll_pipes(pipes, pf, false, 20);
    for (std::size_t i = 0; i < pipes.size(); ++i)
      if (pipes[i].fd >= 0 && !service(pipes[i], pf[i].revents, false, r)) close_pipe(pipes[i], r, true);
  }
  for (auto& p : pipes) close_pipe(p, r, false);
  r.note = "receive buffers of 4 KiB, one fp32 sample per INFER, never read";
  return r;
}

/// Peers that never read and stop sending just below the server's unread-reply limit, then keep
/// their connection open: PINGs (each answered by a PONG of the same size), the cheapest
/// request. One probing connection first finds how many PINGs get a non-reader dropped.
AttackerReport attack_noreadhold(AttackContext& ctx) {
  AttackerReport r;
  std::vector<std::byte> ping;
  const auto queue_pings = [&](Pipe& p, std::size_t n) {
    for (std::size_t k = 0; k < n; ++k) {
      wire::encode_ping(ping, p.next_id++, 0);
      append_framed(p.out, ping);
    }
    p.sent += n, r.requests += n;
  };
  // Probe: PINGs in chunks of 1,000 until the server drops this connection.
  std::size_t drop_at = 0;
  {
    Pipe probe;
    if (open_pipe(probe, ctx, r, 4096)) {
      const auto until = std::min(after(ctx.sc.duration_s / 3), ctx.until);
      bool dropped = false;
      while (SteadyClock::now() < until && !ctx.monitor.dead()) {
        if (probe.out_pos == probe.out.size()) queue_pings(probe, 1000);
        if (send_some(probe.fd, probe.out, probe.out_pos, r.bytes_sent) == Io::closed || peer_closed(probe.fd)) {
          dropped = true;
          break;
        }
        sleep_s(0.005);
      }
      drop_at = probe.sent;
      r.note = dropped ? "a non-reader was dropped after about " + std::to_string(drop_at) + " PINGs"
                       : "a non-reader was not dropped after " + std::to_string(drop_at) + " PINGs";
      close_pipe(probe, r, dropped);
      if (!dropped) drop_at = drop_at * 2;  // it would take more: send as many again
    }
  }
  // The peers need time to send their share (the server answers each PING): they get the set-up
  // time, then hold for the hold time once every one of them is holding.
  ctx.until = after(ctx.sc.setup_timeout_s);
  const std::size_t first_target = drop_at * 9 / 10;
  std::vector<Pipe> pipes(ctx.sc.noreadhold_conns);
  std::vector<pollfd> pf;
  std::size_t reopened = 0;
  bool steady = false;
  while (!ctx.over()) {
    bool all_holding = true;
    for (auto& p : pipes) {
      if (p.fd < 0) {
        const std::size_t target = p.target ? p.target * 8 / 10 : first_target;
        if (!open_pipe(p, ctx, r, 4096)) continue;
        p.target = target;
      }
      if (p.sent < p.target && p.out.size() - p.out_pos < 64 * 1024) queue_pings(p, std::min<std::size_t>(1000, p.target - p.sent));
      p.holding = p.sent >= p.target && p.out_pos == p.out.size();
      all_holding = all_holding && p.holding;
    }
    if (all_holding && !steady) {
      steady = true;
      ctx.steady(ctx.sc.hold_s);
    }
    poll_pipes(pipes, pf, false, 20);
    for (std::size_t i = 0; i < pipes.size(); ++i) {
      if (pipes[i].fd < 0 || service(pipes[i], pf[i].revents, false, r)) continue;
      const std::size_t target = pipes[i].target;
      close_pipe(pipes[i], r, true);
      pipes[i].target = target;
      ++reopened;
    }
  }
  std::size_t holding = 0;
  for (auto& p : pipes) holding += p.fd >= 0 && p.holding, close_pipe(p, r, false);
  r.note += "; " + std::to_string(pipes.size()) + " peers sent " + std::to_string(first_target) + " PINGs each and held (" +
            std::to_string(holding) + " still open at the end" + (steady ? "" : ", never all at once") + ")";
  return r;
}

/// Rotating peers with 4 KiB receive buffers: each sends its requests and never reads, until the
/// server closes it or its life ends; then a new peer takes its place.
AttackerReport attack_slowread(AttackContext& ctx) {
  AttackerReport r;
  const Target& t = ctx.target;
  const Scale& sc = ctx.sc;
  std::vector<Pipe> pipes(sc.slowread_slots);
  std::vector<SteadyClock::time_point> ends(pipes.size());
  std::vector<std::byte> frame;
  const auto start = SteadyClock::now();
  for (std::size_t i = 0; i < pipes.size(); ++i)  // staggered lives
    ends[i] = start + std::chrono::duration_cast<SteadyClock::duration>(
                          std::chrono::duration<double>(sc.slowread_life_s * static_cast<double>(i + 1) / static_cast<double>(pipes.size())));
  std::vector<pollfd> pf;
  std::size_t peers = 0;
  while (!ctx.over()) {
    for (std::size_t i = 0; i < pipes.size(); ++i) {
      Pipe& p = pipes[i];
      if (p.fd >= 0 && SteadyClock::now() >= ends[i]) close_pipe(p, r, false);
      if (p.fd < 0) {
        if (!open_pipe(p, ctx, r, 4096)) continue;
        ++peers;
        if (SteadyClock::now() >= ends[i]) ends[i] = after(sc.slowread_life_s);
        for (std::size_t k = 0; k < sc.slowread_requests; ++k) {
          if (g_slowread_blob.empty())
            infer_f32(frame, t, p.next_id++, sc.slowread_rows, 0.0f);
          else
            infer_frame(frame, t, p.next_id++, Shape{sc.slowread_rows, t.width}, wire::raw_f32_bits, wire::Lossless::zstd, nullptr,
                        g_slowread_blob);
          append_framed(p.out, frame);
          ++p.sent, ++r.requests;
        }
      }
    }
    poll_pipes(pipes, pf, false, 20);
    for (std::size_t i = 0; i < pipes.size(); ++i)
      if (pipes[i].fd >= 0 && !service(pipes[i], pf[i].revents, false, r)) close_pipe(pipes[i], r, true);
  }
  for (auto& p : pipes) close_pipe(p, r, false);
  r.note = std::to_string(peers) + " peers, " + std::to_string(pipes.size()) + " at a time, each living " +
           std::to_string(sc.slowread_life_s).substr(0, 4) + " s with " + std::to_string(sc.slowread_requests) + " requests of " +
           std::to_string(sc.slowread_rows) + " samples (fp32 zeros" + (g_slowread_blob.empty() ? "" : ", zstd") +
           "), never reading";
  return r;
}

/// `n` connections that say HELLO, read the answer, and then say nothing.
AttackerReport attack_idle(AttackContext& ctx, std::size_t n) {
  AttackerReport r;
  const auto hello = [&] {
    std::vector<std::byte> b;
    append_framed(b, hello_frame(ctx.target, 1));
    return b;
  }();
  std::vector<int> fds = connect_many(ctx, n, hello, r, ctx.sc.setup_timeout_s);
  std::vector<SteadyClock::time_point> opened(fds.size(), SteadyClock::now());
  std::vector<Skimmer> sks(fds.size());
  std::vector<pollfd> pf;
  std::vector<std::size_t> which;
  const auto check = [&](int timeout_ms) {
    pf.clear(), which.clear();
    for (std::size_t i = 0; i < fds.size(); ++i)
      if (fds[i] >= 0) pf.push_back({fds[i], POLLIN | POLLRDHUP, 0}), which.push_back(i);
    (void)::poll(pf.data(), pf.size(), timeout_ms);
    for (std::size_t k = 0; k < pf.size(); ++k) {
      if (pf[k].revents == 0) continue;
      const std::size_t i = which[k];
      if (read_some(fds[i], sks[i], r.got, r.bytes_received) == Io::closed || (pf[k].revents & (POLLHUP | POLLERR))) {
        ::close(fds[i]);
        fds[i] = -1;
        ++r.closed_by_server;
        r.close_after_s.push_back(since(opened[i]));
      }
    }
  };
  // Wait for the HELLO answers (bounded), then hold.
  const auto hello_until = after(std::min(10.0, ctx.sc.setup_timeout_s));
  while (SteadyClock::now() < hello_until && !ctx.monitor.dead()) {
    check(100);
    std::size_t answered = 0;
    for (const auto& [kind, count] : r.got) answered += count;
    if (answered + r.closed_by_server >= fds.size()) break;
  }
  ctx.steady(ctx.sc.hold_s);
  while (!ctx.over()) check(200);
  ctx.measure_quiet(ctx.sc.hold_s, [&] { check(200); });
  std::size_t open_at_end = 0;
  for (int fd : fds)
    if (fd >= 0) ::close(fd), ++open_at_end;
  r.note = std::to_string(r.connections) + " connections opened, " + std::to_string(open_at_end) + " still open after the hold";
  return r;
}

/// One client pipelining INFERs (one fp32 sample each) as fast as it can, reading its answers.
AttackerReport attack_flood(AttackContext& ctx) {
  AttackerReport r;
  const Target& t = ctx.target;
  std::vector<Pipe> pipes(1);
  std::vector<std::byte> frame;
  std::vector<pollfd> pf;
  while (!ctx.over() && r.requests < ctx.sc.flood_max) {
    Pipe& p = pipes[0];
    if (p.fd < 0 && !open_pipe(p, ctx, r, 0)) {
      sleep_s(0.05);
      continue;
    }
    if (p.out.size() - p.out_pos < 64 * 1024) {
      for (int k = 0; k < 64; ++k) {
        infer_f32(frame, t, p.next_id++, 1, 0.5f);
        append_framed(p.out, frame);
        ++p.sent, ++r.requests;
      }
    }
    poll_pipes(pipes, pf, true, 20);
    if (!service(p, pf[0].revents, true, r)) close_pipe(p, r, true);
  }
  close_pipe(pipes[0], r, false);
  r.note = "one connection, no window: INFERs written as fast as the socket takes them";
  return r;
}

/// Connections sending a HELLO one byte a second; a dropped one is replaced at once.
AttackerReport attack_slowloris(AttackContext& ctx) {
  AttackerReport r;
  std::vector<std::byte> hello;
  append_framed(hello, hello_frame(ctx.target, 1));
  struct Slow {
    int fd = -1;
    std::size_t pos = 0;
    SteadyClock::time_point opened{}, next{};
  };
  std::vector<Slow> conns(ctx.sc.slowloris_conns);
  {
    std::vector<int> fds = connect_many(ctx, conns.size(), {}, r, ctx.sc.setup_timeout_s);
    const auto now = SteadyClock::now();
    for (std::size_t i = 0; i < fds.size(); ++i)
      conns[i] = {fds[i], 0, now, now + std::chrono::milliseconds(1000 * i / std::max<std::size_t>(fds.size(), 1))};
  }
  ctx.steady(ctx.sc.duration_s);
  std::vector<pollfd> pf;
  std::vector<std::size_t> which;
  const std::byte* bytes = hello.data();
  while (!ctx.over()) {
    const auto now = SteadyClock::now();
    for (auto& c : conns) {
      if (c.fd < 0) {
        c.fd = connect_wait(ctx.target.port, 1);
        if (c.fd < 0) {
          ++r.connect_failed;
          continue;
        }
        ++r.connections;
        c.pos = 0, c.opened = now, c.next = now;
      }
      if (now >= c.next && c.pos < hello.size()) {
        if (::send(c.fd, bytes + c.pos, 1, MSG_NOSIGNAL | MSG_DONTWAIT) == 1) ++c.pos, ++r.bytes_sent;
        c.next += 1s;
      }
    }
    pf.clear(), which.clear();
    for (std::size_t i = 0; i < conns.size(); ++i)
      if (conns[i].fd >= 0) pf.push_back({conns[i].fd, POLLIN | POLLRDHUP, 0}), which.push_back(i);
    (void)::poll(pf.data(), pf.size(), 50);
    for (std::size_t k = 0; k < pf.size(); ++k) {
      if (pf[k].revents == 0) continue;
      Slow& c = conns[which[k]];
      Skimmer sk;
      if (read_some(c.fd, sk, r.got, r.bytes_received) == Io::closed || (pf[k].revents & (POLLHUP | POLLERR))) {
        ::close(c.fd);
        c.fd = -1;
        ++r.closed_by_server;
        r.close_after_s.push_back(since(c.opened));
      }
    }
  }
  for (auto& c : conns)
    if (c.fd >= 0) ::close(c.fd);
  r.note = std::to_string(conns.size()) + " connections at a time, a " + std::to_string(hello.size()) + "-byte HELLO one byte a second";
  return r;
}

/// The server's open-files limit lowered (prlimit) below the connections offered.
AttackerReport attack_emfile(AttackContext& ctx) {
  AttackerReport r;
  const rlimit lim{static_cast<rlim_t>(ctx.sc.emfile_limit), static_cast<rlim_t>(ctx.sc.emfile_limit)};
  if (::prlimit(ctx.server.pid(), RLIMIT_NOFILE, &lim, nullptr) != 0) {
    r.note = std::string("prlimit failed: ") + std::strerror(errno);
    return r;
  }
  std::vector<std::byte> hello;
  append_framed(hello, hello_frame(ctx.target, 1));
  std::vector<int> fds = connect_many(ctx, ctx.sc.emfile_conns, hello, r, ctx.sc.setup_timeout_s);
  std::vector<Skimmer> sks(fds.size());
  const auto settle = after(1);
  std::vector<pollfd> pf;
  std::vector<std::size_t> which;
  const auto check = [&](int timeout_ms) {
    pf.clear(), which.clear();
    for (std::size_t i = 0; i < fds.size(); ++i)
      if (fds[i] >= 0) pf.push_back({fds[i], POLLIN | POLLRDHUP, 0}), which.push_back(i);
    (void)::poll(pf.data(), pf.size(), timeout_ms);
    for (std::size_t k = 0; k < pf.size(); ++k) {
      if (pf[k].revents == 0) continue;
      const std::size_t i = which[k];
      if (read_some(fds[i], sks[i], r.got, r.bytes_received) == Io::closed || (pf[k].revents & (POLLHUP | POLLERR))) {
        ::close(fds[i]);
        fds[i] = -1;
        ++r.closed_by_server;
      }
    }
  };
  while (SteadyClock::now() < settle && !ctx.monitor.dead()) check(100);
  ctx.steady(ctx.sc.hold_s);
  while (!ctx.over()) check(200);
  ctx.measure_quiet(ctx.sc.hold_s, [&] { check(200); });
  std::size_t open_at_end = 0;
  for (int fd : fds)
    if (fd >= 0) ::close(fd), ++open_at_end;
  r.note = "server limited to " + std::to_string(ctx.sc.emfile_limit) + " open files; " + std::to_string(r.connections) +
           " connections offered, " + std::to_string(open_at_end) + " still open after the hold";
  return r;
}

// --- one measurement -----------------------------------------------------------------------------

struct Row {
  std::size_t run = 0;
  std::string server, attack;
  bool started = false, alive = false;
  std::string end;  ///< how the server ended: died of what, or how it stopped
  double killed_at_mib = 0;
  double rss_before = 0, rss_max = 0, hwm = 0;
  long threads_before = 0, threads_max = 0;
  double cpu_pct = 0, cpu_window_s = 0;
  double cpu_quiet_pct = std::nan("");  ///< idle, emfile: with the client paused
  ClientPhase base, under;
  AttackerReport attacker;
};

std::string mib(double v) {
  char b[32];
  std::snprintf(b, sizeof b, v >= 100 ? "%.0f" : "%.1f", v);
  return b;
}
std::string ms_text(double v, double timeout_ms) {
  if (std::isnan(v)) return "-";
  char b[32];
  std::snprintf(b, sizeof b, v >= 100 ? "%.0f" : v >= 1 ? "%.2f" : "%.3f", v);
  return (v >= timeout_ms ? ">" : "") + std::string(b);
}
std::string counts_text(const std::map<std::string, std::size_t>& m) {
  std::string s;
  for (const auto& [k, v] : m) s += (s.empty() ? "" : "; ") + k + " x" + std::to_string(v);
  return s.empty() ? "nothing" : s;
}

Row measure(const Options& o, const ServerSpec& spec, const std::string& attack, std::size_t idle_n, std::size_t run,
            Target target, const std::string& model, const fs::path& dir) {
  Row row;
  row.run = run;
  row.server = spec.label;
  row.attack = attack == "idle" ? "idle-" + std::to_string(idle_n) : attack;
  const Scale& sc = o.scale;
  const std::string stem = std::to_string(run) + "-" + spec.label + "-" + row.attack;
  ServerProcess server(spec, model, target, dir / (stem + ".port"), dir / (stem + ".log"));
  if (!server.wait_port(20)) {
    row.end = server.exit_status() ? "did not start: " + describe_status(*server.exit_status()) : "wrote no port file";
    return row;
  }
  row.started = true;
  target.port = server.port();
  Monitor monitor(server, o.rss_cap_mib);
  GoodClient client(target, sc.client_timeout_s);
  sleep_s(sc.baseline_s);
  for (int i = 0; i < 200 && client.answered_so_far() < 20; ++i) sleep_s(0.01);  // a baseline worth the name
  monitor.reset_window();
  const auto before = monitor.snapshot();
  row.rss_before = before.rss_now, row.threads_before = before.threads_now;
  client.set_phase(1);
  AttackContext ctx{target, sc, monitor, server, after(sc.duration_s), std::nullopt, std::nullopt, &client};
  const auto t0 = SteadyClock::now();
  const double cpu0 = before.cpu_s;
  try {
    if (attack == "poison") row.attacker = attack_poison(ctx);
    else if (attack == "prefix") row.attacker = attack_prefix(ctx, false);
    else if (attack == "helloprefix") row.attacker = attack_prefix(ctx, true);
    else if (attack == "bomb") row.attacker = attack_bomb(ctx);
    else if (attack == "noread") row.attacker = attack_noread(ctx);
    else if (attack == "noreadhold") row.attacker = attack_noreadhold(ctx);
    else if (attack == "slowread") row.attacker = attack_slowread(ctx);
    else if (attack == "idle") row.attacker = attack_idle(ctx, idle_n);
    else if (attack == "flood") row.attacker = attack_flood(ctx);
    else if (attack == "slowloris") row.attacker = attack_slowloris(ctx);
    else if (attack == "emfile") row.attacker = attack_emfile(ctx);
  } catch (const std::exception& e) {
    row.attacker.note = std::string("the attack failed on this side: ") + e.what();
  }
  const auto after_attack = monitor.snapshot();
  client.stop();
  monitor.stop();
  const double from_cpu = ctx.steady_cpu_s.value_or(cpu0);
  const auto from_t = ctx.steady_at.value_or(t0);
  row.cpu_window_s = since(from_t);
  row.cpu_pct = row.cpu_window_s > 0 ? 100.0 * (after_attack.cpu_s - from_cpu) / row.cpu_window_s : 0;
  row.cpu_quiet_pct = ctx.quiet_cpu_pct;
  row.rss_max = after_attack.rss_max, row.hwm = after_attack.hwm, row.threads_max = after_attack.threads_max;
  row.killed_at_mib = after_attack.killed_at_mib;
  row.base = client.phase(0), row.under = client.phase(1);
  if (auto st = server.exit_status()) {
    row.alive = false;
    row.end = row.killed_at_mib > 0 ? "killed by the harness at " + mib(row.killed_at_mib) + " MiB resident" : "died: " + describe_status(*st);
  } else {
    row.alive = true;
    row.end = server.stop(sc.stop_grace_s);
  }
  return row;
}

void print_row(const Row& r, double timeout_s) {
  const double tms = timeout_s * 1000;
  std::printf("[%s] %-11s %s | rss %s -> max %s MiB, hwm %s MiB | threads %ld -> %ld | cpu %.1f%% of a core over %.1f s\n",
              r.server.c_str(), r.attack.c_str(), r.alive ? "alive" : ("DOWN (" + r.end + ")").c_str(), mib(r.rss_before).c_str(),
              mib(r.rss_max).c_str(), mib(r.hwm).c_str(), r.threads_before, r.threads_max, r.cpu_pct, r.cpu_window_s);
  std::printf("    client: alone p50 %s p99 %s ms (%zu answers) | under attack p50 %s p99 %s ms, %zu/%zu answered, %zu errors, %zu timeouts, %zu lost%s%s\n",
              ms_text(percentile(r.base.ms, 0.5), tms).c_str(), ms_text(percentile(r.base.ms, 0.99), tms).c_str(), r.base.answered,
              ms_text(percentile(r.under.ms, 0.5), tms).c_str(), ms_text(percentile(r.under.ms, 0.99), tms).c_str(), r.under.answered,
              r.under.sent, r.under.errors, r.under.timeouts, r.under.lost, r.under.codes.empty() ? "" : " | ",
              r.under.codes.empty() ? "" : counts_text(r.under.codes).c_str());
  if (!r.under.queue_ms.empty())
    std::printf("    client under attack, by the server's account: queue p50 %s p99 %s ms, compute p99 %s ms; the rest (loop, "
                "sockets, client) p50 %s p99 %s ms\n",
                ms_text(percentile(r.under.queue_ms, 0.5), 1e300).c_str(), ms_text(percentile(r.under.queue_ms, 0.99), 1e300).c_str(),
                ms_text(percentile(r.under.compute_ms, 0.99), 1e300).c_str(), ms_text(percentile(r.under.outside_ms, 0.5), 1e300).c_str(),
                ms_text(percentile(r.under.outside_ms, 0.99), 1e300).c_str());
  const auto& a = r.attacker;
  std::printf("    attacker: %zu connections (%zu failed), %zu closed by the server%s, %zu requests, %.1f MiB sent, %.1f MiB received | got: %s\n",
              a.connections, a.connect_failed, a.closed_by_server,
              a.close_after_s.empty() ? "" : (" (median after " + ms_text(percentile(a.close_after_s, 0.5), 1e300) + " s)").c_str(),
              a.requests, static_cast<double>(a.bytes_sent) / 1048576.0, static_cast<double>(a.bytes_received) / 1048576.0,
              counts_text(a.got).c_str());
  if (!a.times.compute_ms.empty())
    std::printf("    attacker's RESPONSEs, by the server's account: queue median %s ms, compute median %s max %s ms\n",
                ms_text(percentile(a.times.queue_ms, 0.5), 1e300).c_str(), ms_text(percentile(a.times.compute_ms, 0.5), 1e300).c_str(),
                ms_text(percentile(a.times.compute_ms, 1.0), 1e300).c_str());
  if (!std::isnan(r.cpu_quiet_pct))
    std::printf("    server alone with the attack held (client paused): cpu %.1f%% of a core\n", r.cpu_quiet_pct);
  if (!a.note.empty()) std::printf("    note: %s\n", a.note.c_str());
  if (r.alive) std::printf("    server: %s\n", r.end.c_str());
  std::fflush(stdout);
}

std::string csv_quote(const std::string& s) {
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

const char* csv_header =
    "run,server,attack,alive,end,killed_at_mib,rss_before_mib,rss_max_mib,hwm_mib,threads_before,threads_max,cpu_pct,cpu_window_s,cpu_quiet_pct,"
    "base_answered,base_p50_ms,base_p99_ms,att_sent,att_answered,att_errors,att_timeouts,att_lost,att_p50_ms,att_p99_ms,att_client_codes,"
    "attacker_connections,attacker_connect_failed,attacker_closed_by_server,attacker_close_median_s,attacker_requests,attacker_mib_sent,"
    "attacker_mib_received,attacker_got,base_queue_p99_ms,att_queue_p50_ms,att_queue_p99_ms,att_compute_p99_ms,att_outside_p50_ms,"
    "att_outside_p99_ms,attacker_queue_median_ms,attacker_compute_median_ms,attacker_compute_max_ms,note\n";

std::string csv_row(const Row& r) {
  std::ostringstream s;
  const auto num = [](double v) {
    if (std::isnan(v)) return std::string();
    char b[32];
    std::snprintf(b, sizeof b, "%.4g", v);
    return std::string(b);
  };
  const auto& a = r.attacker;
  s << r.run << ',' << r.server << ',' << r.attack << ',' << (r.alive ? 1 : 0) << ',' << csv_quote(r.end) << ',' << num(r.killed_at_mib)
    << ',' << num(r.rss_before) << ',' << num(r.rss_max) << ',' << num(r.hwm) << ',' << r.threads_before << ',' << r.threads_max << ','
    << num(r.cpu_pct) << ',' << num(r.cpu_window_s) << ',' << num(r.cpu_quiet_pct) << ',' << r.base.answered << ',' << num(percentile(r.base.ms, 0.5)) << ','
    << num(percentile(r.base.ms, 0.99)) << ',' << r.under.sent << ',' << r.under.answered << ',' << r.under.errors << ','
    << r.under.timeouts << ',' << r.under.lost << ',' << num(percentile(r.under.ms, 0.5)) << ',' << num(percentile(r.under.ms, 0.99))
    << ',' << csv_quote(counts_text(r.under.codes)) << ',' << a.connections << ',' << a.connect_failed << ',' << a.closed_by_server
    << ',' << num(percentile(a.close_after_s, 0.5)) << ',' << a.requests << ',' << num(static_cast<double>(a.bytes_sent) / 1048576.0)
    << ',' << num(static_cast<double>(a.bytes_received) / 1048576.0) << ',' << csv_quote(counts_text(a.got)) << ','
    << num(percentile(r.base.queue_ms, 0.99)) << ',' << num(percentile(r.under.queue_ms, 0.5)) << ','
    << num(percentile(r.under.queue_ms, 0.99)) << ',' << num(percentile(r.under.compute_ms, 0.99)) << ','
    << num(percentile(r.under.outside_ms, 0.5)) << ',' << num(percentile(r.under.outside_ms, 0.99)) << ','
    << num(percentile(a.times.queue_ms, 0.5)) << ',' << num(percentile(a.times.compute_ms, 0.5)) << ','
    << num(percentile(a.times.compute_ms, 1.0)) << ',' << csv_quote(a.note) << '\n';
  return s.str();
}

/// --check: what went wrong with this row, empty when nothing did.
std::string check_row(const Options& o, const Row& r) {
  std::string why;
  const auto add = [&](const std::string& s) { why += (why.empty() ? "" : "; ") + s; };
  if (!r.started) add("the server did not start (" + r.end + ")");
  if (!r.alive) add("the server did not survive (" + r.end + ")");
  for (const ClientPhase* p : {&r.base, &r.under}) {
    if (p->answered != p->sent || p->errors || p->timeouts || p->lost)
      add("the well-behaved client got " + std::to_string(p->answered) + " answers to " + std::to_string(p->sent) + " requests (" +
          counts_text(p->codes) + ", " + std::to_string(p->timeouts) + " timeouts)");
  }
  if (r.under.answered == 0) add("the well-behaved client got no answer under attack");
  const double limit = o.check_budget_mib + o.check_overhead_mib;
  if (r.hwm > limit) add("VmHWM " + mib(r.hwm) + " MiB over the budget + overhead of " + mib(limit) + " MiB");
  return why;
}

/// The tail's input width at the split: the head's output for one sample.
std::size_t split_width(const std::string& model, std::uint16_t split) {
  Sequential<float> m = load_safetensors<float>(model);
  std::size_t in = 0;
  for (std::size_t i = 0; i < m.size() && in == 0; ++i)
    if (const auto* d = dynamic_cast<const Dense<float>*>(&m[i])) in = d->in_features();
  if (in == 0) fail(errc::invalid_argument, "the model has no Dense layer to take its input width from");
  if (split > m.size()) fail(errc::invalid_argument, "--split past the model's " + std::to_string(m.size()) + " layers");
  auto [head, tail] = m.split(split);
  const Shape out = head.output_shape(Shape{1, in});
  return out[out.rank() - 1];
}

/// A 784-256-128-10 MLP with seeded random weights, for runs without a trained model.
void make_model(const std::string& path) {
  Rng rng(2026);
  Sequential<float> m;
  m.add<Dense<float>>(784, 256, rng);
  m.add<ReLU<float>>();
  m.add<Dense<float>>(256, 128, rng);
  m.add<ReLU<float>>();
  m.add<Dense<float>>(128, 10, rng);
  save_safetensors(path, m);
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

double median(std::vector<double> v) {
  std::erase_if(v, [](double x) { return std::isnan(x); });
  return v.empty() ? std::nan("") : percentile(v, 0.5);
}

void print_medians(const std::vector<Row>& rows, const Options& o) {
  std::printf("\nmedians over %zu run(s) (CPU: %s, %u logical CPUs):\n", o.runs, cpu_model().c_str(), std::thread::hardware_concurrency());
  std::printf("%-8s %-11s %6s %9s %9s %8s %7s %7s %10s %10s %10s %10s %12s %10s %10s\n", "server", "attack", "alive", "rss max", "hwm",
              "threads", "cpu %", "quiet %", "p50 alone", "p99 alone", "p50 att.", "p99 att.", "answered", "queue p99", "rest p99");
  std::vector<std::pair<std::string, std::string>> keys;
  for (const auto& r : rows)
    if (std::find(keys.begin(), keys.end(), std::make_pair(r.attack, r.server)) == keys.end()) keys.emplace_back(r.attack, r.server);
  const double tms = o.scale.client_timeout_s * 1000;
  for (const auto& [attack, server] : keys) {
    std::vector<double> rss, hwm, thr, cpu, quiet, b50, b99, a50, a99, ans, q99, o99;
    std::size_t alive = 0, n = 0;
    for (const auto& r : rows) {
      if (r.attack != attack || r.server != server) continue;
      ++n, alive += r.alive;
      rss.push_back(r.rss_max), hwm.push_back(r.hwm), thr.push_back(static_cast<double>(r.threads_max)), cpu.push_back(r.cpu_pct), quiet.push_back(r.cpu_quiet_pct);
      b50.push_back(percentile(r.base.ms, 0.5)), b99.push_back(percentile(r.base.ms, 0.99));
      a50.push_back(percentile(r.under.ms, 0.5)), a99.push_back(percentile(r.under.ms, 0.99));
      q99.push_back(percentile(r.under.queue_ms, 0.99)), o99.push_back(percentile(r.under.outside_ms, 0.99));
      ans.push_back(r.under.sent ? static_cast<double>(r.under.answered) / static_cast<double>(r.under.sent) * 100 : 0);
    }
    std::printf("%-8s %-11s %3zu/%-2zu %9s %9s %8.0f %7.1f %7.1f %10s %10s %10s %10s %11.1f%% %10s %10s\n", server.c_str(), attack.c_str(),
                alive, n, mib(median(rss)).c_str(), mib(median(hwm)).c_str(), median(thr), median(cpu), median(quiet),
                ms_text(median(b50), tms).c_str(), ms_text(median(b99), tms).c_str(), ms_text(median(a50), tms).c_str(),
                ms_text(median(a99), tms).c_str(), median(ans), ms_text(median(q99), 1e300).c_str(), ms_text(median(o99), 1e300).c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  try {
    o = parse(argc, argv);
  } catch (const error& e) {
    std::fprintf(stderr, "serving_attacks: %s\n", e.what());
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);
  std::signal(SIGINT, on_fatal_signal);
  std::signal(SIGTERM, on_fatal_signal);
  std::signal(SIGALRM, on_fatal_signal);
  ::alarm(static_cast<unsigned>(o.max_seconds));
  raise_file_limit();
  try {
    fs::path dir = o.work_dir;
    if (dir.empty()) {
      std::string tmpl = (fs::temp_directory_path() / "serving-attacks-XXXXXX").string();
      if (::mkdtemp(tmpl.data()) == nullptr) fail(errc::io_error, "mkdtemp failed");
      dir = tmpl;
    }
    fs::create_directories(dir);
    if (!o.make_model.empty()) {
      make_model(o.make_model);
      o.model = o.make_model;
    }
    Target target;
    target.model_id = o.model_id;
    target.split = o.split;
    target.width = split_width(o.model, o.split);
    if (std::find(o.attacks.begin(), o.attacks.end(), "bomb") != o.attacks.end()) {
      const wire::DecodeLimits limits;  // the defaults, which cloud_node uses
      g_bomb.rows = std::min(limits.max_elements, limits.max_decompressed_bytes) / target.width;
#if EDGESPLIT_HAS_ZSTD
      g_bomb.blob = zstd_zeros(g_bomb.rows * target.width);
#endif
    }
#if EDGESPLIT_HAS_ZSTD
    if (std::find(o.attacks.begin(), o.attacks.end(), "slowread") != o.attacks.end())
      g_slowread_blob = zstd_zeros(o.scale.slowread_rows * target.width * 4);
#endif
    std::printf("serving_attacks: %s scale, %zu run(s), model %s split %u (%zu features per sample), CPU %s; logs in %s\n",
                o.scale.name.c_str(), o.runs, o.model.c_str(), static_cast<unsigned>(o.split), target.width, cpu_model().c_str(),
                dir.c_str());
    std::fflush(stdout);
    std::ofstream csv;
    if (!o.csv.empty()) {
      csv.open(o.csv);
      if (!csv) fail(errc::io_error, "cannot write " + o.csv);
      csv << "# cpu: " << cpu_model() << "; scale " << o.scale.name << '\n' << csv_header;
    }
    std::vector<Row> rows;
    std::vector<std::string> failures;
    for (std::size_t run = 1; run <= o.runs; ++run) {
      for (const auto& attack : o.attacks) {
        const std::vector<std::size_t> counts = attack == "idle" ? o.scale.idle_counts : std::vector<std::size_t>{0};
        for (std::size_t n : counts) {
          for (const auto& spec : o.servers) {  // alternately, under the same load
            Row r = measure(o, spec, attack, n, run, target, o.model, dir);
            print_row(r, o.scale.client_timeout_s);
            if (csv) csv << csv_row(r) << std::flush;
            if (o.check) {
              const std::string why = check_row(o, r);
              if (!why.empty()) failures.push_back("[" + r.server + "] " + r.attack + ": " + why);
            }
            rows.push_back(std::move(r));
          }
        }
      }
    }
    print_medians(rows, o);
    if (!failures.empty()) {
      std::printf("\nCHECK FAILED:\n");
      for (const auto& f : failures) std::printf("  %s\n", f.c_str());
      return 1;
    }
    if (o.check) std::printf("\ncheck passed: every server survived, the well-behaved client got every answer, VmHWM <= %.0f MiB\n",
                             o.check_budget_mib + o.check_overhead_mib);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "serving_attacks: %s\n", e.what());
    return 1;
  }
  return 0;
}

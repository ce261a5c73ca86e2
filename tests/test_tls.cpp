// Tests for transport/tls.hpp: TLS 1.3 over loopback TCP with certificates made at run time (a
// throwaway CA with server and client certificates, EC P-256, written to a temporary directory):
// the transport conformance suite (transport_conformance.hpp) over IPv4 and IPv6, then what is
// particular to TLS: the socket-free TlsSession, every refusal and failure path, and foreign peers
// (the openssl command-line tool as server and as client). Loopback only (127.0.0.1 and ::1); no test asserts
// a wall-clock duration, and every wait, including on the openssl processes, is bounded.
#include <catch2/catch.hpp>

#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <initializer_list>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "edgesplit/core/random.hpp"
#include "edgesplit/transport/tcp.hpp"
#include "edgesplit/transport/tls.hpp"
#include "test_util.hpp"
#include "tls_fixtures.hpp"
#include "transport_conformance.hpp"

extern char** environ;

using namespace edgesplit;
using namespace std::chrono_literals;
using edgesplit_test::expect_errc;
using Bytes = std::vector<std::byte>;
using edgesplit_test::conformance::framed;
using edgesplit_test::conformance::random_bytes;
namespace conf = edgesplit_test::conformance;
namespace fs = std::filesystem;
using edgesplit_test::Pki;
using edgesplit_test::pki;
using edgesplit_test::other_pki;

namespace {

Bytes text_bytes(std::string_view s) {
  Bytes b(s.size());
  std::memcpy(b.data(), s.data(), s.size());
  return b;
}

Bytes concat(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

bool contains(const Bytes& haystack, const Bytes& needle) {
  return std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end()) != haystack.end();
}

/// Writes raw bytes on a socket, bypassing any framing.
void write_raw(int fd, std::span<const std::byte> b) {
  std::size_t off = 0;
  while (off < b.size()) {
    const ssize_t n = ::send(fd, b.data() + off, b.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    REQUIRE(n > 0);
    off += static_cast<std::size_t>(n);
  }
}

/// write_raw() without assertions, for threads other than the test's (Catch is not thread-safe).
bool send_all(int fd, std::span<const std::byte> b) {
  std::size_t off = 0;
  while (off < b.size()) {
    const ssize_t n = ::send(fd, b.data() + off, b.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<std::size_t>(n);
  }
  return true;
}

/// The message of an edgesplit::error thrown by `f`, after checking its code.
template <class F>
std::string error_message(errc code, F&& f) {
  try {
    f();
  } catch (const edgesplit::error& e) {
    INFO(e.what());
    CHECK(e.code() == code);
    return e.what();
  }
  FAIL("expected edgesplit::error(" << to_string(code) << "), nothing was thrown");
  return {};
}

const std::string server_subject = "CN=localhost,O=edgesplit test";
const std::string client_subject = "CN=edge-1,O=edgesplit test";

bool ipv6_loopback_available() {
  try {
    (void)TcpListener::bind("::1", 0);
    return true;
  } catch (const edgesplit::error&) {
    return false;
  }
}

std::vector<const char*> loopbacks() {
  std::vector<const char*> hosts{"127.0.0.1"};
  if (ipv6_loopback_available()) {
    hosts.push_back("::1");
  } else {
    WARN("no IPv6 loopback here: the ::1 cases are skipped");
  }
  return hosts;
}

// --- Connections ------------------------------------------------------------------------------

/// What a connection attempt gave on each side (the listener accepts on another thread).
struct Outcome {
  std::optional<TlsTransport> client, server;
  std::optional<edgesplit::error> client_error, server_error;
};

Outcome attempt(const char* host, const TlsContext& server_context, const TlsContext& client_context,
                TcpOptions server_options = {}, TcpOptions client_options = {}) {
  TlsListener listener = TlsListener::bind(host, 0, server_context, server_options);
  Outcome o;
  std::exception_ptr other;
  std::thread acceptor([&] {
    try {
      o.server = listener.accept(deadline_after(10s));
    } catch (const edgesplit::error& e) {
      o.server_error = e;
    } catch (...) {
      other = std::current_exception();
    }
  });
  try {
    o.client = TlsTransport::connect(host, listener.port(), client_context, deadline_after(10s), client_options);
  } catch (const edgesplit::error& e) {
    o.client_error = e;
  }
  acceptor.join();
  if (other) std::rethrow_exception(other);
  return o;
}

/// A connected client/server pair over loopback with mutual TLS. (Callers bind references to its
/// halves rather than structured bindings, which clang 14 cannot capture in lambdas.)
std::pair<TlsTransport, TlsTransport> tls_pair(const char* host, TcpOptions server_options = {},
                                               TcpOptions client_options = {}) {
  Outcome o = attempt(host, TlsContext::server(pki().server()), TlsContext::client(pki().client()), server_options,
                      client_options);
  if (o.client_error) FAIL("client: " << o.client_error->what());
  if (o.server_error) FAIL("server: " << o.server_error->what());
  REQUIRE(o.client.has_value());
  REQUIRE(o.server.has_value());
  return {std::move(*o.client), std::move(*o.server)};
}

/// A TLS client driven by hand over a plain TCP socket, to send what TlsTransport never would:
/// half a frame, a lying length prefix, a tampered record.
struct RawTlsClient {
  TcpTransport tcp;  // only its socket is used; its framing is bypassed
  TlsSession session;

  RawTlsClient(std::uint16_t port, const TlsContext& context, const char* host = "127.0.0.1")
      : tcp(TcpTransport::connect(host, port, deadline_after(10s))), session(context, false, host) {}

  Bytes take() {
    Bytes out;
    session.take_output(out);
    return out;
  }
  void flush() { write_raw(tcp.native_handle(), take()); }
  /// Reads what the server sent within 10 s and feeds it to the session.
  void pull() {
    pollfd p{tcp.native_handle(), POLLIN, 0};
    REQUIRE(::poll(&p, 1, 10000) == 1);
    std::array<std::byte, 16384> buf;
    const ssize_t n = ::recv(tcp.native_handle(), buf.data(), buf.size(), 0);
    REQUIRE(n > 0);
    session.feed(std::span<const std::byte>(buf.data(), static_cast<std::size_t>(n)));
    (void)session.read({});
  }
  /// Completes the handshake (the listener must be accepting meanwhile).
  void handshake() {
    flush();
    while (!session.handshake_complete()) {
      pull();
      flush();
    }
  }
  void send_plain(std::span<const std::byte> plaintext) {
    session.write(plaintext);
    flush();
  }
};

/// A server transport accepted from `listener` while `raw` completes its handshake.
TlsTransport accept_raw(TlsListener& listener, RawTlsClient& raw) {
  std::optional<TlsTransport> server;
  std::exception_ptr error;
  std::thread acceptor([&] {
    try {
      server = listener.accept(deadline_after(10s));
    } catch (...) {
      error = std::current_exception();
    }
  });
  raw.handshake();
  acceptor.join();
  if (error) std::rethrow_exception(error);
  REQUIRE(server.has_value());
  return std::move(*server);
}

/// Moves output between two sessions, `chunk` bytes at a time, until neither has any.
void pump(TlsSession& a, TlsSession& b, std::size_t chunk = SIZE_MAX) {
  for (int round = 0; round < 100; ++round) {
    bool moved = false;
    for (auto [from, to] : {std::pair{&a, &b}, std::pair{&b, &a}}) {
      Bytes out;
      from->take_output(out);
      for (std::size_t off = 0; off < out.size(); off += chunk) {
        to->feed(std::span<const std::byte>(out).subspan(off, std::min(chunk, out.size() - off)));
        (void)to->read({});
        moved = true;
      }
    }
    if (!moved) return;
  }
  FAIL("the sessions kept talking for 100 rounds");
}

/// Everything `s` can decrypt now, read `piece` bytes at a time.
Bytes read_all(TlsSession& s, std::size_t piece = 4096) {
  Bytes all, buf(piece);
  for (;;) {
    const std::size_t n = s.read(buf);
    if (n == 0) return all;
    all.insert(all.end(), buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(n));
  }
}

// --- The openssl command-line tool as a foreign peer ------------------------------------------

std::optional<std::string> find_openssl_cli() {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const fs::path candidate = fs::path(dir.empty() ? "." : dir) / "openssl";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
  }
  return std::nullopt;
}

/// A child process with its stdin and stdout on pipes and its stderr in a file; stopped (TERM,
/// then KILL after 5 s) and reaped when destroyed.
class Child {
 public:
  Child(const std::vector<std::string>& args, fs::path stderr_file) : err_file_(std::move(stderr_file)) {
    ::signal(SIGPIPE, SIG_IGN);  // a write to a child that has exited must fail, not kill the tests
    int in[2], out[2];
    REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, in[0], 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_addopen(&actions, 2, err_file_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const int rc = ::posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(in[0]);
    ::close(out[1]);
    in_ = in[1];
    out_ = out[0];
    if (rc != 0) pid_ = -1;
    REQUIRE(rc == 0);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() { stop(); }

  /// Reads the child's stdout until `done(output)` holds; false when 10 s pass or it ends first.
  bool read_until(const std::function<bool(const Bytes&)>& done) {
    const Deadline deadline = deadline_after(10s);
    while (!done(output)) {
      pollfd p{out_, POLLIN, 0};
      const int n = ::poll(&p, 1, detail::tcp::poll_timeout_ms(deadline));
      if (n == 0) return false;
      if (n < 0) {
        if (errno == EINTR) continue;
        return false;
      }
      std::array<std::byte, 65536> buf;
      const ssize_t r = ::read(out_, buf.data(), buf.size());
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return done(output);
      output.insert(output.end(), buf.begin(), buf.begin() + r);
    }
    return true;
  }
  /// Waits for `needle` in the child's stdout.
  bool read_until_contains(const Bytes& needle) {
    return read_until([&](const Bytes& o) { return contains(o, needle); });
  }
  void write(std::span<const std::byte> b) {
    std::size_t off = 0;
    while (off < b.size()) {
      const ssize_t n = ::write(in_, b.data() + off, b.size() - off);
      if (n < 0 && errno == EINTR) continue;
      REQUIRE(n > 0);
      off += static_cast<std::size_t>(n);
    }
  }
  std::string stderr_text() const {
    std::ifstream f(err_file_);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
  void stop() {
    if (in_ >= 0) ::close(in_);
    if (out_ >= 0) ::close(out_);
    in_ = out_ = -1;
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 500; ++i) {
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return;
      }
      std::this_thread::sleep_for(10ms);
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  Bytes output;  ///< everything read from the child's stdout so far

 private:
  pid_t pid_ = -1;
  int in_ = -1, out_ = -1;
  fs::path err_file_;
};

/// `openssl s_server` on `host` (a free port it picks), with the test PKI's server certificate;
/// `extra` adds options. Returns the port from its "ACCEPT" line.
std::uint16_t start_s_server(std::optional<Child>& child, const std::string& openssl, const char* host,
                             std::vector<std::string> extra) {
  const std::string where = std::string(host).find(':') != std::string::npos ? "[" + std::string(host) + "]" : host;
  std::vector<std::string> args{openssl, "s_server", "-accept", where + ":0", "-cert", pki().server_cert.string(),
                                "-key", pki().server_key.string(), "-naccept", "1"};
  args.insert(args.end(), extra.begin(), extra.end());
  child.emplace(args, pki().dir / ("s_server-" + std::to_string(::getpid()) + ".err"));
  const Bytes accept_line = text_bytes("ACCEPT " + where + ":");
  const bool up = child->read_until([&](const Bytes& o) {
    auto at = std::search(o.begin(), o.end(), accept_line.begin(), accept_line.end());
    return at != o.end() && std::find(at, o.end(), std::byte{'\n'}) != o.end();
  });
  INFO("s_server stderr: " << child->stderr_text());
  REQUIRE(up);
  const std::string out(reinterpret_cast<const char*>(child->output.data()), child->output.size());
  const std::string prefix = "ACCEPT " + where + ":";
  const std::size_t at = out.find(prefix) + prefix.size();
  const int port = std::stoi(out.substr(at, out.find('\n', at) - at));
  REQUIRE(port > 0);
  REQUIRE(port < 65536);
  return static_cast<std::uint16_t>(port);
}

/// `openssl s_client` connecting to `host`:`port`, trusting the test CA and checking the
/// server's address; `extra` adds options (a client certificate, a protocol version).
Child start_s_client(const std::string& openssl, const char* host, std::uint16_t port, std::vector<std::string> extra) {
  const std::string where = std::string(host).find(':') != std::string::npos ? "[" + std::string(host) + "]" : host;
  std::vector<std::string> args{openssl, "s_client", "-connect", where + ":" + std::to_string(port), "-CAfile",
                                pki().ca.string(), "-verify_return_error", "-verify_ip", host, "-quiet"};
  args.insert(args.end(), extra.begin(), extra.end());
  return Child(args, pki().dir / ("s_client-" + std::to_string(::getpid()) + ".err"));
}

/// Payload bytes that are never ASCII letters: s_server (without -quiet) treats an input chunk
/// that starts with certain letters as a command.
Bytes high_bytes(std::size_t n, std::uint64_t seed) {
  Bytes b = random_bytes(n, seed);
  for (auto& x : b) x |= std::byte{0x80};
  return b;
}

}  // namespace

// --- The conformance suite ---------------------------------------------------------------------

namespace {

/// A server of `Host` whose peer is a RawTlsClient writing raw plaintext into the TLS stream (a
/// conformance Stall: it can stop in the middle of a message, or lie in a length prefix).
struct TlsStall {
  explicit TlsStall(const char* host)
      : listener(TlsListener::bind(host, 0, TlsContext::server(pki().server()))),
        raw(listener.port(), TlsContext::client(pki().client()), host),
        server(accept_raw(listener, raw)) {}
  TlsTransport& receiver() { return server; }
  static Bytes frame(std::span<const std::byte> payload) { return framed(payload); }
  void write(std::span<const std::byte> bytes) { raw.send_plain(bytes); }
  bool arrived() {
    pollfd p{server.native_handle(), POLLIN, 0};
    return ::poll(&p, 1, 10'000) == 1;
  }
  void end() {
    raw.session.close();  // close_notify
    raw.flush();
  }
  bool mid_message() { return server.mid_message(); }
  TlsListener listener;
  RawTlsClient raw;
  TlsTransport server;
};

/// TLS 1.3 with mutual certificates over `Host`: the client is end a, the server end b, each with
/// its own cap.
template <const char* Host>
struct TlsOn {
  static constexpr conf::Traits traits{
      .allocates = "OpenSSL 3's record layer allocates a 40-byte block for each WPACKET it builds: two per "
                   "record sent (the record, its additional data) and one per record received; the "
                   "transport's own buffers are reused"};
  static bool available() { return Host[0] != ':' || ipv6_loopback_available(); }
  explicit TlsOn(const conf::PairOptions& o) : TlsOn(tls_pair(Host, caps(o.b_max), caps(o.a_max))) {}
  const Clock& clock() const { return SteadyClock::instance(); }
  TlsTransport a, b;
  struct Stall : TlsStall {
    Stall() : TlsStall(Host) {}
  };
  static TcpOptions caps(std::size_t cap) {
    TcpOptions t;
    t.max_message_bytes = cap;
    return t;
  }

 private:
  explicit TlsOn(std::pair<TlsTransport, TlsTransport> ends) : a(std::move(ends.first)), b(std::move(ends.second)) {}
};

constexpr char ipv4_loopback[] = "127.0.0.1";
constexpr char ipv6_loopback[] = "::1";

struct TlsIPv4 : TlsOn<ipv4_loopback> {
  static constexpr const char* name = "TLS over IPv4";
  using TlsOn::TlsOn;
};
struct TlsIPv6 : TlsOn<ipv6_loopback> {
  static constexpr const char* name = "TLS over IPv6";
  using TlsOn::TlsOn;
};

}  // namespace

EDGESPLIT_TRANSPORT_CONFORMANCE("[tls]", TlsIPv4, TlsIPv6)

// --- Options and contexts ---------------------------------------------------------------------

TEST_CASE("TlsContext: unreadable files, files without what they should hold and impossible options are typed errors", "[tls][transport]") {
  const Pki& p = pki();
  TlsOptions o = p.server();
  o.certificate_file = (p.dir / "missing.pem").string();
  CHECK_THAT(error_message(errc::io_error, [&] { (void)TlsContext::server(o); }), Catch::Contains("missing.pem"));
  o = p.server();
  o.ca_file = p.dir.string();  // a directory
  CHECK_THAT(error_message(errc::io_error, [&] { (void)TlsContext::server(o); }), Catch::Contains("not a regular file"));

  const fs::path junk = p.dir / "junk.pem";
  std::ofstream(junk) << "not a certificate\n";
  o = p.server();
  o.certificate_file = junk.string();
  CHECK_THAT(error_message(errc::invalid_argument, [&] { (void)TlsContext::server(o); }), Catch::Contains("junk.pem"));
  o = p.server();
  o.ca_file = junk.string();
  CHECK_THAT(error_message(errc::invalid_argument, [&] { (void)TlsContext::server(o); }), Catch::Contains("junk.pem"));
  o = p.server();
  o.private_key_file = p.client_key.string();  // another certificate's key
  const std::string mismatch = error_message(errc::invalid_argument, [&] { (void)TlsContext::server(o); });
  CHECK_THAT(mismatch, Catch::Contains("client.key") && Catch::Contains("server.pem"));
  CHECK_THAT(mismatch, Catch::Contains("key values mismatch"));  // OpenSSL's reason

  expect_errc(errc::invalid_argument, [&] { (void)TlsContext::server(TlsOptions{}); });
  o = p.server();
  o.private_key_file.clear();
  expect_errc(errc::invalid_argument, [&] { (void)TlsContext::server(o); });
  o = p.server(true);
  o.ca_file.clear();  // mutual TLS without CAs to check against
  expect_errc(errc::invalid_argument, [&] { (void)TlsContext::server(o); });
  o = p.client();
  o.require_client_certificate = true;
  expect_errc(errc::invalid_argument, [&] { (void)TlsContext::client(o); });
  o = p.server();
  o.server_name = "localhost";
  expect_errc(errc::invalid_argument, [&] { (void)TlsContext::server(o); });

  const TlsContext server = TlsContext::server(p.server());
  const TlsContext client = TlsContext::client(p.client());
  CHECK(server.is_server());
  CHECK_FALSE(client.is_server());
  CHECK(server.native_handle() != nullptr);
  const TlsContext copy = server;  // copies share one SSL_CTX
  CHECK(copy.native_handle() == server.native_handle());
  expect_errc(errc::invalid_argument, [&] { TlsSession s(server, false, "localhost"); });
  expect_errc(errc::invalid_argument, [&] { TlsSession s(client, true); });
  expect_errc(errc::invalid_argument, [&] { TlsSession s(client, false); });  // no name to verify
  expect_errc(errc::invalid_argument, [&] { (void)TlsTransport::connect("127.0.0.1", 1, server); });
  expect_errc(errc::invalid_argument, [&] { (void)TlsListener::bind("127.0.0.1", 0, client); });
}

// --- TlsSession in memory ---------------------------------------------------------------------

TEST_CASE("TlsSession: handshake and data in memory, fed whole or one byte at a time", "[tls][transport]") {
  const TlsContext server_context = TlsContext::server(pki().server());
  const TlsContext client_context = TlsContext::client(pki().client());
  for (const std::size_t chunk : {SIZE_MAX, std::size_t{1}, std::size_t{7}}) {
    INFO("chunk " << chunk);
    TlsSession server(server_context, true);
    TlsSession client(client_context, false, "localhost");
    CHECK(client.pending_output() > 0);  // the ClientHello, ready at once
    CHECK(server.pending_output() == 0);
    const Bytes early = text_bytes("written before the handshake");
    client.write(early);
    CHECK_FALSE(client.handshake_complete());
    pump(client, server, chunk);
    REQUIRE(client.handshake_complete());
    REQUIRE(server.handshake_complete());
    CHECK(client.protocol() == "TLSv1.3");
    CHECK(server.protocol() == "TLSv1.3");
    CHECK(client.cipher().rfind("TLS_", 0) == 0);
    CHECK(server.peer_subject() == client_subject);
    CHECK(client.peer_subject() == server_subject);
    CHECK(read_all(server) == early);

    const Bytes big = random_bytes(100'000, 11);
    server.write(big);
    pump(client, server, chunk);
    CHECK(read_all(client, 1000) == big);  // read in pieces smaller than a record

    client.close();
    expect_errc(errc::unreachable, [&] { client.write(early); });
    pump(client, server, chunk);
    CHECK_FALSE(server.peer_closed());  // read() is what takes in close_notify
    CHECK(read_all(server).empty());
    CHECK(server.peer_closed());
    server.feed(random_bytes(1 << 20, 12));  // after close_notify: dropped, not buffered
    CHECK(read_all(server).empty());
    CHECK_FALSE(client.peer_closed());
  }
}

TEST_CASE("TlsSession: garbage, tampered records and an old protocol version are typed errors that stick", "[tls][transport]") {
  const TlsContext server_context = TlsContext::server(pki().server());
  const TlsContext client_context = TlsContext::client(pki().client());
  Bytes buf(1024);
  {
    TlsSession server(server_context, true);
    server.feed(text_bytes("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"));
    const std::string why = error_message(errc::corrupt_frame, [&] { (void)server.read(buf); });
    CHECK_THAT(why, Catch::Contains("http request"));
    CHECK(error_message(errc::corrupt_frame, [&] { (void)server.read(buf); }) == why);  // dead for good
    expect_errc(errc::corrupt_frame, [&] { server.feed(text_bytes("more")); });
    expect_errc(errc::corrupt_frame, [&] { server.write(text_bytes("more")); });
  }
  {
    TlsSession server(server_context, true);
    TlsSession client(client_context, false, "localhost");
    pump(client, server);
    REQUIRE(server.handshake_complete());
    client.write(text_bytes("the record a relay changes"));
    Bytes record;
    client.take_output(record);
    REQUIRE(record.size() > 20);
    record[record.size() - 5] ^= std::byte{1};  // one bit, inside the authentication tag
    server.feed(record);
    CHECK_THAT(error_message(errc::corrupt_frame, [&] { (void)server.read(buf); }), Catch::Contains("bad record mac") || Catch::Contains("decryption failed"));
    Bytes alert;
    CHECK(server.take_output(alert) > 0);  // the alert that tells the client
    client.feed(alert);
    expect_errc(errc::corrupt_frame, [&] { (void)client.read(buf); });
  }
  {
    // A client limited to TLS 1.2, made through the context's native handle.
    const TlsContext old = TlsContext::client(pki().client());
    REQUIRE(SSL_CTX_set_min_proto_version(old.native_handle(), TLS1_2_VERSION) == 1);
    REQUIRE(SSL_CTX_set_max_proto_version(old.native_handle(), TLS1_2_VERSION) == 1);
    TlsSession server(server_context, true);
    TlsSession client(old, false, "localhost");
    Bytes hello;
    client.take_output(hello);
    server.feed(hello);
    CHECK_THAT(error_message(errc::version_mismatch, [&] { (void)server.read(buf); }), Catch::Contains("unsupported protocol"));
    Bytes alert;
    server.take_output(alert);
    client.feed(alert);
    expect_errc(errc::version_mismatch, [&] { (void)client.read(buf); });
  }
}

// --- TlsTransport and TlsListener ---------------------------------------------------------------

TEST_CASE("TLS: TLS 1.3 with mutual certificates over IPv4 and IPv6: protocol, cipher, subjects, addresses", "[tls][transport]") {
  for (const char* host : loopbacks()) {
    INFO(host);
    auto connection = tls_pair(host);
    TlsTransport& client = connection.first;
    TlsTransport& server = connection.second;
    CHECK(client.protocol() == "TLSv1.3");
    CHECK(server.protocol() == "TLSv1.3");
    CHECK(client.cipher() == server.cipher());
    CHECK(client.cipher().rfind("TLS_", 0) == 0);
    CHECK(server.peer_subject() == client_subject);
    CHECK(client.peer_subject() == server_subject);
    CHECK(client.peer_address().find(std::string(host)) != std::string::npos);
  }
}

TEST_CASE("TLS: connect and handshake deadlines", "[tls][transport]") {
  // A TCP server that never speaks TLS: the handshake cannot complete.
  TcpListener silent = TcpListener::bind("127.0.0.1", 0);
  expect_errc(errc::timeout, [&] {
    (void)TlsTransport::connect("127.0.0.1", silent.port(), TlsContext::client(pki().client()), deadline_after(100ms));
  });

  // A TCP client that never speaks: accept() returns nullopt at its deadline and keeps the
  // connection's handshake, which ends when the client leaves or its handshake_timeout passes.
  TlsListener listener = TlsListener::bind("127.0.0.1", 0, TlsContext::server(pki().server()));
  {
    TcpTransport quiet = TcpTransport::connect("127.0.0.1", listener.port(), deadline_after(10s));
    CHECK_FALSE(listener.accept(deadline_after(50ms)).has_value());
    CHECK(listener.handshakes_in_progress() == 1);
  }
  CHECK_THAT(error_message(errc::unreachable, [&] { (void)listener.accept(deadline_after(10s)); }),
             Catch::Contains("during the handshake"));
  CHECK(listener.handshakes_in_progress() == 0);

  TlsListener hurried = TlsListener::bind("127.0.0.1", 0, TlsContext::server(pki().server()), {}, 100ms);
  TcpTransport quiet = TcpTransport::connect("127.0.0.1", hurried.port(), deadline_after(10s));
  CHECK_THAT(error_message(errc::timeout, [&] { (void)hurried.accept(deadline_after(10s)); }),
             Catch::Contains("did not complete"));
  CHECK(hurried.is_open());  // the listener itself goes on
}

TEST_CASE("TLS: a handshake continues across accept() calls with short deadlines", "[tls][transport]") {
  TlsListener listener = TlsListener::bind("127.0.0.1", 0, TlsContext::server(pki().server()));
  RawTlsClient raw(listener.port(), TlsContext::client(pki().client()));
  raw.flush();  // ClientHello
  // The server answers the hello, then waits for the client's Finished, which is not coming yet.
  CHECK_FALSE(listener.accept(deadline_after(50ms)).has_value());
  CHECK(listener.handshakes_in_progress() == 1);
  while (!raw.session.handshake_complete()) raw.pull();  // the server's answer was sent by then
  raw.flush();                                           // Finished, with the client certificate
  std::optional<TlsTransport> server;
  for (int i = 0; i < 10'000 && !server; ++i) server = listener.accept(deadline_after(1ms));
  REQUIRE(server.has_value());
  CHECK(server->peer_subject() == client_subject);
  CHECK(listener.handshakes_in_progress() == 0);
  const Bytes hello = text_bytes("after a slow handshake");
  raw.send_plain(framed(hello));
  std::optional<Message> m = server->receive(deadline_after(10s));
  REQUIRE(m.has_value());
  CHECK(m->bytes == hello);

  // And with a real client on another thread, polling accept() every millisecond.
  std::optional<TlsTransport> client;
  std::exception_ptr connect_error;
  std::atomic<bool> connect_failed{false};
  std::thread connector([&] {
    try {
      client = TlsTransport::connect("127.0.0.1", listener.port(), TlsContext::client(pki().client()));
    } catch (...) {
      connect_error = std::current_exception();
      connect_failed = true;
    }
  });
  std::optional<TlsTransport> second;
  for (int i = 0; i < 20'000 && !second && !connect_failed; ++i) second = listener.accept(deadline_after(1ms));
  connector.join();
  if (connect_error) std::rethrow_exception(connect_error);
  REQUIRE(second.has_value());
  REQUIRE(client.has_value());
  client->send(hello);
  m = second->receive(deadline_after(10s));
  REQUIRE(m.has_value());
  CHECK(m->bytes == hello);
}

TEST_CASE("TLS: close() wakes a blocked accept", "[tls][transport]") {
  TlsListener listener = TlsListener::bind("127.0.0.1", 0, TlsContext::server(pki().server()));
  auto blocked = std::async(std::launch::async, [&listener] {
    try {
      (void)listener.accept(no_deadline);
      return std::optional<errc>{};
    } catch (const edgesplit::error& e) {
      return std::optional<errc>(e.code());
    }
  });
  TcpTransport quiet = TcpTransport::connect("127.0.0.1", listener.port(), deadline_after(10s));  // mid-handshake
  std::this_thread::sleep_for(50ms);
  listener.close();
  REQUIRE(blocked.wait_for(10s) == std::future_status::ready);
  CHECK(blocked.get() == errc::unreachable);
  CHECK_FALSE(listener.is_open());
}

TEST_CASE("TLS: a send that times out inside a message closes the connection", "[tls][transport]") {
  auto connection = tls_pair("127.0.0.1");
  TlsTransport& client = connection.first;
  TlsTransport& server = connection.second;
  const Bytes huge(32u << 20);
  CHECK_THAT(error_message(errc::timeout, [&] { client.send(huge, deadline_after(200ms)); }),
             Catch::Contains("inside a message"));
  CHECK_FALSE(client.is_open());
  // The server gets the records that left, then the end of the stream inside the message.
  expect_errc(errc::corrupt_frame, [&] {
    Message m;
    while (server.receive(deadline_after(10s), m)) {
    }
  });
}

TEST_CASE("TLS: a server certificate from another CA, or for another name, is refused on both sides", "[tls][transport]") {
  const TlsContext server = TlsContext::server(pki().server(false));
  {
    const Outcome o = attempt("127.0.0.1", server, TlsContext::client(other_pki().client(false)));
    REQUIRE(o.client_error.has_value());
    CHECK(o.client_error->code() == errc::unreachable);
    CHECK_THAT(o.client_error->what(), Catch::Contains("certificate verify failed"));
    CHECK_THAT(o.client_error->what(), Catch::Contains("127.0.0.1"));
    REQUIRE(o.server_error.has_value());
    CHECK(o.server_error->code() == errc::unreachable);
    CHECK_THAT(o.server_error->what(), Catch::Contains("unknown ca"));
  }
  {
    TlsOptions system_trust = pki().client(false);
    system_trust.ca_file.clear();  // the system's trust store does not know the test CA
    const Outcome o = attempt("127.0.0.1", server, TlsContext::client(system_trust));
    REQUIRE(o.client_error.has_value());
    CHECK(o.client_error->code() == errc::unreachable);
    CHECK_THAT(o.client_error->what(), Catch::Contains("certificate verify failed"));
  }
  for (const auto& [name, reason] : {std::pair{"db.example", "hostname mismatch"}, std::pair{"10.1.2.3", "IP address mismatch"}}) {
    TlsOptions wrong = pki().client(false);
    wrong.server_name = name;
    const Outcome o = attempt("127.0.0.1", server, TlsContext::client(wrong));
    REQUIRE(o.client_error.has_value());
    CHECK(o.client_error->code() == errc::unreachable);
    CHECK_THAT(o.client_error->what(), Catch::Contains(reason));
  }
  {
    TlsOptions right = pki().client(false);
    right.server_name = "localhost";  // in the certificate, though the connection is to 127.0.0.1
    const Outcome o = attempt("127.0.0.1", server, TlsContext::client(right));
    CHECK_FALSE(o.client_error.has_value());
    CHECK(o.client.has_value());
    CHECK(o.server.has_value());
  }
}

TEST_CASE("TLS: mutual TLS refuses a client without a certificate or with one from another CA", "[tls][transport]") {
  const TlsContext server = TlsContext::server(pki().server(true));
  for (const bool other_ca : {false, true}) {
    INFO((other_ca ? "client certificate from another CA" : "no client certificate"));
    TlsOptions client = other_ca ? other_pki().client(true) : pki().client(false);
    client.ca_file = pki().ca.string();  // the client itself trusts the server
    Outcome o = attempt("127.0.0.1", server, TlsContext::client(client));
    REQUIRE(o.server_error.has_value());
    CHECK(o.server_error->code() == errc::unreachable);
    CHECK_THAT(o.server_error->what(), Catch::Contains(other_ca ? "certificate verify failed" : "peer did not return a certificate"));
    CHECK_FALSE(o.server.has_value());
    // TLS 1.3: the client finished its handshake before the server checked; the refusal arrives
    // as an alert at its first receive.
    REQUIRE(o.client.has_value());
    CHECK_THAT(error_message(errc::unreachable, [&] { (void)o.client->receive(deadline_after(10s)); }),
               Catch::Contains(other_ca ? "unknown ca" : "certificate required"));
  }
  {
    // A server that asks for certificates but does not require them admits a client without one.
    const Outcome o = attempt("127.0.0.1", TlsContext::server(pki().server(false)), TlsContext::client(pki().client(false)));
    REQUIRE(o.server.has_value());
    REQUIRE(o.client.has_value());
    CHECK(o.server->peer_subject().empty());
    CHECK(o.client->peer_subject() == server_subject);
  }
}

TEST_CASE("TLS: bytes that are not TLS are corrupt_frame on either side", "[tls][transport]") {
  {
    TlsListener listener = TlsListener::bind("127.0.0.1", 0, TlsContext::server(pki().server()));
    TcpTransport plain = TcpTransport::connect("127.0.0.1", listener.port(), deadline_after(10s));
    write_raw(plain.native_handle(), text_bytes("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"));
    CHECK_THAT(error_message(errc::corrupt_frame, [&] { (void)listener.accept(deadline_after(10s)); }),
               Catch::Contains("127.0.0.1"));
    CHECK(listener.is_open());
  }
  {
    TcpListener plain = TcpListener::bind("127.0.0.1", 0);
    std::thread talker([&] {
      std::optional<TcpTransport> t = plain.accept(deadline_after(10s));
      if (t) (void)send_all(t->native_handle(), text_bytes("220 smtp.example ESMTP ready, not TLS at all\r\n"));
      std::this_thread::sleep_for(200ms);
    });
    expect_errc(errc::corrupt_frame, [&] {
      (void)TlsTransport::connect("127.0.0.1", plain.port(), TlsContext::client(pki().client()), deadline_after(10s));
    });
    talker.join();
  }
  {
    // A record changed on the way after the handshake.
    TlsListener listener = TlsListener::bind("127.0.0.1", 0, TlsContext::server(pki().server()));
    RawTlsClient raw(listener.port(), TlsContext::client(pki().client()));
    TlsTransport server = accept_raw(listener, raw);
    raw.session.write(framed(text_bytes("tampered")));
    Bytes record = raw.take();
    record[record.size() - 3] ^= std::byte{0x40};
    write_raw(raw.tcp.native_handle(), record);
    expect_errc(errc::corrupt_frame, [&] { (void)server.receive(deadline_after(10s)); });
    CHECK_FALSE(server.is_open());
  }
}

// --- Foreign peers: the openssl command-line tool ---------------------------------------------

TEST_CASE("TLS foreign peer: our client against openssl s_server", "[tls][transport]") {
  const std::optional<std::string> openssl = find_openssl_cli();
  if (!openssl) {
    WARN("the openssl command-line tool is not installed (Debian: openssl): foreign-peer test skipped");
    return;
  }
  for (const char* host : loopbacks()) {
    INFO(host);
    std::optional<Child> child;
    const std::uint16_t port = start_s_server(child, *openssl, host,
                                              {"-CAfile", pki().ca.string(), "-Verify", "1", "-verify_return_error", "-tls1_3"});
    TlsTransport t = TlsTransport::connect(host, port, TlsContext::client(pki().client()), deadline_after(10s));
    INFO("s_server stderr: " << child->stderr_text());
    CHECK(t.protocol() == "TLSv1.3");
    CHECK(t.peer_subject() == server_subject);
    // Ours to theirs: s_server writes what it receives to its stdout.
    const Bytes small = text_bytes("hello from edgesplit over TLS 1.3");
    const Bytes large = high_bytes(100'000, 51);
    t.send(small);
    t.send(large);
    CHECK(child->read_until_contains(concat(framed(small), framed(large))));
    // Theirs to ours: s_server sends what it reads from its stdin (40 bytes: a prefix that is no command).
    const Bytes reply = high_bytes(40, 52);
    child->write(framed(reply));
    std::optional<Message> m = t.receive(deadline_after(10s));
    REQUIRE(m.has_value());
    CHECK(m->bytes == reply);
    const Bytes long_reply = high_bytes(70'000, 53);  // several records from their side
    child->write(framed(long_reply));
    m = t.receive(deadline_after(10s));
    REQUIRE(m.has_value());
    CHECK(m->bytes == long_reply);
    t.close();
  }
  {
    // s_server limited to TLS 1.2: no common version.
    std::optional<Child> child;
    const std::uint16_t port = start_s_server(child, *openssl, "127.0.0.1", {"-tls1_2"});
    CHECK_THAT(error_message(errc::version_mismatch, [&] {
                 (void)TlsTransport::connect("127.0.0.1", port, TlsContext::client(pki().client()), deadline_after(10s));
               }),
               Catch::Contains("protocol version"));
  }
}

TEST_CASE("TLS foreign peer: openssl s_client against our TlsListener", "[tls][transport]") {
  const std::optional<std::string> openssl = find_openssl_cli();
  if (!openssl) {
    WARN("the openssl command-line tool is not installed (Debian: openssl): foreign-peer test skipped");
    return;
  }
  const TlsContext server_context = TlsContext::server(pki().server(true));
  for (const char* host : loopbacks()) {
    INFO(host);
    TlsListener listener = TlsListener::bind(host, 0, server_context);
    Child child = start_s_client(*openssl, host, listener.port(),
                                 {"-cert", pki().client_cert.string(), "-key", pki().client_key.string(), "-tls1_3"});
    std::optional<TlsTransport> t = listener.accept(deadline_after(10s));
    INFO("s_client stderr: " << child.stderr_text());
    REQUIRE(t.has_value());
    CHECK(t->protocol() == "TLSv1.3");
    CHECK(t->peer_subject() == client_subject);
    // Ours to theirs: with -quiet, s_client's stdout is exactly what it receives.
    const Bytes small = text_bytes("hello, s_client");
    const Bytes large = high_bytes(100'000, 61);
    t->send(small);
    t->send(large);
    const Bytes expected = concat(framed(small), framed(large));
    CHECK(child.read_until([&](const Bytes& o) { return o.size() >= expected.size(); }));
    CHECK(child.output == expected);
    // Theirs to ours.
    const Bytes reply = high_bytes(70'000, 62);
    child.write(framed(reply));
    std::optional<Message> m = t->receive(deadline_after(10s));
    REQUIRE(m.has_value());
    CHECK(m->bytes == reply);
  }
  {
    // Without a client certificate: refused by mutual TLS.
    TlsListener listener = TlsListener::bind("127.0.0.1", 0, server_context);
    Child child = start_s_client(*openssl, "127.0.0.1", listener.port(), {"-tls1_3"});
    CHECK_THAT(error_message(errc::unreachable, [&] { (void)listener.accept(deadline_after(10s)); }),
               Catch::Contains("peer did not return a certificate"));
  }
  {
    // TLS 1.2 only: no common version.
    TlsListener listener = TlsListener::bind("127.0.0.1", 0, server_context);
    Child child = start_s_client(*openssl, "127.0.0.1", listener.port(),
                                 {"-cert", pki().client_cert.string(), "-key", pki().client_key.string(), "-tls1_2"});
    CHECK_THAT(error_message(errc::version_mismatch, [&] { (void)listener.accept(deadline_after(10s)); }),
               Catch::Contains("unsupported protocol"));
  }
}

// edgesplit/transport/zmq_curve.hpp - CURVE keys for ZeroMQ: generation, key files, and the ZAP
// handler that admits only allow-listed client keys.
//
// Needs libzmq built with CURVE (Debian's is) and cppzmq (CMake option EDGESPLIT_WITH_ZMQ).
//
// Keys are Z85 text, 40 characters for 32 bytes (ZeroMQ RFC 32). Key files are text:
//
//   # comment
//   public-key = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
//   secret-key = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"
//
// A ".key" file holds both keys (keep it private: it is written with mode 0600); a ".pub" file
// holds the public key alone and may be shared. An allow-list file holds any number of public
// keys, one per line, either bare or as `public-key = "..."` (so `cat clients/*.pub > allowed`
// makes one). Every key read from a file is checked: 40 Z85 characters that decode to 32 bytes,
// and a secret key's public half must match the public key stored beside it.
#pragma once

#include <zmq.h>

#include <zmq.hpp>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <sys/stat.h>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/thread_name.hpp"

namespace edgesplit {

inline constexpr std::size_t curve_key_text_bytes = 40;  ///< Z85 text of a 32-byte key
inline constexpr std::size_t curve_key_bytes = 32;  ///< a CURVE key in binary
inline constexpr std::size_t max_curve_key_file_bytes = 1 << 20;  ///< an allow-list of ~20,000 keys

/// A CURVE key pair as Z85 text.
struct CurveKeyPair {
  std::string public_key;  ///< 40 Z85 characters: share it
  std::string secret_key;  ///< 40 Z85 characters: never leaves its owner
};

/// Keys of the connecting side of a CURVE hop: its own pair and the server's public key.
struct CurveClientKeys {
  CurveKeyPair own;               ///< the client's pair (its public key is on the server's allow-list)
  std::string server_public_key;  ///< whom the client expects to reach
};

/// Keys of the accepting side: its own pair, and the ZAP domain under which its allow-list is
/// registered with a ZapAuthenticator in the same ZeroMQ context.
struct CurveServerKeys {
  CurveKeyPair own;        ///< the server's pair
  std::string zap_domain;  ///< the allow-list to check clients against (empty: none)
};

/// True when this libzmq was built with CURVE support.
inline bool curve_available() noexcept { return zmq_has("curve") != 0; }

/// The 32 bytes a Z85 key stands for; errc::invalid_argument when `z85` is not a key.
inline std::array<std::uint8_t, curve_key_bytes> decode_curve_key(std::string_view z85, std::string_view what = "key") {
  std::array<std::uint8_t, curve_key_bytes> out{};
  if (z85.size() != curve_key_text_bytes)
    fail(errc::invalid_argument, std::string(what) + ": a CURVE key is 40 Z85 characters, got " + std::to_string(z85.size()));
  const std::string z(z85);  // zmq_z85_decode reads a NUL-terminated string
  if (zmq_z85_decode(out.data(), z.c_str()) == nullptr)
    fail(errc::invalid_argument, std::string(what) + ": not a Z85-encoded key");
  return out;
}

/// Z85 text of 32 key bytes.
inline std::string encode_curve_key(const std::array<std::uint8_t, curve_key_bytes>& key) {
  char text[curve_key_text_bytes + 1] = {};
  if (zmq_z85_encode(text, key.data(), key.size()) == nullptr) fail(errc::invalid_argument, "zmq_z85_encode failed");
  return std::string(text, curve_key_text_bytes);
}

/// A fresh key pair from libzmq's CSPRNG. errc::unsupported without CURVE.
inline CurveKeyPair generate_curve_keypair() {
  char pub[curve_key_text_bytes + 1] = {}, sec[curve_key_text_bytes + 1] = {};
  if (zmq_curve_keypair(pub, sec) != 0) fail(errc::unsupported, "this libzmq has no CURVE support");
  return {std::string(pub, curve_key_text_bytes), std::string(sec, curve_key_text_bytes)};
}

/// The public key that belongs to `secret_key`.
inline std::string curve_public_key_of(std::string_view secret_key) {
  (void)decode_curve_key(secret_key, "secret key");
  const std::string sec(secret_key);
  char pub[curve_key_text_bytes + 1] = {};
  if (zmq_curve_public(pub, sec.c_str()) != 0) fail(errc::unsupported, "this libzmq has no CURVE support");
  return std::string(pub, curve_key_text_bytes);
}

namespace detail::curve {

/// (name, value) of each key line of a key file: `name = "value"`, `name = value`, or a bare
/// value (name empty). Comments (#) and blank lines are skipped; anything else is corrupt_frame.
inline std::vector<std::pair<std::string, std::string>> read_key_lines(const std::filesystem::path& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) fail(errc::io_error, "cannot read key file " + path.string() + ": " + ec.message());
  if (size > max_curve_key_file_bytes)
    fail(errc::too_large, "key file " + path.string() + " is " + std::to_string(size) + " bytes");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(errc::io_error, "cannot open key file " + path.string());
  std::vector<std::pair<std::string, std::string>> out;
  std::string line;
  std::size_t number = 0;
  const auto trim = [](std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
    return s;
  };
  while (std::getline(in, line)) {
    ++number;
    std::string_view l = trim(line);
    if (l.empty() || l.front() == '#') continue;
    std::string name;
    std::string_view value = l;
    const bool bare = l.size() == curve_key_text_bytes ||
                      (l.size() == curve_key_text_bytes + 2 && l.front() == '"' && l.back() == '"');
    if (const auto eq = l.find('='); !bare && eq != std::string_view::npos) {  // '=' is a Z85 digit too
      name = std::string(trim(l.substr(0, eq)));
      value = trim(l.substr(eq + 1));
    }
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
    if ((!name.empty() && name != "public-key" && name != "secret-key") || value.size() != curve_key_text_bytes)
      fail(errc::corrupt_frame, "key file " + path.string() + " line " + std::to_string(number) + ": not a key line");
    try {
      (void)decode_curve_key(value);
    } catch (const error&) {
      fail(errc::corrupt_frame, "key file " + path.string() + " line " + std::to_string(number) + ": not a Z85 key");
    }
    out.emplace_back(std::move(name), std::string(value));
  }
  return out;
}

inline void write_text(const std::filesystem::path& path, const std::string& text, bool secret) {
  const std::string tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail(errc::io_error, "cannot write " + tmp);
    if (secret) ::chmod(tmp.c_str(), 0600);  // before the secret is in it
    out << text;
    if (!out.flush()) fail(errc::io_error, "cannot write " + tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) fail(errc::io_error, "cannot rename " + tmp + " to " + path.string() + ": " + ec.message());
}

}  // namespace detail::curve

/// Writes `base`.key (both keys, mode 0600) and `base`.pub (the public key).
inline void write_curve_key_files(const CurveKeyPair& keys, const std::filesystem::path& base) {
  if (curve_public_key_of(keys.secret_key) != keys.public_key)
    fail(errc::invalid_argument, "the public key does not belong to the secret key");
  const std::string pub = "public-key = \"" + keys.public_key + "\"\n";
  detail::curve::write_text(base.string() + ".pub", "# edgesplit CURVE public key: share it\n" + pub, false);
  detail::curve::write_text(base.string() + ".key",
                            "# edgesplit CURVE secret key: keep it private\n" + pub + "secret-key = \"" +
                                keys.secret_key + "\"\n",
                            true);
}

/// Reads a ".key" file: exactly one public and one secret key that belong together.
inline CurveKeyPair read_curve_secret_file(const std::filesystem::path& path) {
  CurveKeyPair k;
  for (auto& [name, value] : detail::curve::read_key_lines(path)) {
    std::string& slot = name == "secret-key" ? k.secret_key : k.public_key;
    if (name.empty() || !slot.empty()) fail(errc::corrupt_frame, "key file " + path.string() + ": unexpected key line");
    slot = value;
  }
  if (k.secret_key.empty() || k.public_key.empty())
    fail(errc::corrupt_frame, "key file " + path.string() + " needs a public-key and a secret-key line");
  if (curve_public_key_of(k.secret_key) != k.public_key)
    fail(errc::corrupt_frame, "key file " + path.string() + ": the public key does not belong to the secret key");
  return k;
}

/// Reads a ".pub" file (or a ".key" file, taking its public key): exactly one public key.
inline std::string read_curve_public_file(const std::filesystem::path& path) {
  std::string pub;
  for (auto& [name, value] : detail::curve::read_key_lines(path)) {
    if (name == "secret-key") continue;
    if (!pub.empty()) fail(errc::corrupt_frame, "key file " + path.string() + " holds more than one public key");
    pub = value;
  }
  if (pub.empty()) fail(errc::corrupt_frame, "key file " + path.string() + " holds no public key");
  return pub;
}

/// Reads an allow-list: every public key in the file (secret-key lines are refused: an allow-list
/// is meant to be shared).
inline std::vector<std::string> read_curve_allow_list(const std::filesystem::path& path) {
  std::vector<std::string> keys;
  for (auto& [name, value] : detail::curve::read_key_lines(path)) {
    if (name == "secret-key") fail(errc::corrupt_frame, "allow-list " + path.string() + " holds a secret key");
    keys.push_back(value);
  }
  return keys;
}

/// Sets the client side of CURVE on a socket (before connect).
inline void configure_curve_client(zmq::socket_t& s, const CurveClientKeys& k) {
  (void)decode_curve_key(k.server_public_key, "server public key");
  if (curve_public_key_of(k.own.secret_key) != k.own.public_key)
    fail(errc::invalid_argument, "the client's public key does not belong to its secret key");
  s.set(zmq::sockopt::curve_serverkey, k.server_public_key);
  s.set(zmq::sockopt::curve_publickey, k.own.public_key);
  s.set(zmq::sockopt::curve_secretkey, k.own.secret_key);
}

/// Sets the server side of CURVE on a socket (before bind). Every client key is then checked by
/// the ZapAuthenticator of the socket's context, under the socket's ZAP domain. Note libzmq's
/// rule: a context with no ZAP handler at all admits every CURVE client that knows the server's
/// public key, so a server that must check keys starts its ZapAuthenticator before it binds.
inline void configure_curve_server(zmq::socket_t& s, const CurveServerKeys& k) {
  if (curve_public_key_of(k.own.secret_key) != k.own.public_key)
    fail(errc::invalid_argument, "the server's public key does not belong to its secret key");
  s.set(zmq::sockopt::curve_server, true);
  s.set(zmq::sockopt::curve_secretkey, k.own.secret_key);
  if (!k.zap_domain.empty()) s.set(zmq::sockopt::zap_domain, k.zap_domain);
}

/// Counters of a ZapAuthenticator.
struct ZapStats {
  std::size_t allowed = 0;  ///< handshakes admitted
  std::size_t denied = 0;   ///< handshakes refused (key not on the domain's list, or not CURVE)
  std::size_t errors = 0;   ///< exceptions (out of memory, ...) caught in the handler; that handshake is refused
};

/// The ZAP handler (ZeroMQ RFC 27) of one ZeroMQ context: admits a CURVE client only when its
/// public key is on the allow-list of the socket's ZAP domain. It answers on
/// inproc://zeromq.zap.01 from a thread of its own; one per context (a second one fails with
/// errc::io_error). The user id of an admitted connection is the client's Z85 public key:
/// messages carry it as the "User-Id" property.
class ZapAuthenticator {
 public:
  /// `domains`: ZAP domain -> allowed client public keys (Z85). Keys are checked here.
  ZapAuthenticator(zmq::context_t& context, const std::map<std::string, std::vector<std::string>>& domains)
      : socket_(context, zmq::socket_type::rep) {
    for (const auto& [domain, keys] : domains) {
      auto& set = allowed_[domain];
      for (const auto& k : keys) set.insert(decode_curve_key(k, "allow-listed key"));
    }
    socket_.set(zmq::sockopt::linger, 0);
    try {
      socket_.bind("inproc://zeromq.zap.01");
    } catch (const zmq::error_t& e) {
      fail(errc::io_error, std::string("cannot start the ZAP handler (one per context): ") + e.what());
    }
    thread_ = std::thread([this] {
      name_this_thread("es-zap");
      try {
        run();
      } catch (...) {
        // run() catches per turn; this is the last line against std::terminate.
      }
    });
  }
  ZapAuthenticator(const ZapAuthenticator&) = delete;
  ZapAuthenticator& operator=(const ZapAuthenticator&) = delete;
  ~ZapAuthenticator() { stop(); }

  /// Stops answering (idempotent; the destructor calls it).
  void stop() {
    stop_.store(true, std::memory_order_release);
    if (thread_.joinable()) thread_.join();
  }
  /// Decisions so far.
  ZapStats stats() const {
    std::lock_guard lock(mutex_);
    ZapStats s = stats_;
    s.errors = errors_.load(std::memory_order_relaxed);
    return s;
  }

 private:
  using Key = std::array<std::uint8_t, curve_key_bytes>;

  // Whatever a turn throws (std::bad_alloc, say), the handler counts it, refuses the handshake it
  // was answering (a REP socket must answer before it can take the next request) and goes on.
  void run() {
    std::vector<zmq::message_t> frames;
    while (!stop_.load(std::memory_order_acquire)) {
      try {
        if (state_ != State::idle) {
          refuse_unanswered();
          continue;
        }
        zmq_pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
        const int n = zmq_poll(&item, 1, 50);
        if (n < 0 && zmq_errno() == ETERM) return;  // the context is gone: nothing left to guard
        if (n <= 0 || !(item.revents & ZMQ_POLLIN)) continue;
        frames.clear();
        state_ = State::receiving;
        sent_parts_ = 0;
        bool more = true;
        while (more) {
          zmq::message_t m;
          if (!socket_.recv(m, zmq::recv_flags::dontwait)) break;
          more = m.more();
          frames.push_back(std::move(m));
        }
        state_ = State::replying;
        reply(frames);
        state_ = State::idle;
      } catch (const zmq::error_t& e) {
        if (e.num() == ETERM) return;
        if (e.num() == EFSM) state_ = State::idle;  // the socket is not where we thought: it waits for a request
        errors_.fetch_add(1, std::memory_order_relaxed);
      } catch (...) {
        errors_.fetch_add(1, std::memory_order_relaxed);
      }
    }
  }

  // After an exception: reads what is left of the request, or completes a reply cut short, then
  // answers "500" (libzmq refuses the handshake).
  void refuse_unanswered() {
    if (state_ == State::receiving) {
      while (socket_.get(zmq::sockopt::rcvmore)) {
        zmq::message_t rest;
        if (!socket_.recv(rest, zmq::recv_flags::dontwait)) break;
      }
      state_ = State::replying;
    }
    // libzmq numbers every ZAP request "1".
    static const char* const refusal[] = {"1.0", "1", "500", "internal error", "", ""};
    for (std::size_t i = sent_parts_; i < 6; ++i) {
      (void)socket_.send(zmq::buffer(refusal[i], std::strlen(refusal[i])), i < 5 ? zmq::send_flags::sndmore : zmq::send_flags::none);
      sent_parts_ = i + 1;
    }
    state_ = State::idle;
  }

  // Request: version, request id, domain, address, routing id, mechanism, credentials...
  void reply(const std::vector<zmq::message_t>& f) {
    const auto text = [&](std::size_t i) { return i < f.size() ? f[i].to_string() : std::string(); };
    bool ok = false;
    std::string user;
    if (f.size() >= 7 && text(0) == "1.0" && text(5) == "CURVE" && f[6].size() == curve_key_bytes) {
      Key key;
      std::memcpy(key.data(), f[6].data(), key.size());
      const auto d = allowed_.find(text(2));
      ok = d != allowed_.end() && d->second.count(key) != 0;
      if (ok) user = encode_curve_key(key);
    }
    {
      std::lock_guard lock(mutex_);
      ++(ok ? stats_.allowed : stats_.denied);
    }
    // A REP socket must answer even a malformed request, or it cannot take the next one.
    const std::string parts[] = {"1.0", text(1), ok ? "200" : "400", ok ? "OK" : "client key not allowed", user, ""};
    for (std::size_t i = 0; i < 6; ++i) {
      (void)socket_.send(zmq::buffer(parts[i]), i < 5 ? zmq::send_flags::sndmore : zmq::send_flags::none);
      sent_parts_ = i + 1;
    }
  }

  enum class State { idle, receiving, replying };  // where in the REP cycle (handler thread only)

  zmq::socket_t socket_;
  std::map<std::string, std::set<Key>> allowed_;
  std::atomic<bool> stop_{false};
  State state_ = State::idle;
  std::size_t sent_parts_ = 0;  // parts of the current reply already sent
  std::atomic<std::size_t> errors_{0};
  mutable std::mutex mutex_;
  ZapStats stats_;
  std::thread thread_;
};

}  // namespace edgesplit

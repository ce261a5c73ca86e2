// edgesplit/transport/tls.hpp - TLS 1.3 for the TCP path, through OpenSSL: certificates and trust
// (TlsOptions, TlsContext), one connection's TLS state without a socket (TlsSession, for event
// loops that own their sockets), and the Transport built on it (TlsTransport, TlsListener).
//
// Needs OpenSSL 1.1.1 or later: CMake option EDGESPLIT_WITH_TLS (on when OpenSSL is found), which
// links libssl and libcrypto and defines EDGESPLIT_HAS_TLS=1. This is the only edgesplit header
// that includes OpenSSL, and edgesplit.hpp does not include it.
//
// Inside the TLS stream the framing is TcpTransport's: a 4-byte little-endian payload length, then
// the payload; the receiver checks the length against its cap before it allocates anything.
//
// What is verified:
// - The protocol is TLS 1.3 (or later) on both sides; a peer that offers only older versions is
//   refused with `version_mismatch`.
// - A client verifies the server's certificate chain against its CA file (the system's trust store
//   when it names none), and that the certificate is for the server it meant: the DNS name or IP
//   address it connects to must be in the certificate's subjectAltName (TlsOptions::server_name
//   overrides the name).
// - A server with a CA file verifies any client certificate against it; with
//   require_client_certificate a client without a valid one is refused (mutual TLS: the CA is the
//   allow-list of the TCP path).
//
// Failures are typed: a certificate that does not verify, on either side, or the peer's alert that
// refused ours, is `unreachable` (the peer cannot be reached securely), with OpenSSL's reason;
// bytes that are not TLS, or records that do not decrypt and authenticate, are `corrupt_frame`;
// no common protocol version is `version_mismatch`. Files that cannot be read are `io_error`;
// files that do not hold what they should, keys that do not match their certificate and option
// combinations that cannot work are `invalid_argument`.
#pragma once

#ifndef EDGESPLIT_HAS_TLS
#define EDGESPLIT_HAS_TLS 0
#endif
#if !EDGESPLIT_HAS_TLS
#error "edgesplit/transport/tls.hpp needs OpenSSL: configure edgesplit with EDGESPLIT_WITH_TLS=ON (which defines EDGESPLIT_HAS_TLS=1)"
#endif

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/transport/tcp.hpp"
#include "edgesplit/transport/transport.hpp"

namespace edgesplit {

/// Certificates and trust of one side of a TLS connection (files in PEM format).
///
/// The protocol is always TLS 1.3 or later: there is no option to go lower, and a peer that
/// offers only TLS 1.2 or older is refused (`version_mismatch`). Session resumption is off (every
/// connection makes a full handshake), and so is TLS compression.
struct TlsOptions {
  /// This side's certificate, followed by any intermediate CA certificates. Required on a server;
  /// on a client, the certificate it presents when the server asks for one (mutual TLS).
  std::string certificate_file;
  /// The private key of certificate_file (unencrypted PEM); given exactly when certificate_file is.
  std::string private_key_file;
  /// CA certificates that the peer's certificate must chain to. Client: empty means the system's
  /// default trust store. Server: the CAs whose client certificates are accepted (and whose names
  /// are sent to clients as the acceptable issuers); empty means clients are not asked for one.
  std::string ca_file;
  /// Server only: refuse every client that does not present a certificate signed by a CA of
  /// ca_file (mutual TLS). This is the allow-list of the TCP path: only holders of such a
  /// certificate and its key get a connection.
  bool require_client_certificate = false;
  /// Client only: the DNS name or IP address (IPv4, or IPv6 without brackets) that the server's
  /// certificate must carry in its subjectAltName. A DNS name is also sent as SNI. Empty:
  /// TlsTransport::connect uses the host it connects to.
  std::string server_name;
};

namespace detail::tls {

/// OpenSSL's queued errors of this thread: the reasons as text, and the first reason of the SSL
/// library (0: none), which says what kind of failure it was.
struct Errors {
  std::string text;
  int ssl_reason = 0;
};

/// Takes (and so clears) this thread's OpenSSL error queue.
inline Errors take_errors() {
  Errors out;
  for (;;) {
    const char* data = nullptr;
    int flags = 0;
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    const unsigned long e = ERR_get_error_all(nullptr, nullptr, nullptr, &data, &flags);
#else
    const unsigned long e = ERR_get_error_line_data(nullptr, nullptr, &data, &flags);
#endif
    if (e == 0) break;
    if (out.ssl_reason == 0 && ERR_GET_LIB(e) == ERR_LIB_SSL) out.ssl_reason = ERR_GET_REASON(e);
    std::string one;
    if (const char* reason = ERR_reason_error_string(e)) {
      one = reason;
    } else {
      char buf[256];
      ERR_error_string_n(e, buf, sizeof buf);
      one = buf;
    }
    if (data != nullptr && (flags & ERR_TXT_STRING) != 0 && *data != '\0') {
      one += " (";
      one += data;
      one += ")";
    }
    if (out.text.find(one) == std::string::npos) {
      if (!out.text.empty()) out.text += "; ";
      out.text += one;
    }
  }
  return out;
}

/// The reasons of this thread's OpenSSL errors, or `fallback` when there are none.
inline std::string error_text(const char* fallback = "no reason given") {
  std::string t = take_errors().text;
  return t.empty() ? std::string(fallback) : t;
}

/// What a failed handshake or record means to the caller, from OpenSSL's reason.
inline errc classify(int ssl_reason) noexcept {
  switch (ssl_reason) {
    case SSL_R_CERTIFICATE_VERIFY_FAILED:
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
    case SSL_R_NO_SHARED_CIPHER:
      return errc::unreachable;
    case SSL_R_UNSUPPORTED_PROTOCOL:
    case SSL_R_NO_PROTOCOLS_AVAILABLE:
    case SSL_R_VERSION_TOO_LOW:
      return errc::version_mismatch;
    default:
      break;
  }
  if (ssl_reason > SSL_AD_REASON_OFFSET) {  // the peer sent an alert
    switch (ssl_reason - SSL_AD_REASON_OFFSET) {
      case SSL_AD_PROTOCOL_VERSION:
        return errc::version_mismatch;
      case SSL_AD_UNEXPECTED_MESSAGE:
      case SSL_AD_BAD_RECORD_MAC:
      case SSL_AD_RECORD_OVERFLOW:
      case SSL_AD_DECODE_ERROR:
      case SSL_AD_DECRYPT_ERROR:
      case SSL_AD_ILLEGAL_PARAMETER:
        return errc::corrupt_frame;
      default:
        return errc::unreachable;  // it refused us: certificate, access, handshake parameters
    }
  }
  return errc::corrupt_frame;
}

/// A session's failure again, with the peer's address in front of OpenSSL's reason.
inline error with_peer(const error& e, const std::string& peer) {
  std::string_view w = e.what();
  const std::string code_prefix = std::string(to_string(e.code())) + ": ";
  if (w.substr(0, code_prefix.size()) == code_prefix) w.remove_prefix(code_prefix.size());
  if (w.substr(0, 5) == "TLS: ") w.remove_prefix(5);
  return error(e.code(), "TLS: " + peer + ": " + std::string(w));
}

/// `io_error` unless `path` names a regular file this process can open for reading.
inline void check_readable(const std::string& path, const char* what) {
  if (path.find('\0') != std::string::npos) fail(errc::invalid_argument, std::string("TLS: bad ") + what + " name");
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    fail(errc::io_error, std::string("TLS: cannot read the ") + what + " '" + path + "': " + detail::tcp::errno_text(err));
  }
  struct stat st {};
  const bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  ::close(fd);
  if (!regular) fail(errc::io_error, std::string("TLS: the ") + what + " '" + path + "' is not a regular file");
}

/// An X509 name as RFC 2253 text ("CN=edge-1,O=Example").
inline std::string name_text(const X509_NAME* name) {
  if (name == nullptr) return {};
  BIO* bio = BIO_new(BIO_s_mem());
  if (bio == nullptr) return {};
  std::string out;
  if (X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253) >= 0) {
    char* data = nullptr;
    const long n = BIO_get_mem_data(bio, &data);
    if (n > 0 && data != nullptr) out.assign(data, static_cast<std::size_t>(n));
  }
  BIO_free(bio);
  return out;
}

/// OpenSSL asks for a passphrase when a key file is encrypted; there is none to give, so loading
/// such a key fails instead of prompting on a terminal.
inline int no_passphrase(char*, int, int, void*) { return 0; }

/// Frees an SSL.
struct SslFree {
  void operator()(SSL* s) const noexcept { SSL_free(s); }
};

}  // namespace detail::tls

/// The shared TLS configuration of one side (its certificate, key, trust and verification rules),
/// built once from TlsOptions and used for any number of connections. Cheap to copy: copies share
/// one OpenSSL `SSL_CTX`. Thread-safe once built.
class TlsContext {
 public:
  /// The context of a server (TlsListener, or TlsSession with server = true). Needs
  /// certificate_file and private_key_file; with ca_file, client certificates are asked for and
  /// verified; with require_client_certificate as well, clients without one are refused.
  static TlsContext server(const TlsOptions& options) { return make(options, true); }
  /// The context of a client (TlsTransport::connect, or TlsSession with server = false). It
  /// always verifies the server's certificate: against ca_file, or the system's trust store when
  /// that is empty.
  static TlsContext client(const TlsOptions& options) { return make(options, false); }

  /// Shares the configuration.
  TlsContext(const TlsContext&) = default;
  /// Shares the configuration.
  TlsContext& operator=(const TlsContext&) = default;
  ~TlsContext() = default;

  /// True for a server context.
  bool is_server() const noexcept { return impl_->server; }
  /// TlsOptions::server_name of a client context ("" if none was given).
  const std::string& server_name() const noexcept { return impl_->server_name; }
  /// OpenSSL's context, for settings this API does not cover (e.g. SSL_CTX_set_keylog_callback
  /// while debugging). Change it before the first connection uses it, never after.
  SSL_CTX* native_handle() const noexcept { return impl_->ctx; }

 private:
  struct Impl {
    Impl(SSL_CTX* c, bool s, std::string name) : ctx(c), server(s), server_name(std::move(name)) {}
    Impl(const Impl&) = delete;
    Impl& operator=(const Impl&) = delete;
    ~Impl() { SSL_CTX_free(ctx); }
    SSL_CTX* ctx;
    bool server;
    std::string server_name;
  };

  explicit TlsContext(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

  static TlsContext make(const TlsOptions& o, bool server) {
    using detail::tls::check_readable;
    using detail::tls::error_text;
    const char* side = server ? "TLS server: " : "TLS client: ";
    if (server && o.certificate_file.empty()) {
      fail(errc::invalid_argument, std::string(side) + "TlsOptions::certificate_file (and private_key_file) are required");
    }
    if (o.certificate_file.empty() != o.private_key_file.empty()) {
      fail(errc::invalid_argument, std::string(side) + "TlsOptions::certificate_file and private_key_file go together");
    }
    if (server && o.require_client_certificate && o.ca_file.empty()) {
      fail(errc::invalid_argument,
           std::string(side) + "require_client_certificate needs TlsOptions::ca_file (the CAs that sign client certificates)");
    }
    if (!server && o.require_client_certificate) {
      fail(errc::invalid_argument, std::string(side) + "require_client_certificate is a server option");
    }
    if (server && !o.server_name.empty()) {
      fail(errc::invalid_argument, std::string(side) + "server_name is a client option (the name it verifies)");
    }
    if (!o.certificate_file.empty()) {
      check_readable(o.certificate_file, "certificate file");
      check_readable(o.private_key_file, "private key file");
    }
    if (!o.ca_file.empty()) check_readable(o.ca_file, "CA file");

    ERR_clear_error();
    SSL_CTX* raw = SSL_CTX_new(TLS_method());
    if (raw == nullptr) fail(errc::io_error, std::string(side) + "SSL_CTX_new: " + error_text());
    auto impl = std::make_shared<const Impl>(raw, server, o.server_name);
    if (SSL_CTX_set_min_proto_version(raw, TLS1_3_VERSION) != 1) {
      fail(errc::unsupported, std::string(side) + "this OpenSSL cannot do TLS 1.3: " + error_text());
    }
    SSL_CTX_set_options(raw, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_session_cache_mode(raw, SSL_SESS_CACHE_OFF);
    if (server) SSL_CTX_set_num_tickets(raw, 0);  // no resumption, so no tickets to send
    SSL_CTX_set_default_passwd_cb(raw, &detail::tls::no_passphrase);

    if (!o.certificate_file.empty()) {
      if (SSL_CTX_use_certificate_chain_file(raw, o.certificate_file.c_str()) != 1) {
        fail(errc::invalid_argument, std::string(side) + "'" + o.certificate_file +
                                         "' holds no usable PEM certificate: " + error_text());
      }
      if (SSL_CTX_use_PrivateKey_file(raw, o.private_key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
          SSL_CTX_check_private_key(raw) != 1) {
        fail(errc::invalid_argument, std::string(side) + "the private key '" + o.private_key_file +
                                         "' cannot be used with the certificate '" + o.certificate_file +
                                         "' (an unencrypted PEM key of that certificate is needed): " + error_text());
      }
    }
    if (!o.ca_file.empty()) {
      if (SSL_CTX_load_verify_locations(raw, o.ca_file.c_str(), nullptr) != 1) {
        fail(errc::invalid_argument, std::string(side) + "the CA file '" + o.ca_file +
                                         "' holds no usable PEM certificate: " + error_text());
      }
    } else if (!server && SSL_CTX_set_default_verify_paths(raw) != 1) {
      fail(errc::io_error, std::string(side) + "cannot load the system's trust store: " + error_text());
    }
    if (server) {
      if (!o.ca_file.empty()) {
        STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(o.ca_file.c_str());
        if (names == nullptr) {
          fail(errc::invalid_argument, std::string(side) + "the CA file '" + o.ca_file +
                                           "' holds no usable PEM certificate: " + error_text());
        }
        SSL_CTX_set_client_CA_list(raw, names);  // takes ownership
        SSL_CTX_set_verify(raw, SSL_VERIFY_PEER | (o.require_client_certificate ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
                           nullptr);
      } else {
        SSL_CTX_set_verify(raw, SSL_VERIFY_NONE, nullptr);
      }
    } else {
      SSL_CTX_set_verify(raw, SSL_VERIFY_PEER, nullptr);
    }
    ERR_clear_error();
    return TlsContext(std::move(impl));
  }

  std::shared_ptr<const Impl> impl_;
};

/// One connection's TLS state over memory buffers: no socket, and no call ever blocks. The owner
/// of the socket moves bytes: what it reads from the socket goes to feed(); what take_output()
/// gives goes to the socket. This lets an event loop (epoll) drive many connections from one
/// thread; TlsTransport drives one from blocking calls with deadlines.
///
/// The loop, after every event: feed() what the socket gave, call read() until it returns 0 (it
/// also advances the handshake), write() what is to be sent, then send take_output() to the
/// socket. A client session has its first handshake message ready in take_output() as soon as it
/// is constructed.
///
/// Buffering stays bounded by what the caller does: input is what it fed and read() has not
/// consumed (when it calls read() until 0 after each feed(), less than one TLS record, 16,645
/// bytes, waits for the rest of its record); output is what write() encrypted plus the protocol's
/// own messages (the handshake, alerts, a KeyUpdate answer, close_notify), until take_output()
/// takes it; plaintext written before the handshake completes waits (as written) until then.
/// Bytes fed after the peer's close_notify are dropped.
///
/// Failures (a handshake or certificate that fails, bytes that are not TLS, a record that does
/// not authenticate) throw a typed edgesplit::error with OpenSSL's reason (see the top of this
/// file); the session is then dead: every later call throws the same error, except
/// take_output(), which still gives the alert OpenSSL queued for the peer.
///
/// Not thread-safe: one thread at a time (TlsTransport serializes its two sides with a lock).
class TlsSession {
 public:
  /// A session for a server (`server` true: waits for the client's hello) or a client (which
  /// queues its hello at once). The context must be of the same side. A client verifies that the
  /// server's certificate is for `server_name` (a DNS name or an IP address), or for the
  /// context's TlsOptions::server_name when it is empty; a client with neither is refused
  /// (`invalid_argument`), since the chain alone would admit any server the CA ever certified.
  TlsSession(const TlsContext& context, bool server, std::string_view server_name = {}) : server_(server) {
    if (context.is_server() != server) {
      fail(errc::invalid_argument, server ? "TLS: a server session needs a server context (TlsContext::server)"
                                          : "TLS: a client session needs a client context (TlsContext::client)");
    }
    std::string name(server_name.empty() ? std::string_view(context.server_name()) : server_name);
    if (name.size() >= 2 && name.front() == '[' && name.back() == ']') name = name.substr(1, name.size() - 2);
    if (!server && name.empty()) {
      fail(errc::invalid_argument, "TLS: a client must name the server it verifies (TlsOptions::server_name)");
    }
    if (name.find('\0') != std::string::npos || name.size() > 253) {
      fail(errc::invalid_argument, "TLS: bad server name '" + name + "'");
    }
    ERR_clear_error();
    ssl_.reset(SSL_new(context.native_handle()));
    if (!ssl_) fail(errc::io_error, "TLS: SSL_new: " + detail::tls::error_text());
    BIO* in = BIO_new(BIO_s_mem());
    BIO* out = BIO_new(BIO_s_mem());
    if (in == nullptr || out == nullptr) {
      BIO_free(in);
      BIO_free(out);
      fail(errc::io_error, "TLS: cannot allocate the session's buffers");
    }
    BIO_set_mem_eof_return(in, -1);  // empty means "wait for more", not end of stream
    BIO_set_mem_eof_return(out, -1);
    SSL_set_bio(ssl_.get(), in, out);  // the session owns both now
    in_ = in;
    out_ = out;
    if (server) {
      SSL_set_accept_state(ssl_.get());
      return;
    }
    SSL_set_connect_state(ssl_.get());
    unsigned char address[16];
    const bool ip = ::inet_pton(AF_INET, name.c_str(), address) == 1 || ::inet_pton(AF_INET6, name.c_str(), address) == 1;
    if (ip) {
      // An IP address is matched against the certificate's IP entries, and is never sent as SNI.
      if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_.get()), name.c_str()) != 1) {
        fail(errc::invalid_argument, "TLS: cannot verify against address '" + name + "': " + detail::tls::error_text());
      }
    } else {
      SSL_set_hostflags(ssl_.get(), X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      if (SSL_set1_host(ssl_.get(), name.c_str()) != 1 || SSL_set_tlsext_host_name(ssl_.get(), name.c_str()) != 1) {
        fail(errc::invalid_argument, "TLS: bad server name '" + name + "': " + detail::tls::error_text());
      }
    }
    (void)step_handshake();  // the ClientHello
  }

  /// Moves the session.
  TlsSession(TlsSession&&) noexcept = default;
  /// Moves the session.
  TlsSession& operator=(TlsSession&&) noexcept = default;
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;
  ~TlsSession() = default;

  /// Hands over bytes read from the socket. Nothing is decrypted yet: read() does that.
  void feed(std::span<const std::byte> ciphertext) {
    check_alive();
    if (peer_closed_) return;  // nothing after close_notify counts; keeping it would only pile up
    while (!ciphertext.empty()) {
      const int n = static_cast<int>(std::min<std::size_t>(ciphertext.size(), INT_MAX));
      if (BIO_write(in_, ciphertext.data(), n) != n) fail(errc::io_error, "TLS: out of memory buffering input");
      ciphertext = ciphertext.subspan(static_cast<std::size_t>(n));
    }
  }

  /// Advances the handshake with what was fed, then decrypts application bytes into `plaintext`:
  /// returns how many (at most its size, from one record at a time); 0 when none are available
  /// yet, during the handshake, with an empty span, or once the peer has closed. Call it until it
  /// returns 0. It may queue output (handshake messages, alerts): call take_output() after it.
  std::size_t read(std::span<std::byte> plaintext) {
    check_alive();
    if (!handshake_done_ && !step_handshake()) return 0;
    if (plaintext.empty() || peer_closed_) return 0;
    ERR_clear_error();
    std::size_t n = 0;
    const int r = SSL_read_ex(ssl_.get(), plaintext.data(), plaintext.size(), &n);
    if (r == 1) return n;
    const int e = SSL_get_error(ssl_.get(), r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
    if (e == SSL_ERROR_ZERO_RETURN) {
      peer_closed_ = true;
      return 0;
    }
    die(e, "read");
  }

  /// Encrypts application bytes for the peer (take_output() gives the records). Before the
  /// handshake completes they are kept and encrypted when it does. `unreachable` after close().
  void write(std::span<const std::byte> plaintext) {
    check_alive();
    if (closed_) fail(errc::unreachable, "TLS: write after close()");
    if (plaintext.empty()) return;
    if (!handshake_done_) {
      queued_.insert(queued_.end(), plaintext.begin(), plaintext.end());
      return;
    }
    encrypt(plaintext);
  }

  /// Appends the ciphertext waiting to go to the socket to `out`; returns how many bytes.
  std::size_t take_output(std::vector<std::byte>& out) {
    if (!ssl_) return 0;
    const std::size_t pending = BIO_ctrl_pending(out_);
    if (pending == 0) return 0;
    const std::size_t old = out.size();
    out.resize(old + pending);
    std::size_t got = 0;
    while (got < pending) {
      const int n = BIO_read(out_, out.data() + old + got, static_cast<int>(std::min<std::size_t>(pending - got, INT_MAX)));
      if (n <= 0) break;
      got += static_cast<std::size_t>(n);
    }
    out.resize(old + got);
    return got;
  }
  /// Bytes take_output() would give now.
  std::size_t pending_output() const noexcept { return ssl_ ? BIO_ctrl_pending(out_) : 0; }

  /// True once the handshake has completed (and the peer's certificate, where one is checked,
  /// has been verified). With TLS 1.3 a client completes before the server has checked the
  /// client's certificate: a server that refuses it says so in an alert that the client's next
  /// read() throws.
  bool handshake_complete() const noexcept { return handshake_done_; }
  /// True once the peer's close_notify has been read: it will send nothing more.
  bool peer_closed() const noexcept { return peer_closed_; }
  /// True for a server session.
  bool is_server() const noexcept { return server_; }

  /// Queues close_notify (take_output() gives it) and refuses further write()s. Idempotent;
  /// before the handshake has completed there is nothing to say and it only refuses writes.
  void close() noexcept {
    if (!ssl_ || closed_ || failure_) return;
    closed_ = true;
    queued_.clear();
    if (!handshake_done_) return;
    ERR_clear_error();
    (void)SSL_shutdown(ssl_.get());
    ERR_clear_error();
  }

  /// The subject of the peer's verified certificate in RFC 2253 form ("CN=edge-1,O=Example"); ""
  /// before the handshake completes or when the peer presented none (a client, unless the server
  /// has a CA file).
  std::string peer_subject() const {
    if (!ssl_ || !handshake_done_) return {};
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    X509* cert = SSL_get1_peer_certificate(ssl_.get());
#else
    X509* cert = SSL_get_peer_certificate(ssl_.get());
#endif
    if (cert == nullptr) return {};
    std::string out;
    if (SSL_get_verify_result(ssl_.get()) == X509_V_OK) out = detail::tls::name_text(X509_get_subject_name(cert));
    X509_free(cert);
    return out;
  }
  /// The negotiated protocol version ("TLSv1.3"); "" before the handshake completes.
  std::string protocol() const { return ssl_ && handshake_done_ ? std::string(SSL_get_version(ssl_.get())) : std::string(); }
  /// The negotiated cipher suite ("TLS_AES_256_GCM_SHA384"); "" before the handshake completes.
  std::string cipher() const {
    if (!ssl_ || !handshake_done_) return {};
    const SSL_CIPHER* c = SSL_get_current_cipher(ssl_.get());
    return c != nullptr ? std::string(SSL_CIPHER_get_name(c)) : std::string();
  }

 private:
  struct Failure {
    errc code;
    std::string what;
  };

  void check_alive() const {
    if (!ssl_) fail(errc::invalid_argument, "TLS: moved-from session");
    if (failure_) fail(failure_->code, failure_->what);
  }

  /// One step of the handshake; true once it has completed.
  bool step_handshake() {
    ERR_clear_error();
    const int r = SSL_do_handshake(ssl_.get());
    if (r == 1) {
      handshake_done_ = true;
      if (!queued_.empty()) {
        std::vector<std::byte> q;
        q.swap(queued_);
        encrypt(q);
      }
      return true;
    }
    const int e = SSL_get_error(ssl_.get(), r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return false;
    die(e, "handshake");
  }

  void encrypt(std::span<const std::byte> plaintext) {
    while (!plaintext.empty()) {
      ERR_clear_error();
      std::size_t n = 0;
      const int r = SSL_write_ex(ssl_.get(), plaintext.data(), plaintext.size(), &n);
      if (r != 1) die(SSL_get_error(ssl_.get(), r), "write");
      plaintext = plaintext.subspan(n);
    }
  }

  /// Records the failure (every later call throws it again) and throws it.
  [[noreturn]] void die(int ssl_error, const char* during) {
    const detail::tls::Errors errs = detail::tls::take_errors();
    errc code = errc::corrupt_frame;
    std::string text;
    if (ssl_error == SSL_ERROR_ZERO_RETURN) {
      code = errc::unreachable;
      text = "the peer closed the connection";
    } else if (ssl_error == SSL_ERROR_SSL || errs.ssl_reason != 0) {
      code = detail::tls::classify(errs.ssl_reason);
      text = errs.text.empty() ? std::string("no reason given") : errs.text;
      const long verify = SSL_get_verify_result(ssl_.get());
      if (errs.ssl_reason == SSL_R_CERTIFICATE_VERIFY_FAILED && verify != X509_V_OK) {
        const std::string why = X509_verify_cert_error_string(verify);
        if (text.find(why) == std::string::npos) text += ": " + why;
      }
    } else {
      text = "SSL_get_error " + std::to_string(ssl_error) + (errs.text.empty() ? std::string() : ": " + errs.text);
    }
    failure_ = Failure{code, std::string("TLS: ") + during + " failed: " + text};
    queued_.clear();
    fail(failure_->code, failure_->what);
  }

  std::unique_ptr<SSL, detail::tls::SslFree> ssl_;
  BIO* in_ = nullptr;   // owned by ssl_: ciphertext fed, not yet decrypted
  BIO* out_ = nullptr;  // owned by ssl_: ciphertext for the peer, not yet taken
  std::vector<std::byte> queued_;  // plaintext written before the handshake completed
  std::optional<Failure> failure_;
  bool server_ = false;
  bool handshake_done_ = false;
  bool peer_closed_ = false;
  bool closed_ = false;
};

class TlsListener;

/// One TLS 1.3 connection over TCP carrying length-prefixed messages: TcpTransport's framing,
/// deadlines and error semantics, encrypted and authenticated.
///
/// Thread-safety: one send and one receive may run at once (each side has its own lock, and a
/// third lock serializes their short turns in the TLS session, never held while waiting on the
/// socket); close() may be called from any thread and wakes both.
///
/// Failure semantics, as TcpTransport's: a receive whose deadline passes mid-message returns
/// false and keeps what it has. A send waits for room in the socket before it encrypts anything,
/// so a send whose deadline passes then throws `timeout` and the connection stays usable; once
/// records exist they must all be sent (each carries a sequence number), so a deadline that
/// passes after that closes the connection, then throws `timeout`. A length prefix over the cap
/// closes the connection (`too_large`) before anything is allocated. A clean end between messages
/// (close_notify, or the end of the stream) is `unreachable`, an end inside a message
/// `corrupt_frame`; TLS failures are typed as described at the top of this file, and close the
/// connection after trying to send OpenSSL's alert.
class TlsTransport {
 public:
  /// Connects to `host`:`port` (numeric IPv4/IPv6 address or name) and makes the TLS handshake,
  /// both by `deadline` (`timeout` otherwise). The server's certificate must chain to the
  /// context's CA and carry TlsOptions::server_name, or `host` when that is empty (`unreachable`
  /// otherwise, with OpenSSL's reason). A server that refuses this client's certificate says so
  /// only after the client's handshake has completed (TLS 1.3): the first receive() then throws
  /// `unreachable`.
  static TlsTransport connect(std::string_view host, std::uint16_t port, const TlsContext& context,
                              Deadline deadline = deadline_after(std::chrono::seconds(10)), TcpOptions options = {}) {
    detail::tcp::check_options(options);
    if (context.is_server()) fail(errc::invalid_argument, "TLS: connect needs a client context (TlsContext::client)");
    TlsSession session(context, false, context.server_name().empty() ? host : std::string_view(context.server_name()));
    std::unique_ptr<State> s = make_state(detail::tcp::connect_socket(host, port, deadline), options, std::move(session));
    client_handshake(*s, deadline);
    return TlsTransport(std::move(s));
  }

  /// Moves the connection.
  TlsTransport(TlsTransport&&) noexcept = default;
  /// Moves the connection.
  TlsTransport& operator=(TlsTransport&&) noexcept = default;
  TlsTransport(const TlsTransport&) = delete;
  TlsTransport& operator=(const TlsTransport&) = delete;
  ~TlsTransport() { close(); }

  /// Sends one message, framed, with the options' send timeout.
  void send(std::span<const std::byte> bytes) { send(bytes, deadline_after(state().options.send_timeout)); }
  /// Sends one message, framed; errc::timeout past `deadline` (see the class comment for when the
  /// connection stays usable).
  void send(std::span<const std::byte> bytes, Deadline deadline) {
    State& s = state();
    if (bytes.size() > s.options.max_message_bytes) {
      fail(errc::too_large, "TLS: message of " + std::to_string(bytes.size()) + " bytes over the cap of " +
                                std::to_string(s.options.max_message_bytes));
    }
    std::lock_guard lock(s.send_mutex);
    throw_if_closed(s);
    // Encrypting commits: a record carries a sequence number, so once made it must be sent. Wait
    // for room first, so that a deadline passing here leaves the stream as it was.
    if (!detail::tcp::wait_for(s.fd.get(), POLLOUT, deadline)) {
      fail(errc::timeout, "TLS: send to " + s.peer + " timed out (nothing sent)");
    }
    throw_if_closed(s);
    if (s.stage.empty()) s.stage.resize(record_bytes);
    const auto n = static_cast<std::uint32_t>(bytes.size());
    const std::byte header[4] = {std::byte(n & 0xff), std::byte((n >> 8) & 0xff), std::byte((n >> 16) & 0xff),
                                 std::byte(n >> 24)};
    // The prefix and the start of the payload share the first record (a record of its own would
    // cost 22 bytes of overhead for 4); the rest goes in chunks of a few full records.
    const std::size_t first = std::min(bytes.size(), s.stage.size() - sizeof header);
    std::memcpy(s.stage.data(), header, sizeof header);
    if (first > 0) std::memcpy(s.stage.data() + sizeof header, bytes.data(), first);
    encrypt_and_send(s, std::span<const std::byte>(s.stage.data(), sizeof header + first), deadline);
    for (std::size_t off = first; off < bytes.size(); off += send_chunk_bytes) {
      encrypt_and_send(s, bytes.subspan(off, std::min(send_chunk_bytes, bytes.size() - off)), deadline);
    }
  }

  /// The next whole message, or nullopt at the deadline; errc::unreachable when the peer closed.
  std::optional<Message> receive(Deadline deadline) { return detail::receive_new(*this, deadline); }
  /// The next whole message into `into`, reusing its buffer; false at the deadline, keeping a
  /// partial message for the next call.
  bool receive(Deadline deadline, Message& into) {
    State& s = state();
    std::lock_guard lock(s.receive_mutex);
    throw_if_closed(s);
    into.sent_at = into.delivered_at = {};
    if (s.holding_partial) {  // resume the message an earlier deadline interrupted
      into.bytes.swap(s.partial);
      s.holding_partial = false;
    }
    while (!s.have_length) {
      bool peer_done = false;
      const std::size_t n = decrypt(s, s.prefix.data() + s.prefix_got, s.prefix.size() - s.prefix_got, peer_done);
      if (n > 0) {
        s.prefix_got += n;
        if (s.prefix_got == s.prefix.size()) {
          take_length(s);
          into.bytes.resize(s.length);
        }
        continue;
      }
      if (peer_done) peer_ended(s);
      const int r = receive_some(s, deadline);
      if (r < 0) peer_ended(s);
      if (r == 0) {
        into.bytes.clear();
        return false;
      }
    }
    while (s.got < s.length) {
      bool peer_done = false;
      const std::size_t n = decrypt(s, into.bytes.data() + s.got, s.length - s.got, peer_done);
      if (n > 0) {
        s.got += n;
        continue;
      }
      if (peer_done) peer_ended(s);
      const int r = receive_some(s, deadline);
      if (r < 0) peer_ended(s);
      if (r == 0) {
        s.partial.swap(into.bytes);
        s.holding_partial = true;
        into.bytes.clear();
        return false;
      }
    }
    s.have_length = false;
    s.prefix_got = 0;
    return true;
  }

  /// Idempotent. Sends close_notify when no send is in progress (without waiting: if the socket
  /// cannot take it at once it is dropped), then shuts the socket down, waking any thread blocked
  /// on it; the descriptor itself is released by the destructor.
  void close() noexcept {
    if (s_) close_state(*s_);
  }
  /// False once closed.
  bool is_open() const noexcept { return s_ && !s_->closed.load(std::memory_order_acquire); }
  /// True while part of a message has been received and the rest has not: a peer stalled here.
  bool mid_message() const {
    if (!s_) return false;
    std::lock_guard lock(s_->receive_mutex);
    return s_->have_length || s_->prefix_got > 0;
  }
  /// The peer as "address:port" ("[v6 address]:port" for IPv6).
  const std::string& peer_address() const { return state().peer; }
  /// The subject of the peer's verified certificate, RFC 2253 ("CN=edge-1,O=Example"); "" when
  /// it presented none (a client of a server without a CA file).
  const std::string& peer_subject() const { return state().subject; }
  /// The negotiated protocol version: "TLSv1.3".
  const std::string& protocol() const { return state().protocol; }
  /// The negotiated cipher suite, e.g. "TLS_AES_256_GCM_SHA384".
  const std::string& cipher() const { return state().cipher; }
  /// The socket descriptor (non-blocking), -1 when none; for socket options. Reading or writing
  /// it directly would break the TLS stream.
  int native_handle() const noexcept { return s_ ? s_->fd.get() : -1; }
  const TcpOptions& options() const { return state().options; }  ///< the options in use

 private:
  friend class TlsListener;
  static constexpr std::size_t record_bytes = 16 * 1024;  // a full TLS record's plaintext
  static constexpr std::size_t send_chunk_bytes = 4 * record_bytes;
  static constexpr std::size_t receive_buffer_bytes = 64 * 1024;

  struct State {
    State(detail::tcp::Socket f, TcpOptions o, TlsSession&& tls) : fd(std::move(f)), options(o), session(std::move(tls)) {}
    detail::tcp::Socket fd;
    const TcpOptions options;
    std::string peer;
    std::string subject, protocol, cipher;  // set by the handshake, fixed afterwards
    std::atomic<bool> closed{false};
    std::mutex send_mutex;  // one sender at a time; only its holder writes to the socket
    std::vector<std::byte> stage;  // prefix + start of the payload, guarded by send_mutex
    std::vector<std::byte> out;    // ciphertext on its way to the socket, guarded by send_mutex
    std::size_t out_sent = 0;      // of `out`, during a TlsListener's handshake
    mutable std::mutex receive_mutex;
    // Receive side, guarded by receive_mutex.
    std::vector<std::byte> in;  // ciphertext read from the socket
    std::array<std::byte, 4> prefix{};
    std::size_t prefix_got = 0;
    bool have_length = false;  // the current frame's length prefix has been read
    std::uint32_t length = 0;
    std::size_t got = 0;             // payload bytes of the current frame received so far
    std::vector<std::byte> partial;  // their buffer while no receive() is running
    bool holding_partial = false;
    // The TLS state: both sides take turns in it (innermost lock, never held while waiting).
    std::mutex session_mutex;
    TlsSession session;
  };

  explicit TlsTransport(std::unique_ptr<State> s) : s_(std::move(s)) {}

  static std::unique_ptr<State> make_state(detail::tcp::Socket fd, const TcpOptions& options, TlsSession session) {
    using namespace detail::tcp;
    set_nonblocking(fd.get(), true);  // every wait is a poll with the caller's deadline
    if (options.no_delay) set_option(fd.get(), IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
    auto s = std::make_unique<State>(std::move(fd), options, std::move(session));
    s->peer = detail::tcp::peer_address(s->fd.get());
    return s;
  }

  /// Notes what the handshake settled, once it has completed.
  static void handshake_done(State& s) {
    s.subject = s.session.peer_subject();
    s.protocol = s.session.protocol();
    s.cipher = s.session.cipher();
    s.out.clear();
    s.out_sent = 0;
  }

  static void client_handshake(State& s, Deadline deadline) {
    for (;;) {
      s.out.clear();
      s.session.take_output(s.out);
      if (!write_all(s, s.out, deadline)) {
        shut(s);
        fail(errc::timeout, "TLS: handshake with " + s.peer + " timed out");
      }
      if (s.session.handshake_complete()) break;
      const int r = receive_some(s, deadline);
      if (r == 0) {
        shut(s);
        fail(errc::timeout, "TLS: handshake with " + s.peer + " timed out");
      }
      if (r < 0) {
        shut(s);
        fail(errc::unreachable, "TLS: " + s.peer + " closed the connection during the handshake");
      }
      try {
        (void)s.session.read({});
      } catch (const error& e) {
        session_failed(s, e, false);
      }
    }
    handshake_done(s);
  }

  State& state() const {
    if (!s_) fail(errc::unreachable, "TLS: moved-from transport");
    return *s_;
  }
  static void throw_if_closed(const State& s) {
    if (s.closed.load(std::memory_order_acquire)) fail(errc::unreachable, "TLS: connection to " + s.peer + " is closed");
  }
  static void shut(State& s) noexcept {
    if (!s.closed.exchange(true, std::memory_order_acq_rel)) ::shutdown(s.fd.get(), SHUT_RDWR);
  }
  static void close_state(State& s) noexcept {
    if (s.closed.load(std::memory_order_acquire)) return;
    std::unique_lock send(s.send_mutex, std::try_to_lock);
    if (send.owns_lock()) {
      try {
        s.out.clear();
        {
          std::lock_guard lock(s.session_mutex);
          s.session.close();
          s.session.take_output(s.out);
        }
        if (!s.out.empty()) (void)::send(s.fd.get(), s.out.data(), s.out.size(), detail::tcp::send_flags | MSG_DONTWAIT);
      } catch (...) {
        // close() must not fail: without close_notify the peer sees a plain end of stream
      }
    }
    shut(s);
  }

  /// What OpenSSL queued for the peer (an alert), if the socket takes it at once. Needs send_mutex.
  static void send_alert(State& s) noexcept {
    try {
      s.out.clear();
      {
        std::lock_guard lock(s.session_mutex);
        s.session.take_output(s.out);
      }
      if (!s.out.empty()) (void)::send(s.fd.get(), s.out.data(), s.out.size(), detail::tcp::send_flags | MSG_DONTWAIT);
    } catch (...) {
    }
  }
  /// A TLS failure: tell the peer if possible, close, and throw it with the peer's address.
  [[noreturn]] static void session_failed(State& s, const error& e, bool holding_send_mutex) {
    if (holding_send_mutex) {
      send_alert(s);
    } else {
      std::unique_lock send(s.send_mutex, std::try_to_lock);
      if (send.owns_lock()) send_alert(s);
    }
    shut(s);
    throw detail::tls::with_peer(e, s.peer);
  }

  /// Encrypts `piece` and writes the records to the socket by `deadline` (needs send_mutex).
  static void encrypt_and_send(State& s, std::span<const std::byte> piece, Deadline deadline) {
    s.out.clear();
    std::optional<error> failure;
    {
      std::lock_guard lock(s.session_mutex);
      try {
        s.session.write(piece);
        s.session.take_output(s.out);
      } catch (const error& e) {
        failure = e;
      }
    }
    if (failure) session_failed(s, *failure, true);
    if (!write_all(s, s.out, deadline)) {
      shut(s);  // records are on their way and cannot be taken back: the stream is unusable
      fail(errc::timeout, "TLS: send to " + s.peer + " timed out inside a message; the connection is closed");
    }
  }

  /// Writes all of `data` (a non-blocking socket: poll waits for room); false at the deadline.
  static bool write_all(State& s, std::span<const std::byte> data, Deadline deadline) {
    using namespace detail::tcp;
    std::size_t sent = 0;
    while (sent < data.size()) {
      const ssize_t w = ::send(s.fd.get(), data.data() + sent, data.size() - sent, send_flags | MSG_DONTWAIT);
      if (w >= 0) {
        sent += static_cast<std::size_t>(w);
        continue;
      }
      const int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) {
        if (wait_for(s.fd.get(), POLLOUT, deadline)) continue;
        return false;
      }
      throw_if_closed(s);
      shut(s);
      fail(classify(err), "TLS: send to " + s.peer + ": " + errno_text(err));
    }
    return true;
  }

  /// Reads what the socket has (waiting until `deadline`) into the session: 1 when bytes came,
  /// 0 at the deadline, -1 at the end of the stream. `unreachable` once closed here.
  static int receive_some(State& s, Deadline deadline) {
    using namespace detail::tcp;
    if (s.in.empty()) s.in.resize(receive_buffer_bytes);
    for (;;) {
      const ssize_t r = ::recv(s.fd.get(), s.in.data(), s.in.size(), MSG_DONTWAIT);
      if (r > 0) {
        std::optional<error> failure;
        {
          std::lock_guard lock(s.session_mutex);
          try {
            s.session.feed(std::span<const std::byte>(s.in.data(), static_cast<std::size_t>(r)));
          } catch (const error& e) {
            failure = e;
          }
        }
        if (failure) session_failed(s, *failure, false);
        return 1;
      }
      if (r == 0) {
        throw_if_closed(s);
        return -1;
      }
      const int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) {
        if (wait_for(s.fd.get(), POLLIN, deadline)) continue;
        return 0;
      }
      throw_if_closed(s);
      shut(s);
      fail(classify(err), "TLS: receive from " + s.peer + ": " + errno_text(err));
    }
  }

  /// Up to `len` decrypted bytes into `buf`; 0 when the session needs more input (`peer_done`
  /// tells whether the peer has sent close_notify).
  static std::size_t decrypt(State& s, std::byte* buf, std::size_t len, bool& peer_done) {
    std::optional<error> failure;
    {
      std::lock_guard lock(s.session_mutex);
      try {
        const std::size_t n = s.session.read(std::span<std::byte>(buf, len));
        peer_done = s.session.peer_closed();
        return n;
      } catch (const error& e) {
        failure = e;
      }
    }
    session_failed(s, *failure, false);
  }

  /// The peer ended the stream (close_notify or end of stream): `unreachable` between messages,
  /// `corrupt_frame` inside one.
  [[noreturn]] static void peer_ended(State& s) {
    throw_if_closed(s);
    shut(s);
    if (s.have_length || s.prefix_got > 0) {
      fail(errc::corrupt_frame, "TLS: " + s.peer + " closed the connection inside a message (" +
                                    std::to_string(s.have_length ? 4 + s.got : s.prefix_got) + " bytes of it received)");
    }
    fail(errc::unreachable, "TLS: " + s.peer + " closed the connection");
  }

  /// Takes the complete length prefix and checks it against the cap, closing the connection
  /// before anything is allocated for an oversized message.
  static void take_length(State& s) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.prefix.data());
    const std::uint32_t n = std::uint32_t{p[0]} | std::uint32_t{p[1]} << 8 | std::uint32_t{p[2]} << 16 |
                            std::uint32_t{p[3]} << 24;
    if (n > s.options.max_message_bytes) {
      shut(s);
      fail(errc::too_large, "TLS: " + s.peer + " announced a message of " + std::to_string(n) +
                                " bytes, over the cap of " + std::to_string(s.options.max_message_bytes));
    }
    s.have_length = true;
    s.length = n;
    s.got = 0;
  }

  std::unique_ptr<State> s_;
};

static_assert(Transport<TlsTransport>);

/// A listening TCP socket that hands out one TlsTransport per connection whose TLS handshake has
/// completed (and, with mutual TLS, whose client certificate has been verified).
///
/// Handshakes run inside accept(), several at once: a connection's handshake continues across
/// calls until it completes or its handshake_timeout passes, so a short accept() deadline (a
/// server loop that checks a stop flag) does not cut handshakes short, and a client that stalls
/// holds up no other. At most max_handshakes_in_progress run at once; further connections wait in
/// the kernel's backlog meanwhile.
///
/// A connection that does not become a transport is reported by exactly one exception from
/// accept(), naming the peer: its TLS failure (typed as described at the top of this file), its
/// end of stream (`unreachable`), or its handshake_timeout (`timeout`). The listener stays open:
/// call accept() again. `unreachable` with the listener's address means the listener was closed.
///
/// Thread-safety: one accept() at a time (others wait their turn, within their deadline); close()
/// from any thread wakes it.
class TlsListener {
 public:
  /// Most handshakes in progress at once.
  static constexpr std::size_t max_handshakes_in_progress = 64;

  /// Listens on `host` and `port` as TcpListener::bind does (port 0: the system picks a free one;
  /// port() tells which), with a server context. Accepted connections get `options`; each must
  /// complete its handshake within `handshake_timeout` of being accepted.
  static TlsListener bind(std::string_view host, std::uint16_t port, TlsContext context, TcpOptions options = {},
                          Clock::duration handshake_timeout = std::chrono::seconds(10), int backlog = 128) {
    if (!context.is_server()) fail(errc::invalid_argument, "TLS: a listener needs a server context (TlsContext::server)");
    if (handshake_timeout <= Clock::duration::zero()) fail(errc::invalid_argument, "TLS: handshake_timeout must be positive");
    TcpListener tcp = TcpListener::bind(host, port, options, backlog);
    TlsListener l;
    l.s_ = std::make_unique<State>(std::move(tcp), std::move(context), options, handshake_timeout);
    return l;
  }

  /// Moves the listener.
  TlsListener(TlsListener&&) noexcept = default;
  /// Moves the listener.
  TlsListener& operator=(TlsListener&&) noexcept = default;
  ~TlsListener() { close(); }

  /// The next connection whose handshake has completed, or nullopt when the deadline passes first
  /// (handshakes in progress then continue in the next call). Throws for a connection that failed
  /// (see the class comment); `unreachable` once the listener is closed.
  std::optional<TlsTransport> accept(Deadline deadline) {
    State& s = state();
    {
      // One accept() at a time; the others wait their turn within their deadline. (A condition
      // variable rather than std::timed_mutex, whose timed lock ThreadSanitizer cannot follow.)
      std::unique_lock turn(s.turn_mutex);
      const auto free = [&s] { return !s.accepting; };
      if (deadline == no_deadline) {
        s.turn_cv.wait(turn, free);
      } else if (!s.turn_cv.wait_until(turn, deadline, free)) {
        return std::nullopt;
      }
      s.accepting = true;
    }
    struct Release {
      State& s;
      ~Release() {
        {
          std::lock_guard lock(s.turn_mutex);
          s.accepting = false;
        }
        s.turn_cv.notify_one();
      }
    } release{s};
    for (;;) {
      if (!s.tcp.is_open()) {
        s.pending.clear();
        s.in_progress.store(0, std::memory_order_relaxed);
        fail(errc::unreachable, "TLS: listener " + s.tcp.address() + " is closed");
      }
      const auto now = std::chrono::steady_clock::now();
      for (std::size_t i = 0; i < s.pending.size(); ++i) {
        if (s.pending[i].expires > now) continue;
        const std::string peer = s.pending[i].t->peer;
        drop(s, i);
        fail(errc::timeout, "TLS: handshake with " + peer + " did not complete within " +
                                std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(s.handshake_timeout).count()) +
                                " ms; connection dropped");
      }
      s.fds.clear();
      const bool room = s.pending.size() < max_handshakes_in_progress;
      // Without room the listener is still polled (for no event): its hang-up on close() wakes us.
      s.fds.push_back(pollfd{s.tcp.native_handle(), static_cast<short>(room ? POLLIN : 0), 0});
      Deadline wake = deadline;
      for (const Pending& p : s.pending) {
        const bool has_output = p.t->out_sent < p.t->out.size();
        s.fds.push_back(pollfd{p.t->fd.get(), static_cast<short>(POLLIN | (has_output ? POLLOUT : 0)), 0});
        wake = std::min(wake, p.expires);
      }
      const int n = ::poll(s.fds.data(), static_cast<nfds_t>(s.fds.size()), detail::tcp::poll_timeout_ms(wake));
      if (n < 0) {
        const int err = errno;
        if (err == EINTR) continue;
        fail(errc::io_error, "poll: " + detail::tcp::errno_text(err));
      }
      if (n == 0) {
        if (deadline != no_deadline && std::chrono::steady_clock::now() >= deadline) return std::nullopt;
        continue;
      }
      if (!s.tcp.is_open()) continue;
      for (std::size_t i = s.pending.size(); i-- > 0;) {
        if (s.fds[i + 1].revents == 0) continue;
        std::optional<TlsTransport> done;
        try {
          done = advance(s.pending[i].t);
        } catch (...) {
          drop(s, i);
          throw;
        }
        if (done) {
          drop(s, i);
          return done;
        }
      }
      if (room && (s.fds[0].revents & POLLIN) != 0) {
        std::optional<detail::tcp::Socket> fd = s.tcp.accept_socket(Deadline::min());  // ready: does not wait
        if (fd) {
          TlsSession session(s.context, true);
          s.pending.push_back(Pending{TlsTransport::make_state(std::move(*fd), s.options, std::move(session)),
                                      std::chrono::steady_clock::now() + s.handshake_timeout});
          s.in_progress.store(s.pending.size(), std::memory_order_relaxed);
        }
      }
    }
  }

  /// Idempotent; wakes a thread blocked in accept(). Handshakes in progress are dropped.
  void close() noexcept {
    if (s_) s_->tcp.close();
  }
  /// False once closed.
  bool is_open() const noexcept { return s_ && s_->tcp.is_open(); }
  /// The bound port (the one the system chose for port 0).
  std::uint16_t port() const { return state().tcp.port(); }
  /// The bound address as "address:port".
  const std::string& address() const { return state().tcp.address(); }
  /// Connections accepted whose handshake has not completed yet (as of the last accept()).
  std::size_t handshakes_in_progress() const noexcept {
    return s_ ? s_->in_progress.load(std::memory_order_relaxed) : 0;
  }

 private:
  struct Pending {
    std::unique_ptr<TlsTransport::State> t;
    std::chrono::steady_clock::time_point expires;
  };
  struct State {
    State(TcpListener l, TlsContext c, TcpOptions o, Clock::duration h)
        : tcp(std::move(l)), context(std::move(c)), options(o), handshake_timeout(h) {}
    TcpListener tcp;
    TlsContext context;
    const TcpOptions options;
    const Clock::duration handshake_timeout;
    std::mutex turn_mutex;
    std::condition_variable turn_cv;
    bool accepting = false;  // an accept() is running; guarded by turn_mutex
    // Owned by the running accept().
    std::vector<Pending> pending;
    std::vector<pollfd> fds;
    std::atomic<std::size_t> in_progress{0};
  };

  TlsListener() = default;
  State& state() const {
    if (!s_) fail(errc::unreachable, "TLS: moved-from listener");
    return *s_;
  }
  static void drop(State& s, std::size_t i) {
    s.pending.erase(s.pending.begin() + static_cast<std::ptrdiff_t>(i));
    s.in_progress.store(s.pending.size(), std::memory_order_relaxed);
  }

  /// Sends what the handshake has for the peer, as far as the socket takes it now.
  static void flush_nowait(TlsTransport::State& t) {
    t.session.take_output(t.out);
    while (t.out_sent < t.out.size()) {
      const ssize_t w = ::send(t.fd.get(), t.out.data() + t.out_sent, t.out.size() - t.out_sent,
                               detail::tcp::send_flags | MSG_DONTWAIT);
      if (w > 0) {
        t.out_sent += static_cast<std::size_t>(w);
        continue;
      }
      const int err = w < 0 ? errno : 0;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) return;
      fail(detail::tcp::classify(err), "TLS: handshake with " + t.peer + ": " + detail::tcp::errno_text(err));
    }
    t.out.clear();
    t.out_sent = 0;
  }

  /// Moves one connection's handshake on with what its socket has; the transport once complete.
  /// The session is this thread's alone until then, so no lock is taken.
  static std::optional<TlsTransport> advance(std::unique_ptr<TlsTransport::State>& owned) {
    TlsTransport::State& t = *owned;
    if (t.in.empty()) t.in.resize(TlsTransport::receive_buffer_bytes);
    flush_nowait(t);
    while (!t.session.handshake_complete()) {
      const ssize_t r = ::recv(t.fd.get(), t.in.data(), t.in.size(), MSG_DONTWAIT);
      if (r > 0) {
        try {
          t.session.feed(std::span<const std::byte>(t.in.data(), static_cast<std::size_t>(r)));
          (void)t.session.read({});
        } catch (const error& e) {
          try {
            flush_nowait(t);  // the alert that tells the client why
          } catch (...) {
          }
          throw detail::tls::with_peer(e, t.peer);
        }
        flush_nowait(t);
        continue;
      }
      if (r == 0) fail(errc::unreachable, "TLS: " + t.peer + " closed the connection during the handshake");
      const int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) break;
      fail(detail::tcp::classify(err), "TLS: handshake with " + t.peer + ": " + detail::tcp::errno_text(err));
    }
    if (!t.session.handshake_complete() || t.out_sent < t.out.size()) return std::nullopt;
    TlsTransport::handshake_done(t);
    return TlsTransport(std::move(owned));
  }

  std::unique_ptr<State> s_;
};

}  // namespace edgesplit

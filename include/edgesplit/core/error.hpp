// edgesplit/core/error.hpp - the one exception type every caller-caused failure uses.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

/// Split and collaborative edge-cloud inference: every public name of the library.
namespace edgesplit {

/// What went wrong, as a value a caller can switch on (the message is for humans).
/// The numeric values travel in ERROR messages (wire/protocol.hpp): append new codes at the end,
/// never renumber.
enum class errc {
  invalid_argument,   ///< an argument out of its documented domain
  shape_mismatch,     ///< tensors or layers whose shapes do not fit together
  out_of_range,       ///< an index or range outside a tensor
  too_large,          ///< a size over a cap, or an element count that overflows
  corrupt_frame,      ///< bytes from outside that do not parse
  checksum_mismatch,  ///< a frame whose CRC does not match its contents
  version_mismatch,   ///< a peer or file speaking a version we do not read
  unsupported,        ///< a well-formed request for something not implemented
  timeout,            ///< a deadline passed
  unreachable,        ///< the peer cannot be reached
  overloaded,         ///< the peer refused work because its queue is full
  io_error,           ///< the operating system refused an operation
  non_finite,         ///< a computation produced NaN or infinity (e.g. features so large the outputs overflow)
  internal,           ///< the peer failed on a request for a reason that is not the request's fault (out of memory, a layer's own exception)
  quarantined,        ///< a request refused for good: the workers that ran it died twice (never re-sent)
};

/// Stable short name of a code, for logs and wire error messages.
constexpr std::string_view to_string(errc c) noexcept {
  switch (c) {
    case errc::invalid_argument: return "invalid_argument";
    case errc::shape_mismatch: return "shape_mismatch";
    case errc::out_of_range: return "out_of_range";
    case errc::too_large: return "too_large";
    case errc::corrupt_frame: return "corrupt_frame";
    case errc::checksum_mismatch: return "checksum_mismatch";
    case errc::version_mismatch: return "version_mismatch";
    case errc::unsupported: return "unsupported";
    case errc::timeout: return "timeout";
    case errc::unreachable: return "unreachable";
    case errc::overloaded: return "overloaded";
    case errc::io_error: return "io_error";
    case errc::non_finite: return "non_finite";
    case errc::internal: return "internal";
    case errc::quarantined: return "quarantined";
  }
  return "unknown";
}

/// Thrown for every failure the caller can cause (bad arguments, bad input from outside the
/// process). Programming errors inside edgesplit itself are not reported this way.
class error : public std::runtime_error {
 public:
  /// Carries `code` so that callers can branch on the kind of failure, and `what` for people.
  error(errc code, const std::string& what)
      : std::runtime_error(std::string(to_string(code)) + ": " + what), code_(code) {}
  /// The kind of failure: what a caller (or a peer's ERROR message) acts on.
  errc code() const noexcept { return code_; }

 private:
  errc code_;
};

/// Throws `error(code, what)`. Kept out of line of the hot path: callers test, then call this.
[[noreturn]] inline void fail(errc code, const std::string& what) { throw error(code, what); }

}  // namespace edgesplit

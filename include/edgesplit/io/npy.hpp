// edgesplit/io/npy.hpp - NumPy .npy files of float32 arrays, read and written (no dependency).
//
// Format (numpy.lib.format, versions 1.0, 2.0 and 3.0): the magic "\x93NUMPY", a major and a
// minor version byte, the header length HEADER_LEN (little-endian u16 in 1.0, u32 in 2.0 and
// 3.0), HEADER_LEN bytes of a Python dict literal padded with spaces and ended by '\n', e.g.
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
// then the elements, row-major when fortran_order is False. edgesplit reads and writes
// little-endian float32 ('<f4') in C order, rank 1..8: what np.save writes for a C-contiguous
// np.float32 array.
//
// Reading treats the file as input from outside, like io/idx.hpp: the header length is held to
// a cap and to the bytes present; the dict is parsed by a strict grammar (string keys and values,
// True/False, a tuple of non-negative decimal integers; whitespace anywhere between tokens, keys
// in any order, a trailing comma; no duplicate, missing or unknown key); the shape's element
// count is multiplied with overflow checks and the data must be exactly count x 4 bytes (short
// data and trailing bytes are refused) before anything is allocated. Every violation is an
// edgesplit::error naming the file and what was found, never a crash.
//
// Writing gives the bytes np.save (numpy 1.24) writes for the same array: version 1.0, the keys
// in numpy's order, numpy's spare space for growing the first axis, padding to a multiple of 64.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/shape.hpp"
#include "edgesplit/core/tensor.hpp"

namespace edgesplit {

/// Bounds on a .npy file read from outside.
struct NpyLimits {
  /// Of the Python-dict header (HEADER_LEN); np.save writes 118 bytes for a float32 array of rank
  /// 1..8, and numpy itself refuses headers over 10,000 bytes by default.
  std::size_t max_header_bytes = std::size_t{64} << 10;
  std::size_t max_bytes = std::size_t{1} << 30;  ///< of element data (1 GiB)
};

namespace detail {

inline constexpr std::string_view npy_magic{"\x93NUMPY", 6};

// The parsed header dict, before its values are checked against what edgesplit reads.
struct NpyHeader {
  bool has_descr = false, has_order = false, has_shape = false;
  std::string descr;
  bool fortran_order = false;
  std::array<std::size_t, Shape::max_rank> dims{};
  std::size_t rank = 0;  // may exceed max_rank: only the first max_rank dims are kept
};

// A strict parser of the header dict. `what` prefixes every message (the file name).
class NpyHeaderParser {
 public:
  NpyHeaderParser(std::string_view text, const std::string& what) : s_(text), what_(what) {}

  NpyHeader parse() {
    // The header ends with '\n'; only whitespace may follow the dict.
    if (s_.empty() || s_.back() != '\n') bad("header does not end with a newline");
    NpyHeader h;
    skip_ws();
    expect('{', "header is not a Python dict (no '{')");
    skip_ws();
    while (peek() != '}') {
      const std::string key = string_literal("a dict key");
      skip_ws();
      expect(':', "no ':' after key '" + key + "'");
      skip_ws();
      if (key == "descr") {
        if (h.has_descr) bad("duplicate key 'descr'");
        if (peek() == '[')
          fail(errc::unsupported, what_ + ": a structured dtype (a list 'descr') is not supported; save float32 (np.float32)");
        h.descr = string_literal("the 'descr' value");
        h.has_descr = true;
      } else if (key == "fortran_order") {
        if (h.has_order) bad("duplicate key 'fortran_order'");
        h.fortran_order = boolean();
        h.has_order = true;
      } else if (key == "shape") {
        if (h.has_shape) bad("duplicate key 'shape'");
        shape(h);
        h.has_shape = true;
      } else {
        bad("unexpected key '" + key + "' (a .npy header holds 'descr', 'fortran_order' and 'shape')");
      }
      skip_ws();
      if (peek() == ',') {
        ++at_;
        skip_ws();
      } else if (peek() != '}') {
        bad("expected ',' or '}' in the header dict at byte " + std::to_string(at_));
      }
    }
    ++at_;  // '}'
    skip_ws();
    if (at_ != s_.size()) bad("unexpected text after the header dict at byte " + std::to_string(at_));
    for (auto [has, key] : {std::pair{h.has_descr, "descr"}, std::pair{h.has_order, "fortran_order"}, std::pair{h.has_shape, "shape"}})
      if (!has) bad(std::string("header has no '") + key + "' key");
    return h;
  }

 private:
  [[noreturn]] void bad(const std::string& m) const { fail(errc::corrupt_frame, what_ + ": " + m); }

  char peek() const { return at_ < s_.size() ? s_[at_] : '\0'; }  // '\0' at the end: never a valid token
  static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
  void skip_ws() {
    while (at_ < s_.size() && is_ws(s_[at_])) ++at_;
  }
  void expect(char c, const std::string& m) {
    if (peek() != c) bad(m);
    ++at_;
  }
  bool word(std::string_view w) {
    if (s_.substr(at_, w.size()) != w) return false;
    at_ += w.size();
    return true;
  }

  // A quoted string ('...' or "..."): printable ASCII, no backslash escapes, at most 64 chars.
  std::string string_literal(const char* role) {
    const char q = peek();
    if (q != '\'' && q != '"') bad(std::string(role) + " is not a quoted string (at byte " + std::to_string(at_) + ")");
    const std::size_t begin = ++at_;
    while (at_ < s_.size() && s_[at_] != q) {
      const char c = s_[at_];
      if (c < 0x20 || c > 0x7e || c == '\\') bad(std::string(role) + " holds a character edgesplit does not read (escape, control or non-ASCII)");
      ++at_;
    }
    if (at_ == s_.size()) bad(std::string(role) + " is an unterminated string");
    if (at_ - begin > 64) bad(std::string(role) + " is longer than 64 characters");
    return std::string(s_.substr(begin, at_++ - begin));
  }

  bool boolean() {
    if (word("True")) return true;
    if (word("False")) return false;
    bad("'fortran_order' is not True or False");
  }

  // A tuple of non-negative decimal integers: (), (3,), (2, 3) or (2, 3,).
  void shape(NpyHeader& h) {
    expect('(', "'shape' is not a tuple");
    skip_ws();
    bool comma_after_last = false;
    while (peek() != ')') {
      const std::size_t d = dimension();
      if (h.rank < Shape::max_rank) h.dims[h.rank] = d;
      ++h.rank;
      skip_ws();
      comma_after_last = peek() == ',';
      if (comma_after_last) {
        ++at_;
        skip_ws();
      } else if (peek() != ')') {
        bad("expected ',' or ')' in 'shape' at byte " + std::to_string(at_));
      }
    }
    ++at_;  // ')'
    if (h.rank == 1 && !comma_after_last) bad("'shape' (n) is not a tuple; numpy writes (n,)");
  }

  std::size_t dimension() {
    if (peek() == '-') bad("'shape' holds a negative dimension");
    if (peek() < '0' || peek() > '9') bad("'shape' holds something that is not a non-negative integer (at byte " + std::to_string(at_) + ")");
    if (peek() == '0' && at_ + 1 < s_.size() && s_[at_ + 1] >= '0' && s_[at_ + 1] <= '9')
      bad("'shape' holds an integer with a leading zero");
    std::size_t v = 0;
    while (peek() >= '0' && peek() <= '9') {
      const auto digit = static_cast<std::size_t>(peek() - '0');
      if (v > (std::numeric_limits<std::size_t>::max() - digit) / 10)
        fail(errc::too_large, what_ + ": a 'shape' dimension does not fit in a size_t");
      v = v * 10 + digit;
      ++at_;
    }
    return v;
  }

  std::string_view s_;
  const std::string& what_;
  std::size_t at_ = 0;
};

// Copies `count` float32 values between little-endian storage and host order.
inline void npy_copy_f32_le(const std::byte* from, std::byte* to, std::size_t count) {
  if (count == 0) return;
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(to, from, count * 4);
  } else {
    for (std::size_t i = 0; i < count; ++i)
      for (std::size_t b = 0; b < 4; ++b) to[i * 4 + b] = from[i * 4 + 3 - b];
  }
}

// Parses a whole .npy file held in memory; `what` names it in messages.
inline Tensor<float> parse_npy_named(std::span<const std::byte> bytes, const NpyLimits& limits, const std::string& what) {
  auto u8 = [&](std::size_t i) { return static_cast<std::uint8_t>(bytes[i]); };
  if (bytes.size() < 8) fail(errc::corrupt_frame, what + ": truncated before the .npy version (" + std::to_string(bytes.size()) + " bytes)");
  if (std::memcmp(bytes.data(), npy_magic.data(), npy_magic.size()) != 0)
    fail(errc::corrupt_frame, what + ": not a .npy file (bad magic)");
  const unsigned major = u8(6), minor = u8(7);
  if (major < 1 || major > 3 || minor != 0)
    fail(errc::version_mismatch, what + ": .npy format version " + std::to_string(major) + "." + std::to_string(minor) +
                                     " (edgesplit reads 1.0, 2.0 and 3.0)");
  const std::size_t prefix = major == 1 ? 10 : 12;
  if (bytes.size() < prefix) fail(errc::corrupt_frame, what + ": truncated before the .npy header length");
  std::uint32_t header_len = u8(8) | (std::uint32_t{u8(9)} << 8);
  if (major > 1) header_len |= (std::uint32_t{u8(10)} << 16) | (std::uint32_t{u8(11)} << 24);
  if (header_len > limits.max_header_bytes)
    fail(errc::too_large, what + ": .npy header length " + std::to_string(header_len) + " is over the " +
                              std::to_string(limits.max_header_bytes) + "-byte limit");
  if (header_len > bytes.size() - prefix)
    fail(errc::corrupt_frame, what + ": .npy header length " + std::to_string(header_len) + " runs past the end of the " +
                                  std::to_string(bytes.size()) + "-byte file");
  const std::string_view text(reinterpret_cast<const char*>(bytes.data() + prefix), header_len);
  const NpyHeader h = NpyHeaderParser(text, what).parse();

  if (h.descr.empty()) fail(errc::corrupt_frame, what + ": the 'descr' value is empty");
  if (h.descr == ">f4")
    fail(errc::unsupported, what + ": dtype '>f4' (big-endian float32) is not supported; save little-endian float32 (arr.astype('<f4'))");
  if (h.descr != "<f4")
    fail(errc::unsupported, what + ": dtype '" + h.descr + "' is not supported; save float32 (np.float32)");
  if (h.fortran_order)
    fail(errc::unsupported, what + ": fortran_order True (column-major data) is not supported; save a C-order array (np.ascontiguousarray)");
  if (h.rank == 0)
    fail(errc::unsupported, what + ": a 0-d array (shape ()) is not supported; save an array of rank 1.." +
                                std::to_string(Shape::max_rank) + " (np.atleast_1d)");
  if (h.rank > Shape::max_rank)
    fail(errc::unsupported, what + ": rank " + std::to_string(h.rank) + " is over edgesplit's " + std::to_string(Shape::max_rank));
  const std::span<const std::size_t> dims(h.dims.data(), h.rank);
  // A 0 anywhere makes the array empty whatever the other dimensions, as in Shape.
  const bool empty = std::find(dims.begin(), dims.end(), std::size_t{0}) != dims.end();
  std::size_t count = empty ? 0 : 1;
  for (std::size_t d : dims) {
    if (empty) break;
    if (count > std::numeric_limits<std::size_t>::max() / 4 / d) fail(errc::too_large, what + ": the shape's byte count overflows");
    count *= d;
  }
  const std::size_t need = count * 4;  // cannot overflow: checked above
  if (need > limits.max_bytes)
    fail(errc::too_large, what + ": " + std::to_string(need) + " bytes of data is over the " + std::to_string(limits.max_bytes) +
                              "-byte limit");
  const std::size_t have = bytes.size() - prefix - header_len;
  if (have != need)
    fail(errc::corrupt_frame, what + ": " + std::to_string(have) + " bytes of data, the shape needs " + std::to_string(need) +
                                  (have < need ? " (the file is truncated)" : " (trailing bytes)"));
  Tensor<float> t{Shape(dims)};  // the count is checked, the bytes present
  npy_copy_f32_le(bytes.data() + prefix + header_len, reinterpret_cast<std::byte*>(t.data()), count);
  return t;
}

}  // namespace detail

/// Parses a .npy file held in memory (format 1.0, 2.0 or 3.0) into a float32 tensor of the
/// file's shape. errc::corrupt_frame for malformed bytes (bad magic, truncation, a header past the
/// end or not a valid dict, a missing, duplicate or unknown key, a negative dimension, data
/// shorter or longer than the shape); errc::version_mismatch for another format version;
/// errc::unsupported for a dtype other than '<f4', fortran_order True, rank 0 or over 8;
/// errc::too_large past `limits` or when the shape's size overflows.
inline Tensor<float> parse_npy(std::span<const std::byte> bytes, const NpyLimits& limits = {}) {
  return detail::parse_npy_named(bytes, limits, ".npy bytes");
}

/// Reads a .npy file with the checks of parse_npy; messages start with the path. errc::io_error
/// when it cannot be opened or read; errc::too_large when the file is larger than `limits`
/// allow (checked before it is read).
inline Tensor<float> read_npy(const std::filesystem::path& path, const NpyLimits& limits = {}) {
  const std::string what = path.string();
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail(errc::io_error, "cannot read " + what + ": it is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(errc::io_error, "cannot open " + what);
  in.seekg(0, std::ios::end);
  const std::streamoff end = in.tellg();
  if (end < 0) fail(errc::io_error, "cannot read " + what);
  const auto size = static_cast<std::uintmax_t>(end);
  const std::uintmax_t cap = std::numeric_limits<std::uintmax_t>::max() - 12;
  const std::uintmax_t header = std::min<std::uintmax_t>(limits.max_header_bytes, cap);
  const std::uintmax_t most = 12 + header + std::min<std::uintmax_t>(limits.max_bytes, cap - header);
  if (size > most)
    fail(errc::too_large, what + ": " + std::to_string(size) + " bytes is over the " + std::to_string(most) + "-byte limit");
  std::vector<std::byte> bytes(static_cast<std::size_t>(size));
  in.seekg(0, std::ios::beg);
  if (!in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size())))
    fail(errc::io_error, "cannot read " + what);
  if (in.peek() != std::ifstream::traits_type::eof()) fail(errc::io_error, what + " changed while it was read");
  return detail::parse_npy_named(bytes, limits, what);
}

/// The .npy bytes of `t` (rank 1..8): exactly what np.save writes for a C-order float32 array
/// of that shape (format 1.0; 2.0 only if the header outgrew 1.0's u16 length, which no
/// rank-8 shape can). errc::invalid_argument for the rank-0 placeholder.
inline std::vector<std::byte> to_npy(TensorView<const float> t) {
  const Shape& s = t.shape();
  if (s.rank() == 0) fail(errc::invalid_argument, "to_npy: a rank-0 tensor has no .npy shape");
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  for (std::size_t i = 0; i < s.rank(); ++i) header += (i ? ", " : "") + std::to_string(s[i]);
  header += s.rank() == 1 ? ",), }" : "), }";
  // numpy's spare room for growing the first axis in place (GROWTH_AXIS_MAX_DIGITS = 21)
  header.append(21 - std::to_string(s[0]).size(), ' ');
  const std::size_t hlen = header.size() + 1;  // with the final '\n'
  const bool v1 = hlen + 64 <= 0xffff;  // the padded length must fit 1.0's u16
  const std::size_t prefix = v1 ? 10 : 12;
  const std::size_t pad = 64 - (prefix + hlen) % 64;  // numpy pads 1..64, never 0
  header.append(pad, ' ');
  header += '\n';
  const std::size_t data = Shape::checked_bytes(s.count(), 4);
  std::vector<std::byte> out(prefix + header.size() + data);
  std::memcpy(out.data(), detail::npy_magic.data(), detail::npy_magic.size());
  out[6] = std::byte{static_cast<unsigned char>(v1 ? 1 : 2)};
  out[7] = std::byte{0};
  std::size_t n = header.size();
  for (std::size_t i = 8; i < prefix; ++i, n >>= 8) out[i] = static_cast<std::byte>(n & 0xff);
  std::memcpy(out.data() + prefix, header.data(), header.size());
  detail::npy_copy_f32_le(reinterpret_cast<const std::byte*>(t.data()), out.data() + prefix + header.size(), s.count());
  return out;
}

/// Writes `t` to `path` as .npy (the bytes of to_npy), through a temporary file "<path>.tmp"
/// renamed into place, so a reader never sees half a file. errc::io_error when it cannot be
/// written (the temporary file is removed).
inline void save_npy(const std::filesystem::path& path, TensorView<const float> t) {
  const std::vector<std::byte> bytes = to_npy(t);
  std::filesystem::path tmp = path;
  tmp += ".tmp";
  std::error_code ec;
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out || !out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size())) ||
        !out.flush()) {
      out.close();
      std::filesystem::remove(tmp, ec);
      fail(errc::io_error, "cannot write " + tmp.string());
    }
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    const std::string why = ec.message();
    std::filesystem::remove(tmp, ec);
    fail(errc::io_error, "cannot rename " + tmp.string() + " to " + path.string() + ": " + why);
  }
}

}  // namespace edgesplit

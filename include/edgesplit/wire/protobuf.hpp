// edgesplit/wire/protobuf.hpp - a minimal protobuf wire-format reader and writer.
//
// Enough of https://protobuf.dev/programming-guides/encoding/ to read and write the messages of
// the Open Inference Protocol over gRPC (wire/oip_grpc.hpp) without protoc-generated code:
//
//   tag      = varint (field_number << 3 | wire_type), field numbers 1 .. 2^29 - 1
//   0 VARINT = 1..10 bytes, 7 bits each, least significant group first, high bit: more follow
//   1 I64    = 8 bytes little-endian (fixed64, sfixed64, double)
//   2 LEN    = varint length, then that many bytes (strings, bytes, messages, packed repeated)
//   5 I32    = 4 bytes little-endian (fixed32, sfixed32, float)
//   3, 4     = start and end of a group (deprecated): refused, as are the undefined types 6 and 7
//
// The reader works on untrusted bytes: every length is checked against the bytes that remain
// before anything is read or allocated, a varint longer than 10 bytes or whose 10th byte sets
// bits beyond the 64th is refused, and every refusal is an edgesplit::error with
// errc::corrupt_frame naming the field and the offset. Nothing is asserted.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "edgesplit/core/error.hpp"

/// The protobuf wire format (varints, fixed-width fields, length-delimited fields, tags), read
/// from untrusted bytes and written into byte vectors.
namespace edgesplit::wire::pb {

/// How a field's value is laid out on the wire (the low 3 bits of its tag). Only the four types
/// proto3 uses exist here; the group types 3 and 4 and the undefined 6 and 7 are refused.
enum class WireType : std::uint8_t {
  varint = 0,   ///< int32, int64, uint32, uint64, bool, enum
  fixed64 = 1,  ///< fixed64, sfixed64, double: 8 bytes little-endian
  len = 2,      ///< string, bytes, embedded messages, packed repeated scalars
  fixed32 = 5,  ///< fixed32, sfixed32, float: 4 bytes little-endian
};

/// Largest field number protobuf allows (2^29 - 1).
inline constexpr std::uint32_t max_field_number = (1u << 29) - 1;
/// Longest varint: 10 bytes carry 64 bits.
inline constexpr std::size_t max_varint_bytes = 10;

/// A field's tag: its number and wire type.
struct Tag {
  std::uint32_t field = 0;             ///< field number, 1 .. max_field_number
  WireType type = WireType::varint;    ///< layout of the value that follows
};

/// Bytes a varint of `v` takes (1..10).
constexpr std::size_t varint_size(std::uint64_t v) noexcept {
  std::size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

/// True when `s` is well-formed UTF-8 (no overlong forms, no surrogates, nothing above
/// U+10FFFF): what proto3 requires of `string` fields.
constexpr bool valid_utf8(std::string_view s) noexcept {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t n = 0;
    std::uint32_t cp = 0;
    std::uint32_t min = 0;
    if ((c & 0xE0) == 0xC0) {
      n = 1, cp = c & 0x1Fu, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2, cp = c & 0x0Fu, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3, cp = c & 0x07u, min = 0x10000;
    } else {
      return false;
    }
    if (n > s.size() - i - 1) return false;
    for (std::size_t k = 1; k <= n; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3Fu);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

/// Appends protobuf fields to a caller's byte vector (which the writer does not own). Writes
/// exactly what it is asked to: skipping proto3 default values is the caller's choice.
class Writer {
 public:
  /// Appends to `out`.
  explicit Writer(std::vector<std::byte>& out) noexcept : out_(out) {}

  /// Appends `v` as a varint (1..10 bytes).
  void varint(std::uint64_t v) {
    while (v >= 0x80) {
      out_.push_back(std::byte((v & 0x7F) | 0x80));
      v >>= 7;
    }
    out_.push_back(std::byte(v));
  }
  /// Appends the tag of field `field` with wire type `type`.
  void tag(std::uint32_t field, WireType type) { varint((std::uint64_t{field} << 3) | static_cast<std::uint8_t>(type)); }
  /// Appends 4 bytes, little-endian.
  void raw_fixed32(std::uint32_t v) {
    for (int i = 0; i < 4; ++i) out_.push_back(std::byte((v >> (8 * i)) & 0xFF));
  }
  /// Appends 8 bytes, little-endian.
  void raw_fixed64(std::uint64_t v) {
    for (int i = 0; i < 8; ++i) out_.push_back(std::byte((v >> (8 * i)) & 0xFF));
  }

  /// A uint64 or uint32 field (varint).
  void uint64_field(std::uint32_t field, std::uint64_t v) {
    tag(field, WireType::varint);
    varint(v);
  }
  /// An int64 field: two's complement as a 64-bit varint (negative values take 10 bytes).
  void int64_field(std::uint32_t field, std::int64_t v) { uint64_field(field, static_cast<std::uint64_t>(v)); }
  /// An int32 field: sign-extended to 64 bits, as protobuf does.
  void int32_field(std::uint32_t field, std::int32_t v) { int64_field(field, v); }
  /// A bool field: one varint byte, 0 or 1.
  void bool_field(std::uint32_t field, bool v) { uint64_field(field, v ? 1 : 0); }
  /// A fixed32 field.
  void fixed32_field(std::uint32_t field, std::uint32_t v) {
    tag(field, WireType::fixed32);
    raw_fixed32(v);
  }
  /// A fixed64 field.
  void fixed64_field(std::uint32_t field, std::uint64_t v) {
    tag(field, WireType::fixed64);
    raw_fixed64(v);
  }
  /// A float field (its IEEE bits as fixed32).
  void float_field(std::uint32_t field, float v) { fixed32_field(field, std::bit_cast<std::uint32_t>(v)); }
  /// A double field (its IEEE bits as fixed64).
  void double_field(std::uint32_t field, double v) { fixed64_field(field, std::bit_cast<std::uint64_t>(v)); }
  /// A bytes field: length, then the bytes.
  void bytes_field(std::uint32_t field, std::span<const std::byte> v) {
    tag(field, WireType::len);
    varint(v.size());
    out_.insert(out_.end(), v.begin(), v.end());
  }
  /// A string field: length, then the bytes (the caller checks UTF-8 where it matters).
  void string_field(std::uint32_t field, std::string_view v) { bytes_field(field, std::as_bytes(std::span(v.data(), v.size()))); }

  /// Opens an embedded message as field `field`: write its fields, then pass the returned mark
  /// to end_message, which writes the length in front of them. Messages nest.
  std::size_t begin_message(std::uint32_t field) {
    tag(field, WireType::len);
    out_.push_back(std::byte{0});  // the length, when it fits one byte (moved over otherwise)
    return out_.size();
  }
  /// Closes the message begin_message opened at `mark`.
  void end_message(std::size_t mark) {
    const std::size_t n = out_.size() - mark;
    const std::size_t lv = varint_size(n);
    if (lv > 1) out_.insert(out_.begin() + static_cast<std::ptrdiff_t>(mark), lv - 1, std::byte{0});
    std::uint64_t v = n;
    std::byte* p = out_.data() + (mark - 1);
    for (std::size_t i = 0; i < lv; ++i, v >>= 7) p[i] = std::byte((v & 0x7F) | (i + 1 < lv ? 0x80 : 0));
  }

  /// A packed repeated varint field (int32, int64, uint32, uint64, bool): nothing when empty.
  /// `to_u64` maps an element to the 64-bit value protobuf writes for it.
  template <class Range, class ToU64>
  void packed_varints(std::uint32_t field, const Range& values, ToU64 to_u64) {
    std::size_t n = 0;
    for (const auto& v : values) n += varint_size(to_u64(v));
    if (n == 0) return;
    tag(field, WireType::len);
    varint(n);
    for (const auto& v : values) varint(to_u64(v));
  }
  /// A packed repeated float field: nothing when empty.
  void packed_floats(std::uint32_t field, std::span<const float> values) {
    if (values.empty()) return;
    tag(field, WireType::len);
    varint(values.size() * 4);
    for (float v : values) raw_fixed32(std::bit_cast<std::uint32_t>(v));
  }
  /// A packed repeated double field: nothing when empty.
  void packed_doubles(std::uint32_t field, std::span<const double> values) {
    if (values.empty()) return;
    tag(field, WireType::len);
    varint(values.size() * 8);
    for (double v : values) raw_fixed64(std::bit_cast<std::uint64_t>(v));
  }

  std::size_t size() const noexcept { return out_.size(); }  ///< bytes in the buffer so far

 private:
  std::vector<std::byte>& out_;
};

/// Reads protobuf fields from untrusted bytes: a loop of tag() and then the read of that tag's
/// wire type (or skip()). Embedded messages and packed fields are read by a Reader over the
/// span bytes() returns, so nothing can reach past its parent.
class Reader {
 public:
  /// Reads `in` from the start.
  explicit Reader(std::span<const std::byte> in) noexcept : in_(in) {}

  bool at_end() const noexcept { return at_ == in_.size(); }  ///< true once every byte is read
  std::size_t offset() const noexcept { return at_; }  ///< bytes read so far
  std::size_t remaining() const noexcept { return in_.size() - at_; }  ///< bytes left
  std::span<const std::byte> peek_rest() const noexcept { return in_.subspan(at_); }  ///< the bytes left, not consumed

  /// A varint: errc::corrupt_frame when truncated, longer than 10 bytes, or over 64 bits.
  std::uint64_t varint(const char* what) {
    std::uint64_t v = 0;
    for (std::size_t i = 0;; ++i) {
      if (i == max_varint_bytes) bad("varint longer than 10 bytes", what, at_ - i);
      if (at_ == in_.size()) bad("truncated varint", what, at_ - i);
      const auto b = std::to_integer<std::uint64_t>(in_[at_++]);
      if (i == max_varint_bytes - 1 && (b & 0x7E) != 0) bad("varint over 64 bits", what, at_ - 1 - i);
      v |= (b & 0x7F) << (7 * i);
      if ((b & 0x80) == 0) return v;
    }
  }

  /// The next tag: errc::corrupt_frame for field number 0 or over 2^29 - 1, the group wire types
  /// (3, 4) and the undefined ones (6, 7).
  Tag tag() {
    const std::size_t at = at_;
    const std::uint64_t v = varint("tag");
    if (v > 0xFFFFFFFFu) bad("tag over 32 bits", "tag", at);
    const auto type = static_cast<unsigned>(v & 7);
    const auto field = static_cast<std::uint32_t>(v >> 3);
    if (field == 0) bad("field number 0", "tag", at);
    if (field > max_field_number) bad("field number over 2^29 - 1", "tag", at);
    if (type == 3 || type == 4) bad("group wire type " + std::to_string(type) + " (not supported) of field " + std::to_string(field), "tag", at);
    if (type == 6 || type == 7) bad("undefined wire type " + std::to_string(type) + " of field " + std::to_string(field), "tag", at);
    return Tag{field, static_cast<WireType>(type)};
  }

  /// 4 bytes little-endian; errc::corrupt_frame past the end.
  std::uint32_t fixed32(const char* what) {
    const std::byte* p = take(4, what);
    std::uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | std::to_integer<std::uint32_t>(p[i]);
    return v;
  }
  /// 8 bytes little-endian; errc::corrupt_frame past the end.
  std::uint64_t fixed64(const char* what) {
    const std::byte* p = take(8, what);
    std::uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | std::to_integer<std::uint64_t>(p[i]);
    return v;
  }
  /// A length-delimited value, as a view of the input (no copy): errc::corrupt_frame when the
  /// length is truncated or runs past the bytes that remain.
  std::span<const std::byte> bytes(const char* what) {
    const std::size_t at = at_;
    const std::uint64_t n = varint(what);
    if (n > remaining())
      bad("length " + std::to_string(n) + " past the end (" + std::to_string(remaining()) + " bytes left)", what, at);
    return {take(static_cast<std::size_t>(n), what), static_cast<std::size_t>(n)};
  }

  /// Skips the value of a field whose tag was just read (an unknown field).
  void skip(WireType type) {
    switch (type) {
      case WireType::varint: (void)varint("unknown field"); return;
      case WireType::fixed64: (void)take(8, "unknown field"); return;
      case WireType::len: (void)bytes("unknown field"); return;
      case WireType::fixed32: (void)take(4, "unknown field"); return;
    }
    bad("unknown wire type", "unknown field", at_);  // tag() never returns one
  }

  /// Refuses a known field sent with another wire type than its declared one.
  static void expect(Tag t, WireType want, const char* field) {
    if (t.type != want)
      fail(errc::corrupt_frame, std::string("protobuf: field ") + field + " (" + std::to_string(t.field) + ") has wire type " +
                                    std::to_string(static_cast<unsigned>(t.type)) + ", expected " +
                                    std::to_string(static_cast<unsigned>(want)));
  }

 private:
  const std::byte* take(std::size_t n, const char* what) {
    if (n > remaining())
      bad("truncated (" + std::to_string(n) + " bytes needed, " + std::to_string(remaining()) + " left)", what, at_);
    const std::byte* p = in_.data() + at_;
    at_ += n;
    return p;
  }
  [[noreturn]] static void bad(const std::string& why, const char* what, std::size_t at) {
    fail(errc::corrupt_frame, "protobuf: " + why + " in " + what + " at offset " + std::to_string(at));
  }

  std::span<const std::byte> in_;
  std::size_t at_ = 0;
};

/// Reads one occurrence of a repeated scalar field into `out`, whichever way it was sent: packed
/// (one LEN field holding the elements back to back) or not (one element with the element's own
/// wire type); protobuf parsers must accept both. `read_one` reads one element from a Reader.
/// Each element takes one unit of `budget` (errc::too_large when it runs out, before anything
/// is appended); another wire type is errc::corrupt_frame. With `memory`, the bytes `out` may
/// grow by are charged to it too, before they are allocated: a packed run is reserved exactly,
/// one unpacked element is charged twice its size (the vector's growth).
template <class T, class ReadOne>
void read_repeated(Reader& r, Tag t, WireType element, std::vector<T>& out, std::size_t& budget, const char* field,
                   ReadOne read_one, std::size_t* memory = nullptr) {
  auto spend = [&](std::size_t n, std::size_t bytes_each) {
    if (n > budget)
      fail(errc::too_large, std::string("protobuf: field ") + field + " has more elements than the limit allows");
    if (memory && n > *memory / bytes_each)
      fail(errc::too_large, std::string("protobuf: field ") + field + " would take more memory than the limit allows");
    budget -= n;
    if (memory) *memory -= n * bytes_each;
  };
  if (t.type == WireType::len && element != WireType::len) {
    Reader sub(r.bytes(field));
    std::size_t n = 0;
    if (element == WireType::fixed32 || element == WireType::fixed64) {
      const std::size_t width = element == WireType::fixed32 ? 4 : 8;
      if (sub.remaining() % width != 0)
        fail(errc::corrupt_frame, std::string("protobuf: packed field ") + field + " of " + std::to_string(sub.remaining()) +
                                      " bytes is not a whole number of " + std::to_string(width) + "-byte elements");
      n = sub.remaining() / width;
    } else {
      // Varints: one ends at each byte without its high bit (a truncated last one is refused below).
      const auto rest = sub.peek_rest();
      n = static_cast<std::size_t>(std::count_if(rest.begin(), rest.end(), [](std::byte b) { return (b & std::byte{0x80}) == std::byte{0}; }));
    }
    spend(n, sizeof(T));
    out.reserve(out.size() + n);  // the bytes are there: no allocation on trust
    while (!sub.at_end()) {
      if (out.size() == out.capacity()) spend(1, 2 * sizeof(T));  // a truncated varint's extra: refused when read
      out.push_back(read_one(sub));
    }
    return;
  }
  Reader::expect(t, element, field);
  spend(1, 2 * sizeof(T));
  out.push_back(read_one(r));
}

}  // namespace edgesplit::wire::pb

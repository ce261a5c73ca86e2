// edgesplit/wire/byte_io.hpp - little-endian fields written and read one byte at a time.
//
// The wire format is defined byte by byte (docs/wire-format.md), never as a C++ struct: structs
// have padding, host byte order and alignment, none of which belong on a wire. Writers append to
// a caller's byte vector (its capacity is reused across frames); readers check every field
// against the bytes that are left and throw errc::corrupt_frame on truncation.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "edgesplit/core/error.hpp"

namespace edgesplit::wire {

/// True when `v` fits a u32 field. (A function, so that comparing a 32-bit size_t with
/// UINT32_MAX does not trip -Wtype-limits on 32-bit targets.)
constexpr bool fits_u32(std::uint64_t v) noexcept { return v <= 0xFFFFFFFFu; }

/// Stores `v` at `p`, little-endian.
inline void store_le16(std::byte* p, std::uint16_t v) noexcept {
  p[0] = std::byte(v & 0xFF);
  p[1] = std::byte(v >> 8);
}
/// Stores `v` at `p`, little-endian.
inline void store_le32(std::byte* p, std::uint32_t v) noexcept {
  for (int i = 0; i < 4; ++i) p[i] = std::byte((v >> (8 * i)) & 0xFF);
}
/// Loads a little-endian value from `p`.
inline std::uint16_t load_le16(const std::byte* p) noexcept {
  return static_cast<std::uint16_t>(std::to_integer<unsigned>(p[0]) | (std::to_integer<unsigned>(p[1]) << 8));
}
/// Loads a little-endian value from `p`.
inline std::uint32_t load_le32(const std::byte* p) noexcept {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | std::to_integer<std::uint32_t>(p[i]);
  return v;
}

/// Appends little-endian fields to `out`.
class ByteWriter {
 public:
  /// Appends to `out`, which the writer does not own.
  explicit ByteWriter(std::vector<std::byte>& out) noexcept : out_(out) {}

  /// Appends one byte.
  void u8(std::uint8_t v) { out_.push_back(std::byte(v)); }
  /// Appends one signed byte, two's complement.
  void i8(std::int8_t v) { u8(static_cast<std::uint8_t>(v)); }
  /// Appends 2 bytes, little-endian.
  void u16(std::uint16_t v) { store_le16(grow(2), v); }
  /// Appends 4 bytes, little-endian.
  void u32(std::uint32_t v) { store_le32(grow(4), v); }
  /// Appends a float as its IEEE bits, little-endian.
  void f32(float v) { u32(std::bit_cast<std::uint32_t>(v)); }
  /// Appends `n` bytes for the caller to fill and returns them (valid until the next append).
  std::span<std::byte> reserve(std::size_t n) { return {grow(n), n}; }
  std::size_t size() const noexcept { return out_.size(); }  ///< bytes in the buffer so far

 private:
  std::byte* grow(std::size_t n) {
    const std::size_t at = out_.size();
    out_.resize(at + n);
    return out_.data() + at;
  }
  std::vector<std::byte>& out_;
};

/// Reads little-endian fields from untrusted bytes. Each read names its field, so a truncated
/// frame is reported as "truncated <field> at offset <n>".
class ByteReader {
 public:
  /// Reads `in` from the start; every read is bounds-checked.
  explicit ByteReader(std::span<const std::byte> in) noexcept : in_(in) {}

  /// One byte; errc::corrupt_frame naming `field` past the end.
  std::uint8_t u8(const char* field) { return std::to_integer<std::uint8_t>(*take(1, field)); }
  /// One signed byte; errc::corrupt_frame past the end.
  std::int8_t i8(const char* field) { return static_cast<std::int8_t>(u8(field)); }
  /// 2 bytes, little-endian; errc::corrupt_frame past the end.
  std::uint16_t u16(const char* field) { return load_le16(take(2, field)); }
  /// 4 bytes, little-endian; errc::corrupt_frame past the end.
  std::uint32_t u32(const char* field) { return load_le32(take(4, field)); }
  /// A float from its IEEE bits; errc::corrupt_frame past the end (the value itself is not checked).
  float f32(const char* field) { return std::bit_cast<float>(u32(field)); }
  /// The next `n` bytes as a view, without copying; errc::corrupt_frame past the end.
  std::span<const std::byte> bytes(std::size_t n, const char* field) { return {take(n, field), n}; }

  std::size_t offset() const noexcept { return at_; }  ///< bytes read so far
  std::size_t remaining() const noexcept { return in_.size() - at_; }  ///< bytes left
  /// Refuses bytes left over after the last field.
  void expect_end(const char* what) const {
    if (at_ != in_.size())
      fail(errc::corrupt_frame, std::string(what) + " has " + std::to_string(in_.size() - at_) + " trailing bytes");
  }

 private:
  const std::byte* take(std::size_t n, const char* field) {
    if (n > in_.size() - at_)
      fail(errc::corrupt_frame, "truncated " + std::string(field) + " at offset " + std::to_string(at_) + " (" +
                                    std::to_string(n) + " bytes needed, " + std::to_string(in_.size() - at_) + " left)");
    const std::byte* p = in_.data() + at_;
    at_ += n;
    return p;
  }
  std::span<const std::byte> in_;
  std::size_t at_ = 0;
};

}  // namespace edgesplit::wire

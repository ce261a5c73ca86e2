// edgesplit/wire/crc32c.hpp - CRC-32C (Castagnoli), the checksum of every frame.
//
// CRC-32C as in iSCSI (RFC 3720), ext4 and SCTP: reflected polynomial 0x82F63B78, initial value
// and final XOR 0xFFFFFFFF; crc32c("123456789") = 0xE3069283. Debian ships no C++ CRC-32C
// library edgesplit could use, so it is here: slicing-by-8 tables built at compile time, and the
// SSE4.2 `crc32` instruction where the compiler targets it (x86-64-v2 and later). Tests check
// both against published vectors and against each other.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#if defined(__SSE4_2__)
#include <nmmintrin.h>
#endif

namespace edgesplit::wire {

namespace detail {

inline constexpr std::uint32_t crc32c_poly = 0x82F63B78u;

// table[0] is the classic byte-at-a-time table; table[k][b] is the CRC of byte b followed by k
// zero bytes, which lets eight bytes be folded in with eight independent lookups.
constexpr std::array<std::array<std::uint32_t, 256>, 8> make_crc32c_tables() {
  std::array<std::array<std::uint32_t, 256>, 8> t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ crc32c_poly : c >> 1;
    t[0][i] = c;
  }
  for (std::size_t k = 1; k < 8; ++k)
    for (std::size_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFF];
  return t;
}

inline constexpr auto crc32c_tables = make_crc32c_tables();

inline std::uint64_t load_le64(const unsigned char* p) noexcept {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace detail

/// CRC-32C of `data`, continuing from `crc` (the result of a previous call over the bytes before;
/// 0 to start): crc32c(b, crc32c(a)) == crc32c(a followed by b). Portable slicing-by-8.
inline std::uint32_t crc32c_portable(std::span<const std::byte> data, std::uint32_t crc = 0) noexcept {
  const auto& t = detail::crc32c_tables;
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  std::size_t n = data.size();
  std::uint32_t c = ~crc;
  for (; n >= 8; n -= 8, p += 8) {
    const std::uint64_t v = detail::load_le64(p) ^ c;
    c = t[7][v & 0xFF] ^ t[6][(v >> 8) & 0xFF] ^ t[5][(v >> 16) & 0xFF] ^ t[4][(v >> 24) & 0xFF] ^
        t[3][(v >> 32) & 0xFF] ^ t[2][(v >> 40) & 0xFF] ^ t[1][(v >> 48) & 0xFF] ^ t[0][v >> 56];
  }
  for (; n > 0; --n, ++p) c = t[0][(c ^ *p) & 0xFF] ^ (c >> 8);
  return ~c;
}

#if defined(__SSE4_2__)
/// The same CRC with the SSE4.2 instruction (available when the compiler targets SSE4.2).
inline std::uint32_t crc32c_hardware(std::span<const std::byte> data, std::uint32_t crc = 0) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  std::size_t n = data.size();
  std::uint64_t c = ~crc;
  for (; n >= 8; n -= 8, p += 8) {
    std::uint64_t v;
    std::memcpy(&v, p, 8);  // x86 is little-endian, as the CRC's byte order wants
    c = _mm_crc32_u64(c, v);
  }
  auto c32 = static_cast<std::uint32_t>(c);
  for (; n > 0; --n, ++p) c32 = _mm_crc32_u8(c32, *p);
  return ~c32;
}
#endif

/// CRC-32C with the fastest implementation compiled in.
inline std::uint32_t crc32c(std::span<const std::byte> data, std::uint32_t crc = 0) noexcept {
#if defined(__SSE4_2__)
  return crc32c_hardware(data, crc);
#else
  return crc32c_portable(data, crc);
#endif
}

}  // namespace edgesplit::wire

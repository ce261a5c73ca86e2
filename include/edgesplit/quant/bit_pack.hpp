// edgesplit/quant/bit_pack.hpp - sub-byte codes packed into bytes, and back.
//
// Bit order (part of the wire format): with k = 8 / bits codes per byte, code i lives in byte
// i / k at bit offset (i % k) * bits, least significant bits first, as a two's complement field
// of `bits` bits. Example, 4 bits: codes {1, -2} -> byte 0xE1; 2 bits: codes {1, -2, 0, -1} ->
// byte 0b11'00'10'01 = 0xC9. Bits of the last byte past the last code are zero (readers reject
// other values, so every tensor has exactly one encoding). 8-bit codes are their own bytes.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "edgesplit/core/error.hpp"
#include "edgesplit/quant/quant_params.hpp"

namespace edgesplit {

namespace detail {

// The four sign-extended 2-bit codes of every byte value, in code order.
constexpr std::array<std::array<std::int8_t, 4>, 256> make_unpack2_table() {
  std::array<std::array<std::int8_t, 4>, 256> t{};
  for (std::size_t b = 0; b < 256; ++b)
    for (std::size_t i = 0; i < 4; ++i) {
      const int field = static_cast<int>(b >> (2 * i)) & 3;
      t[b][i] = static_cast<std::int8_t>(field >= 2 ? field - 4 : field);
    }
  return t;
}
inline constexpr auto unpack2_table = make_unpack2_table();

// Codes of `bytes` whole bytes of 4-bit fields. Kept out of line: inlined into its callers,
// GCC 12 stops vectorizing the loop, which then runs 5-10x slower.
[[gnu::noinline]] inline void unpack4(const std::uint8_t* p, std::int8_t* c, std::size_t bytes) noexcept {
  for (std::size_t b = 0; b < bytes; ++b) {
    const unsigned x = p[b];
    const unsigned lo = (((x & 0xFu) ^ 8u) - 8u) & 0xFFu, hi = (((x >> 4) ^ 8u) - 8u) & 0xFFu;
    const auto pair = static_cast<std::uint16_t>(std::endian::native == std::endian::little ? lo | hi << 8 : hi | lo << 8);
    std::memcpy(c + 2 * b, &pair, 2);
  }
}

}  // namespace detail

/// Packs `codes` (each within the `bits`-bit code range) into `out`, which must hold exactly
/// packed_bytes(codes.size(), bits) bytes.
inline void pack_codes(std::span<const std::int8_t> codes, int bits, std::span<std::byte> out) {
  const std::size_t want = packed_bytes(codes.size(), bits);
  if (out.size() != want)
    fail(errc::invalid_argument, "pack_codes needs " + std::to_string(want) + " bytes, got " + std::to_string(out.size()));
  const std::size_t n = codes.size();
  if (n == 0) return;
  const std::int8_t* c = codes.data();
  auto* o = reinterpret_cast<std::uint8_t*>(out.data());
  if (bits == 8) {
    std::memcpy(o, c, n);
    return;
  }
  const auto k = static_cast<std::size_t>(8 / bits);
  const unsigned mask = (1u << bits) - 1;
  const std::size_t full = n / k;
  if (bits == 4) {
    for (std::size_t b = 0; b < full; ++b)
      o[b] = static_cast<std::uint8_t>((c[2 * b] & 0xF) | ((c[2 * b + 1] & 0xF) << 4));
  } else {
    for (std::size_t b = 0; b < full; ++b)
      o[b] = static_cast<std::uint8_t>((c[4 * b] & 3) | ((c[4 * b + 1] & 3) << 2) | ((c[4 * b + 2] & 3) << 4) |
                                       ((c[4 * b + 3] & 3) << 6));
  }
  if (full * k < n) {
    unsigned last = 0;
    for (std::size_t i = full * k; i < n; ++i) last |= (static_cast<unsigned>(c[i]) & mask) << ((i - full * k) * bits);
    o[full] = static_cast<std::uint8_t>(last);
  }
}

/// True when the bits of the last byte past code `count - 1` are all zero (the canonical form).
inline bool packing_padding_is_zero(std::span<const std::byte> packed, std::size_t count, int bits) noexcept {
  const auto k = static_cast<std::size_t>(8 / bits);
  const std::size_t used = count % k;
  if (used == 0 || packed.empty()) return true;
  const auto last = static_cast<unsigned>(packed.back());
  return (last >> (used * static_cast<std::size_t>(bits))) == 0;
}

/// Unpacks `codes.size()` codes from `in` (exactly packed_bytes(codes.size(), bits) bytes),
/// sign-extending each field. Padding is not checked here: see packing_padding_is_zero.
inline void unpack_codes(std::span<const std::byte> in, int bits, std::span<std::int8_t> codes) {
  const std::size_t n = codes.size();
  const std::size_t want = packed_bytes(n, bits);
  if (in.size() != want)
    fail(errc::invalid_argument, "unpack_codes needs " + std::to_string(want) + " bytes, got " + std::to_string(in.size()));
  if (n == 0) return;
  const auto* p = reinterpret_cast<const std::uint8_t*>(in.data());
  std::int8_t* c = codes.data();
  if (bits == 8) {
    std::memcpy(c, p, n);
    return;
  }
  const auto k = static_cast<std::size_t>(8 / bits);
  const std::size_t full = n / k;
  // A field is sign-extended by shifting it to the top of a byte, then arithmetic-shifting down.
  // Each byte's codes are written with one store (a loop storing c[2b] and c[2b+1] separately
  // does not vectorize, and is 3-5x slower here). A nibble f sign-extends as (f ^ 8) - 8.
  if (bits == 4) {
    detail::unpack4(p, c, full);
  } else {
    for (std::size_t b = 0; b < full; ++b) std::memcpy(c + 4 * b, detail::unpack2_table[p[b]].data(), 4);
  }
  for (std::size_t i = full * k; i < n; ++i) {
    const unsigned shift = static_cast<unsigned>(8 - bits - (i - full * k) * bits);
    c[i] = static_cast<std::int8_t>(static_cast<std::int8_t>(p[full] << shift) >> (8 - bits));
  }
}

}  // namespace edgesplit

// edgesplit/wire/zstd.hpp - the optional zstd lossless stage of the tensor codec.
//
// Built in when the edgesplit target has EDGESPLIT_HAS_ZSTD=1 (CMake option EDGESPLIT_WITH_ZSTD,
// on when the zstd package is found; it also links libzstd). Without it, ZstdStage exists but
// every call throws errc::unsupported, so frames that use zstd are refused cleanly.
//
// Decompression never trusts the frame: the zstd frame must record its content size, that size
// must be exactly the size the (already validated) tensor header implies and within the cap, and
// the zstd frame must span the data exactly. All of this is checked from the zstd frame header
// before any byte is decompressed; the output buffer is the caller's, already sized. A zstd bomb
// (a small frame that claims or produces gigabytes) is refused without allocating.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>

#include "edgesplit/core/error.hpp"

#ifndef EDGESPLIT_HAS_ZSTD
#define EDGESPLIT_HAS_ZSTD 0
#endif

#if EDGESPLIT_HAS_ZSTD
#include <zstd.h>
#endif

namespace edgesplit::wire {

/// True when edgesplit was built with the zstd stage.
inline constexpr bool has_zstd = EDGESPLIT_HAS_ZSTD != 0;

/// One compression and one decompression context, created on first use and reused, so a stream
/// of frames allocates nothing in steady state. Move-only; not thread-safe (one per codec).
class ZstdStage {
 public:
  /// Throws errc::unsupported without zstd, errc::invalid_argument for a level zstd lacks.
  static void check_level(int level) {
#if EDGESPLIT_HAS_ZSTD
    if (level < ZSTD_minCLevel() || level > ZSTD_maxCLevel())
      fail(errc::invalid_argument, "zstd level " + std::to_string(level) + " outside " +
                                       std::to_string(ZSTD_minCLevel()) + ".." + std::to_string(ZSTD_maxCLevel()));
#else
    (void)level;
    unavailable();
#endif
  }

  /// Largest compressed size of `n` input bytes.
  static std::size_t bound(std::size_t n) {
#if EDGESPLIT_HAS_ZSTD
    return ZSTD_compressBound(n);
#else
    (void)n;
    unavailable();
#endif
  }

  /// Compresses `src` into `dst` (at least bound(src.size()) bytes) as one zstd frame that
  /// records its content size; returns the bytes written.
  std::size_t compress(std::span<const std::byte> src, std::span<std::byte> dst, int level) {
#if EDGESPLIT_HAS_ZSTD
    if (!cctx_) cctx_.reset(ZSTD_createCCtx());
    if (!cctx_) fail(errc::io_error, "ZSTD_createCCtx failed");
    const std::size_t n = ZSTD_compressCCtx(cctx_.get(), dst.data(), dst.size(), src.data(), src.size(), level);
    if (ZSTD_isError(n)) fail(errc::invalid_argument, std::string("zstd compression failed: ") + ZSTD_getErrorName(n));
    return n;
#else
    (void)src, (void)dst, (void)level;
    unavailable();
#endif
  }

  /// Checks, from its header alone, that `src` is exactly one zstd frame recording a content
  /// size of exactly `expected` bytes. errc::too_large when the recorded size passes `cap`,
  /// errc::corrupt_frame for anything else wrong. Call it before sizing the output buffer.
  static void check_frame(std::span<const std::byte> src, std::size_t expected, std::size_t cap) {
#if EDGESPLIT_HAS_ZSTD
    const unsigned long long size = ZSTD_getFrameContentSize(src.data(), src.size());
    if (size == ZSTD_CONTENTSIZE_ERROR) fail(errc::corrupt_frame, "tensor data is not a zstd frame");
    if (size == ZSTD_CONTENTSIZE_UNKNOWN) fail(errc::corrupt_frame, "zstd frame does not record its content size");
    if (size > cap)
      fail(errc::too_large, "zstd frame claims " + std::to_string(size) + " bytes, over the cap of " + std::to_string(cap));
    if (size != expected)
      fail(errc::corrupt_frame, "zstd frame holds " + std::to_string(size) + " bytes, the tensor needs " +
                                    std::to_string(expected));
    const std::size_t frame = ZSTD_findFrameCompressedSize(src.data(), src.size());
    if (ZSTD_isError(frame) || frame != src.size())
      fail(errc::corrupt_frame, "tensor data is not exactly one zstd frame");
#else
    (void)src, (void)expected, (void)cap;
    unavailable();
#endif
  }

  /// Decompresses `src` into `dst` after check_frame(src, dst.size(), cap) passes.
  void decompress_exact(std::span<const std::byte> src, std::span<std::byte> dst, std::size_t cap) {
#if EDGESPLIT_HAS_ZSTD
    check_frame(src, dst.size(), cap);
    if (!dctx_) dctx_.reset(ZSTD_createDCtx());
    if (!dctx_) fail(errc::io_error, "ZSTD_createDCtx failed");
    const std::size_t n = ZSTD_decompressDCtx(dctx_.get(), dst.data(), dst.size(), src.data(), src.size());
    if (ZSTD_isError(n)) fail(errc::corrupt_frame, std::string("zstd: ") + ZSTD_getErrorName(n));
    if (n != dst.size()) fail(errc::corrupt_frame, "zstd frame decompressed to fewer bytes than it records");
#else
    (void)src, (void)dst, (void)cap;
    unavailable();
#endif
  }

 private:
  [[noreturn]] static void unavailable() {
    fail(errc::unsupported, "zstd lossless stage: edgesplit was built without zstd (EDGESPLIT_WITH_ZSTD)");
  }
#if EDGESPLIT_HAS_ZSTD
  struct FreeCCtx {
    void operator()(ZSTD_CCtx* c) const noexcept { ZSTD_freeCCtx(c); }
  };
  struct FreeDCtx {
    void operator()(ZSTD_DCtx* d) const noexcept { ZSTD_freeDCtx(d); }
  };
  std::unique_ptr<ZSTD_CCtx, FreeCCtx> cctx_;
  std::unique_ptr<ZSTD_DCtx, FreeDCtx> dctx_;
#endif
};

}  // namespace edgesplit::wire

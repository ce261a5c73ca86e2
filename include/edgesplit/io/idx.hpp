// edgesplit/io/idx.hpp - IDX data sets (MNIST, Fashion-MNIST), gzip-compressed or not (needs zlib).
//
// IDX (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code, the rank; then one
// 32-bit big-endian size per dimension; then the elements, big-endian, row-major. edgesplit reads
// unsigned-byte arrays (type 0x08: the images and labels of MNIST and Fashion-MNIST).
//
// The reader treats a file like network input: the magic, type and rank are checked, the sizes
// multiplied with overflow checks and held to a limit before anything is allocated (a small gzip
// file cannot make the reader allocate what its header claims), and the data must be exactly as
// long as the header says: short files, trailing bytes and damaged gzip streams are refused.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <zlib.h>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/shape.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/nn/dataset.hpp"

namespace edgesplit {

/// Bounds on an IDX file read from outside.
struct IdxLimits {
  std::size_t max_bytes = std::size_t{1} << 30;  ///< of element data, after decompression
};

/// Where Debian's dataset-fashion-mnist package puts the four files.
inline const std::filesystem::path fashion_mnist_dir{"/usr/share/datasets/fashion-mnist"};

namespace detail {

/// Reads IDX from any source with `read(void* dst, std::size_t n) -> std::size_t` (bytes read,
/// fewer only at the end). The header is read and checked before the data is allocated.
template <class Read>
Tensor<std::uint8_t> read_idx_from(Read&& read, const IdxLimits& limits, const std::string& what) {
  std::uint8_t magic[4];
  if (read(magic, 4) != 4) fail(errc::corrupt_frame, what + ": truncated IDX header");
  if (magic[0] != 0 || magic[1] != 0) fail(errc::corrupt_frame, what + ": not an IDX file (bad magic)");
  const std::uint8_t type = magic[2], rank = magic[3];
  if (type == 0x09 || type == 0x0B || type == 0x0C || type == 0x0D || type == 0x0E)
    fail(errc::unsupported, what + ": IDX element type " + std::to_string(type) + " (edgesplit reads unsigned bytes, 0x08)");
  if (type != 0x08) fail(errc::corrupt_frame, what + ": unknown IDX element type " + std::to_string(type));
  if (rank == 0) fail(errc::corrupt_frame, what + ": IDX rank 0");
  if (rank > Shape::max_rank) fail(errc::unsupported, what + ": IDX rank " + std::to_string(rank) + " over " + std::to_string(Shape::max_rank));
  std::vector<std::size_t> dims(rank);
  for (auto& d : dims) {
    std::uint8_t b[4];
    if (read(b, 4) != 4) fail(errc::corrupt_frame, what + ": truncated IDX dimensions");
    d = (std::size_t{b[0]} << 24) | (std::size_t{b[1]} << 16) | (std::size_t{b[2]} << 8) | b[3];
  }
  const Shape shape{std::span<const std::size_t>(dims)};  // errc::too_large on overflow
  if (shape.count() > limits.max_bytes)
    fail(errc::too_large, what + ": IDX shape " + shape.str() + " is over the " + std::to_string(limits.max_bytes) + "-byte limit");
  Tensor<std::uint8_t> t(shape);
  if (read(t.data(), t.size()) != t.size()) fail(errc::corrupt_frame, what + ": IDX data shorter than its shape " + shape.str());
  std::uint8_t extra;
  if (read(&extra, 1) != 0) fail(errc::corrupt_frame, what + ": trailing bytes after the IDX data");
  return t;
}

/// A zlib gzFile, closed on every path out.
class GzFile {
 public:
  explicit GzFile(const std::filesystem::path& path) : path_(path.string()), f_(gzopen(path_.c_str(), "rb")) {
    if (!f_) fail(errc::io_error, "cannot open " + path_);
  }
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;
  ~GzFile() { gzclose(f_); }

  /// Reads up to n bytes; fewer only at the end of the stream. A damaged stream (bad CRC,
  /// truncated, not deflate) is errc::corrupt_frame, a read failure errc::io_error.
  std::size_t operator()(void* dst, std::size_t n) {
    std::size_t got = 0;
    while (got < n) {
      const auto chunk = static_cast<unsigned>(std::min<std::size_t>(n - got, 1u << 30));
      const int r = gzread(f_, static_cast<char*>(dst) + got, chunk);
      if (r < 0 || error()) {
        int code = Z_OK;
        const char* msg = gzerror(f_, &code);
        fail(code == Z_ERRNO ? errc::io_error : errc::corrupt_frame, path_ + ": " + (msg ? msg : "read error"));
      }
      if (r == 0) break;
      got += static_cast<std::size_t>(r);
    }
    return got;
  }

 private:
  bool error() {
    int code = Z_OK;
    gzerror(f_, &code);
    return code != Z_OK;
  }
  std::string path_;
  gzFile f_;
};

}  // namespace detail

/// Reads an unsigned-byte IDX file, gzip-compressed or plain (zlib reads both). errc::io_error
/// when it cannot be opened; errc::corrupt_frame for a malformed file or damaged gzip stream;
/// errc::too_large past `limits`; errc::unsupported for other element types or rank > 8.
inline Tensor<std::uint8_t> read_idx(const std::filesystem::path& path, const IdxLimits& limits = {}) {
  detail::GzFile f(path);
  return detail::read_idx_from(f, limits, path.string());
}

/// Parses uncompressed IDX bytes held in memory, with the same checks as `read_idx`.
inline Tensor<std::uint8_t> parse_idx(std::span<const std::byte> bytes, const IdxLimits& limits = {}) {
  std::size_t at = 0;
  auto read = [&](void* dst, std::size_t n) {
    const std::size_t k = std::min(n, bytes.size() - at);
    if (k) std::memcpy(dst, bytes.data() + at, k);
    at += k;
    return k;
  };
  return detail::read_idx_from(read, limits, "IDX bytes");
}

/// A classification data set from an images file ({N, ...} bytes) and a labels file ({N} bytes,
/// each < `classes`): inputs flattened to {N, features} and scaled by `scale` (1/255 maps pixels
/// to [0, 1]). errc::corrupt_frame when the two files disagree or a label is out of range.
template <Real T>
Dataset<T> load_idx_dataset(const std::filesystem::path& images, const std::filesystem::path& labels,
                            std::size_t classes = 10, double scale = 1.0 / 255, const IdxLimits& limits = {}) {
  const auto x = read_idx(images, limits);
  const auto y = read_idx(labels, limits);
  if (x.shape().rank() < 2) fail(errc::corrupt_frame, images.string() + ": images need rank >= 2, got " + x.shape().str());
  if (y.shape().rank() != 1 || y.shape()[0] != x.shape().batch())
    fail(errc::corrupt_frame, labels.string() + ": " + y.shape().str() + " labels for images " + x.shape().str());
  Dataset<T> d;
  d.classes = classes;
  d.inputs = Tensor<T>(Shape{x.shape().batch(), x.shape().features()});
  for (std::size_t i = 0; i < x.size(); ++i) d.inputs[i] = static_cast<T>(x[i] * scale);
  d.labels.resize(y.size());
  for (std::size_t i = 0; i < y.size(); ++i) {
    if (y[i] >= classes) fail(errc::corrupt_frame, labels.string() + ": label " + std::to_string(y[i]) + " >= " + std::to_string(classes));
    d.labels[i] = y[i];
  }
  return d;
}

/// Fashion-MNIST's training (60,000) and test (10,000) sets of 28x28 images as {N, 784} in [0, 1].
template <Real T>
std::pair<Dataset<T>, Dataset<T>> load_fashion_mnist(const std::filesystem::path& dir = fashion_mnist_dir) {
  return {load_idx_dataset<T>(dir / "train-images-idx3-ubyte.gz", dir / "train-labels-idx1-ubyte.gz"),
          load_idx_dataset<T>(dir / "t10k-images-idx3-ubyte.gz", dir / "t10k-labels-idx1-ubyte.gz")};
}

/// True when the four Fashion-MNIST files are present in `dir`.
inline bool fashion_mnist_available(const std::filesystem::path& dir = fashion_mnist_dir) {
  std::error_code ec;
  for (const char* f : {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                        "t10k-labels-idx1-ubyte.gz"})
    if (!std::filesystem::is_regular_file(dir / f, ec)) return false;
  return true;
}

}  // namespace edgesplit

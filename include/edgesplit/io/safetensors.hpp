// edgesplit/io/safetensors.hpp - model weights as safetensors files (needs nlohmann-json).
//
// Format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length N,
// N bytes of JSON, then the raw little-endian tensor data. The JSON maps each tensor name to
// {"dtype": "F32", "shape": [512, 784], "data_offsets": [begin, end]} (offsets relative to the
// data section) and may hold "__metadata__", a map of strings to strings.
//
// What edgesplit writes (format version 1, docs/training.md has the full description):
// - one tensor per parameter and buffer, named as PyTorch names an nn.Sequential's state_dict:
//   "<layer index>.weight" {out, in} and "<layer index>.bias" {out} for Dense, "<i>.mean" and
//   "<i>.std" for a Standardizer, "<i>.weight", "<i>.bias", "<i>.running_mean" and
//   "<i>.running_var" for a BatchNorm2D; in the model's order, contiguous, no gaps;
// - "__metadata__": {"format": "edgesplit.sequential", "format_version": "1",
//   "architecture": "<JSON array of layer specs>", plus any caller-supplied strings}.
// The header is padded with spaces to a multiple of 8 bytes so the data section is aligned.
//
// Reading treats the file as input from outside: sizes are checked against the file's real
// size and the limits before anything is allocated; the JSON's nesting is bounded; dtypes, shapes
// and offsets are validated (in range, sizes equal to shape x dtype, no overlap, no holes);
// duplicate names are refused. Any violation is an edgesplit::error, never a crash.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "edgesplit/core/dtype.hpp"
#include "edgesplit/core/error.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/nn/graph.hpp"
#include "edgesplit/nn/layer_factory.hpp"
#include "edgesplit/nn/merge.hpp"
#include "edgesplit/nn/sequential.hpp"
#include "edgesplit/nn/weights.hpp"

namespace edgesplit {

/// The version of edgesplit's safetensors layout this code writes and reads.
inline constexpr int safetensors_format_version = 1;

/// Bounds on a safetensors file read from outside.
struct SafetensorsLimits {
  std::uint64_t max_file_bytes = std::uint64_t{4} << 30;  ///< 4 GiB
  std::uint64_t max_header_bytes = 100u << 20;            ///< 100 MB, the reference implementation's cap
  std::size_t max_tensors = 1u << 16;  ///< most tensors in a file
  std::size_t max_layers = 4096;  ///< most layers an architecture may describe
};

/// One tensor's entry in a validated header.
struct SafetensorsEntry {
  std::string name;  ///< tensor name, e.g. "1.weight"
  dtype type;  ///< element type
  Shape shape;  ///< dimensions, rank 1..8
  /// Byte range [begin, end) in the data section.
  std::size_t begin = 0, end = 0;  ///< byte range in the data section
};

namespace detail {

/// safetensors dtype names edgesplit reads and writes.
inline std::string_view safetensors_dtype_name(dtype t) {
  switch (t) {
    case dtype::f32: return "F32";
    case dtype::f64: return "F64";
    case dtype::i8: return "I8";
    case dtype::u8: return "U8";
    case dtype::i32: return "I32";
  }
  return "?";
}

inline dtype safetensors_dtype(const std::string& s) {
  for (dtype t : {dtype::f32, dtype::f64, dtype::i8, dtype::u8, dtype::i32})
    if (s == safetensors_dtype_name(t)) return t;
  for (const char* known : {"F16", "BF16", "F8_E4M3", "F8_E5M2", "I16", "I64", "U16", "U32", "U64", "BOOL"})
    if (s == known) fail(errc::unsupported, "safetensors dtype " + s + " is not supported");
  fail(errc::corrupt_frame, "safetensors: unknown dtype '" + s.substr(0, 32) + "'");
}

/// Copies `count` elements of `bytes` between little-endian storage and host order.
inline void copy_little_endian(const std::byte* from, std::byte* to, std::size_t count, std::size_t bytes) {
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(to, from, count * bytes);
  } else {
    for (std::size_t i = 0; i < count; ++i)
      for (std::size_t b = 0; b < bytes; ++b) to[i * bytes + b] = from[i * bytes + bytes - 1 - b];
  }
}

/// Parses JSON from outside: objects and arrays nested at most `max_depth` deep (the parser
/// itself is iterative, but a shallow bound keeps every later walk cheap), no duplicate keys in
/// the top-level object. errc::corrupt_frame otherwise.
inline nlohmann::json parse_bounded_json(std::string_view text, int max_depth, const char* what) {
  std::set<std::string> keys;
  auto cb = [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if ((ev == E::object_start || ev == E::array_start) && depth >= max_depth)
      fail(errc::corrupt_frame, std::string(what) + ": JSON nested too deeply");
    if (ev == E::key && depth == 1 && !keys.insert(parsed.get<std::string>()).second)
      fail(errc::corrupt_frame, std::string(what) + ": duplicate key '" + parsed.get<std::string>().substr(0, 64) + "'");
    return true;
  };
  nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), cb, false);
  if (j.is_discarded()) fail(errc::corrupt_frame, std::string(what) + ": not valid JSON");
  return j;
}

inline std::uint64_t read_u64_le(const std::byte* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<std::uint8_t>(p[i]);
  return v;
}

}  // namespace detail

/// A validated safetensors file in memory: its metadata and tensor table, and the data section.
class SafetensorsFile {
 public:
  /// Validates `bytes` (a whole file). errc::corrupt_frame for malformed content (truncated,
  /// header past the end, bad JSON, offsets out of range, overlapping or leaving holes, sizes
  /// that disagree with shape x dtype), errc::too_large past `limits`, errc::unsupported for a
  /// dtype or rank edgesplit does not handle.
  static SafetensorsFile parse(std::vector<std::byte> bytes, const SafetensorsLimits& limits = {}) {
    if (bytes.size() > limits.max_file_bytes) fail(errc::too_large, "safetensors file over the size limit");
    if (bytes.size() < 8) fail(errc::corrupt_frame, "safetensors: truncated before the header length");
    const std::uint64_t n = detail::read_u64_le(bytes.data());
    if (n > limits.max_header_bytes) fail(errc::too_large, "safetensors header length " + std::to_string(n) + " over the limit");
    if (n > bytes.size() - 8) fail(errc::corrupt_frame, "safetensors header length runs past the end of the file");
    SafetensorsFile f;
    f.data_begin_ = 8 + static_cast<std::size_t>(n);
    f.parse_header(std::string_view(reinterpret_cast<const char*>(bytes.data() + 8), static_cast<std::size_t>(n)),
                   bytes.size() - f.data_begin_, limits);
    f.bytes_ = std::move(bytes);
    return f;
  }

  /// Reads and validates a file; errc::io_error when it cannot be read.
  static SafetensorsFile read(const std::filesystem::path& path, const SafetensorsLimits& limits = {}) {
    std::error_code ec;
    const auto size = std::filesystem::file_size(path, ec);
    if (ec) fail(errc::io_error, "cannot read " + path.string() + ": " + ec.message());
    if (size > limits.max_file_bytes) fail(errc::too_large, path.string() + " is over the size limit");
    std::ifstream in(path, std::ios::binary);
    std::vector<std::byte> bytes(static_cast<std::size_t>(size));
    if (!in || !in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size)))
      fail(errc::io_error, "cannot read " + path.string());
    return parse(std::move(bytes), limits);
  }

  /// The "__metadata__" strings (edgesplit's keys and any extra ones).
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  /// The tensor table, in the order of the data section.
  std::span<const SafetensorsEntry> tensors() const noexcept { return entries_; }
  /// The entry named `name`, or nullptr.
  const SafetensorsEntry* find(const std::string& name) const {
    for (const auto& e : entries_)
      if (e.name == name) return &e;
    return nullptr;
  }

  /// A copy of tensor `name` as T. F32 and F64 convert to each other; any other dtype must be
  /// T's own (errc::unsupported). errc::invalid_argument when there is no such tensor.
  template <Element T>
  Tensor<T> tensor(const std::string& name) const {
    const SafetensorsEntry* e = find(name);
    if (!e) fail(errc::invalid_argument, "safetensors: no tensor named '" + name + "'");
    Tensor<T> t(e->shape);
    const std::byte* src = bytes_.data() + data_begin_ + e->begin;
    if (e->type == dtype_of<T>()) {
      detail::copy_little_endian(src, reinterpret_cast<std::byte*>(t.data()), t.size(), sizeof(T));
    } else if constexpr (Real<T>) {
      if (e->type == dtype::f32) convert<float>(src, t);
      else if (e->type == dtype::f64) convert<double>(src, t);
      else fail(errc::unsupported, "safetensors: tensor '" + name + "' is " + std::string(to_string(e->type)));
    } else {
      fail(errc::unsupported, "safetensors: tensor '" + name + "' is " + std::string(to_string(e->type)));
    }
    return t;
  }

 private:
  template <class From, class T>
  static void convert(const std::byte* src, Tensor<T>& t) {
    for (std::size_t i = 0; i < t.size(); ++i) {
      From v;
      detail::copy_little_endian(src + i * sizeof(From), reinterpret_cast<std::byte*>(&v), 1, sizeof(From));
      t[i] = static_cast<T>(v);
    }
  }

  void parse_header(std::string_view text, std::size_t data_size, const SafetensorsLimits& limits) {
    // Depth: the root object (1), a tensor entry or __metadata__ (2), shape/data_offsets (3).
    const nlohmann::json j = detail::parse_bounded_json(text, 3, "safetensors header");
    if (!j.is_object()) fail(errc::corrupt_frame, "safetensors header is not a JSON object");
    for (const auto& [key, value] : j.items()) {
      if (key == "__metadata__") {
        if (!value.is_object()) fail(errc::corrupt_frame, "safetensors __metadata__ is not an object");
        for (const auto& [mk, mv] : value.items()) {
          if (!mv.is_string()) fail(errc::corrupt_frame, "safetensors __metadata__ value of '" + mk.substr(0, 64) + "' is not a string");
          metadata_[mk] = mv.get<std::string>();
        }
        continue;
      }
      if (entries_.size() == limits.max_tensors) fail(errc::too_large, "safetensors file has too many tensors");
      entries_.push_back(parse_entry(key, value, data_size));
    }
    // The data section must be covered exactly: sorted by offset, each tensor starts where the
    // previous one ended (no overlap, no hole), the last ends at the end of the file.
    std::sort(entries_.begin(), entries_.end(),
              [](const auto& a, const auto& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
    std::size_t at = 0;
    for (const auto& e : entries_) {
      if (e.begin != at)
        fail(errc::corrupt_frame, "safetensors tensor '" + e.name.substr(0, 64) +
                                      (e.begin < at ? "' overlaps the previous one" : "' leaves a hole before it"));
      at = e.end;
    }
    if (at != data_size) fail(errc::corrupt_frame, "safetensors data section has bytes no tensor describes");
  }

  static std::size_t unsigned_value(const nlohmann::json& v, const std::string& name, const char* what) {
    if (!v.is_number_unsigned()) fail(errc::corrupt_frame, "safetensors tensor '" + name + "': " + what + " is not an unsigned integer");
    const auto u = v.get<std::uint64_t>();
    if (u > std::numeric_limits<std::size_t>::max()) fail(errc::too_large, "safetensors tensor '" + name + "': " + what + " too large");
    return static_cast<std::size_t>(u);
  }

  static SafetensorsEntry parse_entry(const std::string& key, const nlohmann::json& v, std::size_t data_size) {
    const std::string name = key.substr(0, 256);
    if (key.empty() || key.size() > 256) fail(errc::corrupt_frame, "safetensors tensor name empty or longer than 256 bytes");
    if (!v.is_object() || v.size() != 3 || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      fail(errc::corrupt_frame, "safetensors tensor '" + name + "' needs exactly dtype, shape and data_offsets");
    const auto& dt = v["dtype"];
    const auto& shape = v["shape"];
    const auto& off = v["data_offsets"];
    if (!dt.is_string()) fail(errc::corrupt_frame, "safetensors tensor '" + name + "': dtype is not a string");
    if (!shape.is_array()) fail(errc::corrupt_frame, "safetensors tensor '" + name + "': shape is not an array");
    if (!off.is_array() || off.size() != 2) fail(errc::corrupt_frame, "safetensors tensor '" + name + "': data_offsets is not [begin, end]");
    SafetensorsEntry e;
    e.name = key;
    e.type = detail::safetensors_dtype(dt.get<std::string>());
    if (shape.empty() || shape.size() > Shape::max_rank)
      fail(errc::unsupported, "safetensors tensor '" + name + "' has rank " + std::to_string(shape.size()) + " (edgesplit reads 1.." +
                                  std::to_string(Shape::max_rank) + ")");
    std::vector<std::size_t> dims;
    for (const auto& d : shape) dims.push_back(unsigned_value(d, name, "a dimension"));
    e.shape = Shape(std::span<const std::size_t>(dims));  // errc::too_large when the count overflows
    const std::size_t bytes = Shape::checked_bytes(e.shape.count(), size_of(e.type));
    e.begin = unsigned_value(off[0], name, "an offset");
    e.end = unsigned_value(off[1], name, "an offset");
    if (e.begin > e.end || e.end > data_size)
      fail(errc::corrupt_frame, "safetensors tensor '" + name + "': data_offsets outside the data section");
    if (e.end - e.begin != bytes)
      fail(errc::corrupt_frame, "safetensors tensor '" + name + "': " + std::to_string(e.end - e.begin) + " bytes for shape " +
                                    e.shape.str() + " of " + std::string(to_string(e.type)));
    return e;
  }

  std::vector<std::byte> bytes_;
  std::size_t data_begin_ = 0;
  std::map<std::string, std::string> metadata_;
  std::vector<SafetensorsEntry> entries_;
};

namespace detail {

inline nlohmann::json spec_to_json(const LayerSpec& s) {
  nlohmann::json j{{"type", s.type}};
  for (const auto& [k, v] : s.integers) j[k] = v;
  for (const auto& [k, v] : s.reals) j[k] = v;
  return j;
}

inline LayerSpec spec_from_json(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    fail(errc::corrupt_frame, "architecture: a layer is not an object with a string 'type'");
  LayerSpec s;
  for (const auto& [k, v] : j.items()) {
    if (k == "type") s.type = v.get<std::string>().substr(0, 64);
    else if (v.is_number_unsigned()) s.integers[k] = v.get<std::uint64_t>();
    else if (v.is_number_float()) s.reals[k] = v.get<double>();
    else fail(errc::corrupt_frame, "architecture: attribute '" + k.substr(0, 64) + "' is not a non-negative integer or a number");
  }
  return s;
}

}  // namespace detail

/// The architecture description stored in the file: a JSON array of layer specs,
/// e.g. [{"type":"Dense","in":784,"out":512},{"type":"ReLU"}].
template <Real T>
std::string architecture_json(const Sequential<T>& model) {
  nlohmann::json a = nlohmann::json::array();
  for (std::size_t i = 0; i < model.size(); ++i) a.push_back(detail::spec_to_json(model[i].spec()));
  return a.dump();
}

namespace detail {

// The bytes of a file holding `state` in order, under edgesplit's metadata (`format`, the format
// version and `architecture`) and the caller's `extra` strings, which may not replace them.
template <Real T>
std::vector<std::byte> safetensors_bytes(const std::vector<ConstParameter<T>>& state, const char* format,
                                         const std::string& architecture,
                                         const std::map<std::string, std::string>& extra) {
  nlohmann::json header = nlohmann::json::object();
  nlohmann::json meta = nlohmann::json::object();
  for (const auto& [k, v] : extra) meta[k] = v;
  for (const char* own : {"format", "format_version", "architecture"})
    if (extra.count(own)) fail(errc::invalid_argument, std::string("metadata key '") + own + "' is edgesplit's own");
  meta["format"] = format;
  meta["format_version"] = std::to_string(safetensors_format_version);
  meta["architecture"] = architecture;
  header["__metadata__"] = meta;
  std::size_t offset = 0;
  for (const auto& p : state) {
    const std::size_t bytes = p.value.bytes();
    header[p.name] = {{"dtype", safetensors_dtype_name(dtype_of<T>())},
                      {"shape", std::vector<std::size_t>(p.value.shape().dims().begin(), p.value.shape().dims().end())},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::vector<std::byte> out(8 + text.size() + offset);
  std::uint64_t n = text.size();
  for (int i = 0; i < 8; ++i, n >>= 8) out[static_cast<std::size_t>(i)] = static_cast<std::byte>(n & 0xff);
  std::memcpy(out.data() + 8, text.data(), text.size());
  std::byte* data = out.data() + 8 + text.size();
  for (const auto& p : state) {
    copy_little_endian(reinterpret_cast<const std::byte*>(p.value.data()), data, p.value.size(), sizeof(T));
    data += p.value.bytes();
  }
  return out;
}

// Writes `bytes` to `path` through a temporary file renamed into place.
inline void write_file_atomically(const std::filesystem::path& path, const std::vector<std::byte>& bytes) {
  std::filesystem::path tmp = path;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out || !out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size())) ||
        !out.flush())
      fail(errc::io_error, "cannot write " + tmp.string());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) fail(errc::io_error, "cannot rename " + tmp.string() + " to " + path.string() + ": " + ec.message());
}

// The architecture text of an edgesplit file of `format`, after checking the format and version.
inline const std::string& edgesplit_architecture(const SafetensorsFile& file, const char* format) {
  const auto& meta = file.metadata();
  const auto fmt = meta.find("format"), ver = meta.find("format_version"), arch = meta.find("architecture");
  if (fmt == meta.end() || fmt->second != format)
    fail(errc::version_mismatch, std::string("safetensors file is not an edgesplit ") +
                                     (std::string_view(format) == "edgesplit.graph" ? "graph" : "model") +
                                     " (no __metadata__ format '" + format + "')");
  if (ver == meta.end() || ver->second != std::to_string(safetensors_format_version))
    fail(errc::version_mismatch, "edgesplit safetensors format version '" + (ver == meta.end() ? std::string("none") : ver->second.substr(0, 16)) +
                                     "', this code reads version " + std::to_string(safetensors_format_version));
  if (arch == meta.end()) fail(errc::corrupt_frame, "edgesplit safetensors file without an architecture");
  return arch->second;
}

// Elements of all the file's tensors.
inline std::size_t held_elements(const SafetensorsFile& file) {
  std::size_t held = 0;
  for (const auto& e : file.tensors()) held += e.shape.count();  // cannot overflow: each <= the file's bytes
  return held;
}

// Adds a layer's storage to `storage`, refusing an architecture that claims more weights than
// the file holds (`held` elements) before anything is built.
inline void count_storage(std::size_t held, const LayerSpec& spec, std::size_t& storage) {
  try {
    storage += layer_storage(spec);
  } catch (const error& err) {
    if (err.code() == errc::unsupported) throw;
    fail(err.code() == errc::too_large ? errc::too_large : errc::corrupt_frame, std::string("architecture: ") + err.what());
  }
  if (storage > held) fail(errc::too_large, "architecture describes more weights than the file holds");
}

}  // namespace detail

/// The model as safetensors bytes. `extra` metadata is stored beside edgesplit's own keys
/// ("format", "format_version", "architecture"), which it may not replace.
template <Real T>
std::vector<std::byte> to_safetensors(const Sequential<T>& model, const std::map<std::string, std::string>& extra = {}) {
  return detail::safetensors_bytes(model_state(model), "edgesplit.sequential", architecture_json(model), extra);
}

/// Writes the model to `path` (through a temporary file renamed into place, so a reader never
/// sees half a file). errc::io_error when the file cannot be written.
template <Real T>
void save_safetensors(const std::filesystem::path& path, const Sequential<T>& model,
                      const std::map<std::string, std::string>& extra = {}) {
  detail::write_file_atomically(path, to_safetensors(model, extra));
}

/// Copies the file's tensors into `model`, which must have exactly the file's names and shapes
/// (errc::shape_mismatch otherwise, the model unchanged).
template <Real T>
void load_weights(const SafetensorsFile& file, Sequential<T>& model) {
  Weights<T> w;
  for (const auto& e : file.tensors()) w.add(e.name, file.tensor<T>(e.name));
  w.apply_to(model);
}

/// Rebuilds a model from the file alone: its architecture from the metadata, then its weights.
/// errc::version_mismatch for another format or version; errc::corrupt_frame when the
/// architecture is malformed, does not chain, or does not match the tensors; errc::too_large when
/// it describes more weights than the file holds (checked before any layer is built).
template <Real T>
Sequential<T> model_from_safetensors(const SafetensorsFile& file, const SafetensorsLimits& limits = {}) {
  const nlohmann::json a =
      detail::parse_bounded_json(detail::edgesplit_architecture(file, "edgesplit.sequential"), 2, "architecture");
  if (!a.is_array()) fail(errc::corrupt_frame, "architecture is not a JSON array");
  if (a.size() > limits.max_layers) fail(errc::too_large, "architecture has too many layers");
  std::vector<LayerSpec> specs;
  std::size_t storage = 0;
  const std::size_t held = detail::held_elements(file);
  for (const auto& j : a) {
    specs.push_back(detail::spec_from_json(j));
    detail::count_storage(held, specs.back(), storage);
  }
  Sequential<T> model;
  std::size_t width = 0;  // the input width the chain needs, once a layer fixes it
  // A Conv2D (or BatchNorm2D, or a pooling layer: the tail of a split CNN may start with one)
  // takes NCHW inputs whose H x W the file does not hold: a chain that starts with one is checked
  // by its first forward pass instead.
  bool flat = true;
  try {
    for (const auto& s : specs) {
      model.add(make_layer<T>(s));
      if (!width && (s.type == "Conv2D" || s.type == "BatchNorm2D" || s.type == "MaxPool2D" || s.type == "AvgPool2D" ||
                     s.type == "GlobalAvgPool" || s.type == "GlobalMaxPool"))
        flat = false;
      if (flat && !width && s.type == "Dense") width = detail::spec_size(s, "in");
      if (flat && !width && s.type == "Standardizer") width = detail::spec_size(s, "features");
    }
    if (width) (void)model.output_shape(Shape{1, width});  // the layers must chain
  } catch (const error& err) {
    fail(errc::corrupt_frame, std::string("architecture: ") + err.what());
  }
  try {
    load_weights(file, model);
  } catch (const error& err) {
    if (err.code() != errc::shape_mismatch) throw;
    fail(errc::corrupt_frame, std::string("tensors do not match the architecture: ") + err.what());
  }
  return model;
}

/// Reads `path` and rebuilds the model it holds.
template <Real T>
Sequential<T> load_safetensors(const std::filesystem::path& path, const SafetensorsLimits& limits = {}) {
  return model_from_safetensors<T>(SafetensorsFile::read(path, limits), limits);
}

/// The architecture description of a graph: its inputs with per-sample shapes, its nodes in
/// order (output name, input names, layer or merge spec) and its outputs, e.g.
/// {"inputs":[{"name":"x","shape":[1,28,28]}],
///  "nodes":[{"output":"c1","inputs":["x"],"op":{"type":"Conv2D","in":1,...}}, ...],
///  "outputs":["logits"]}.
template <Real T>
std::string architecture_json(const Graph<T>& g) {
  nlohmann::json a = nlohmann::json::object();
  a["inputs"] = nlohmann::json::array();
  for (const auto& name : g.input_names()) {
    const auto d = g.sample_shape(name).dims();
    a["inputs"].push_back({{"name", name}, {"shape", std::vector<std::size_t>(d.begin(), d.end())}});
  }
  a["nodes"] = nlohmann::json::array();
  for (std::size_t i = 0; i < g.node_count(); ++i)
    a["nodes"].push_back({{"output", g.node_output(i)}, {"inputs", g.node_inputs(i)}, {"op", detail::spec_to_json(g.node_spec(i))}});
  a["outputs"] = g.output_names();
  return a.dump();
}

/// The graph as safetensors bytes: tensors named "<node output>.<parameter>", metadata format
/// "edgesplit.graph". `extra` metadata as for a Sequential.
template <Real T>
std::vector<std::byte> to_safetensors(const Graph<T>& model, const std::map<std::string, std::string>& extra = {}) {
  return detail::safetensors_bytes(model.state(), "edgesplit.graph", architecture_json(model), extra);
}

/// Writes the graph to `path` (through a temporary file renamed into place).
template <Real T>
void save_safetensors(const std::filesystem::path& path, const Graph<T>& model,
                      const std::map<std::string, std::string>& extra = {}) {
  detail::write_file_atomically(path, to_safetensors(model, extra));
}

/// Rebuilds a graph from the file alone: inputs, nodes and outputs from the metadata, then the
/// weights, which must match the architecture one to one. The file is refused whole
/// (errc::corrupt_frame) when the architecture is malformed, a node reads a tensor not defined
/// before it (a cycle or a dangling name), a shape rule fails (the error names the node) or the
/// tensors disagree with it; errc::too_large when it describes more weights than the file
/// holds (checked before any layer is built); errc::version_mismatch for another format.
template <Real T>
Graph<T> graph_from_safetensors(const SafetensorsFile& file, const SafetensorsLimits& limits = {}) {
  const nlohmann::json a =
      detail::parse_bounded_json(detail::edgesplit_architecture(file, "edgesplit.graph"), 4, "architecture");
  auto bad = [](const std::string& what) { fail(errc::corrupt_frame, "architecture: " + what); };
  auto name_of = [&](const nlohmann::json& j) {
    if (!j.is_string()) bad("a tensor name is not a string");
    return j.get<std::string>();
  };
  if (!a.is_object() || !a.contains("inputs") || !a.contains("nodes") || !a.contains("outputs") || !a["inputs"].is_array() ||
      !a["nodes"].is_array() || !a["outputs"].is_array())
    bad("not an object with arrays 'inputs', 'nodes' and 'outputs'");
  if (a["nodes"].size() > limits.max_layers) fail(errc::too_large, "architecture has too many nodes");
  const std::size_t held = detail::held_elements(file);
  std::size_t storage = 0;
  std::vector<LayerSpec> specs;
  for (const auto& n : a["nodes"]) {
    if (!n.is_object() || !n.contains("op") || !n.contains("output") || !n.contains("inputs") || !n["inputs"].is_array())
      bad("a node is not an object with 'output', 'inputs' and 'op'");
    specs.push_back(detail::spec_from_json(n["op"]));
    if (!is_merge_type(specs.back().type)) detail::count_storage(held, specs.back(), storage);
  }
  Graph<T> g;
  try {
    for (const auto& in : a["inputs"]) {
      if (!in.is_object() || !in.contains("name") || !in.contains("shape") || !in["shape"].is_array() ||
          in["shape"].size() > 7)
        bad("an input is not an object with a 'name' and a 'shape' of rank 1 to 7");
      std::vector<std::size_t> dims;
      for (const auto& d : in["shape"]) {
        if (!d.is_number_unsigned()) bad("an input's shape holds a value that is not a size");
        const std::uint64_t v = d.get<std::uint64_t>();
        if (v > std::numeric_limits<std::size_t>::max()) fail(errc::too_large, "architecture: an input dimension is too large");
        dims.push_back(static_cast<std::size_t>(v));
      }
      g.input(name_of(in["name"]), Shape(std::span<const std::size_t>(dims)));
    }
    std::size_t i = 0;
    for (const auto& n : a["nodes"]) {
      std::vector<std::string> inputs;
      if (n["inputs"].size() > Merge<T>::max_inputs) bad("a node has too many inputs");
      for (const auto& j : n["inputs"]) inputs.push_back(name_of(j));
      const LayerSpec& spec = specs[i++];
      if (is_merge_type(spec.type)) g.add(name_of(n["output"]), inputs, make_merge<T>(spec));
      else g.add(name_of(n["output"]), inputs, make_layer<T>(spec));
    }
    for (const auto& o : a["outputs"]) g.output(name_of(o));
  } catch (const error& err) {
    if (err.code() == errc::unsupported || err.code() == errc::too_large) throw;
    fail(errc::corrupt_frame, std::string("architecture: ") + err.what());
  }
  if (g.output_names().empty()) bad("no outputs");
  try {
    Weights<T> w;
    for (const auto& e : file.tensors()) w.add(e.name, file.tensor<T>(e.name));
    w.apply_to(g);
  } catch (const error& err) {
    if (err.code() != errc::shape_mismatch && err.code() != errc::invalid_argument) throw;
    fail(errc::corrupt_frame, std::string("tensors do not match the architecture: ") + err.what());
  }
  return g;
}

/// Reads `path` and rebuilds the graph it holds.
template <Real T>
Graph<T> load_graph_safetensors(const std::filesystem::path& path, const SafetensorsLimits& limits = {}) {
  return graph_from_safetensors<T>(SafetensorsFile::read(path, limits), limits);
}

}  // namespace edgesplit

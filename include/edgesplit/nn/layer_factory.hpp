// edgesplit/nn/layer_factory.hpp - builds a layer from its LayerSpec (the inverse of Layer::spec).
#pragma once

#include <array>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <type_traits>

#include "edgesplit/core/shape.hpp"
#include "edgesplit/nn/activations.hpp"
#include "edgesplit/nn/batchnorm.hpp"
#include "edgesplit/nn/conv2d.hpp"
#include "edgesplit/nn/dense.hpp"
#include "edgesplit/nn/dropout.hpp"
#include "edgesplit/nn/layer.hpp"
#include "edgesplit/nn/pool.hpp"
#include "edgesplit/nn/standardizer.hpp"

namespace edgesplit {

namespace detail {
inline std::uint64_t spec_integer(const LayerSpec& s, const std::string& key) {
  const auto it = s.integers.find(key);
  if (it == s.integers.end()) fail(errc::invalid_argument, s.type + " spec lacks the integer '" + key + "'");
  return it->second;
}
// An integer setting that may be 0 (a padding) but no larger than `max`.
inline std::size_t spec_bounded(const LayerSpec& s, const std::string& key, std::uint64_t max) {
  const std::uint64_t v = spec_integer(s, key);
  if (v > max) fail(errc::invalid_argument, s.type + " '" + key + "' = " + std::to_string(v) + " exceeds " + std::to_string(max));
  return static_cast<std::size_t>(v);
}
inline double spec_real(const LayerSpec& s, const std::string& key) {
  const auto it = s.reals.find(key);
  if (it == s.reals.end()) fail(errc::invalid_argument, s.type + " spec lacks the number '" + key + "'");
  return it->second;
}
inline std::size_t spec_size(const LayerSpec& s, const std::string& key) {
  const std::uint64_t v = spec_integer(s, key);
  if (v == 0) fail(errc::invalid_argument, s.type + " '" + key + "' must be > 0");
  // A size this platform cannot hold is too large, as an overflowing shape is (32-bit boards).
  if (v > std::numeric_limits<std::size_t>::max() / 2)
    fail(errc::too_large, s.type + " '" + key + "' = " + std::to_string(v) + " is too large");
  return static_cast<std::size_t>(v);
}
// The constructor arguments of a Conv2D spec, validated as the constructor would (groups
// dividing the channels, every window size in range) so layer_storage can trust them.
struct Conv2DSpec {
  std::size_t in, out, kh, kw;
  Conv2DOptions options;
};
inline Conv2DSpec conv2d_spec(const LayerSpec& s) {
  Conv2DSpec c{spec_size(s, "in"), spec_size(s, "out"), spec_size(s, "kh"), spec_size(s, "kw"), {}};
  c.options.stride_h = spec_size(s, "sh");
  c.options.stride_w = spec_size(s, "sw");
  c.options.padding = {spec_bounded(s, "pt", Window2D::max_extent), spec_bounded(s, "pl", Window2D::max_extent),
                       spec_bounded(s, "pb", Window2D::max_extent), spec_bounded(s, "pr", Window2D::max_extent)};
  c.options.dilation_h = spec_size(s, "dh");
  c.options.dilation_w = spec_size(s, "dw");
  c.options.groups = spec_size(s, "groups");
  c.options.bias = spec_bounded(s, "bias", 1) == 1;
  c.options.window(c.kh, c.kw).validate("Conv2D");
  if (c.in % c.options.groups != 0 || c.out % c.options.groups != 0)
    fail(errc::invalid_argument, "Conv2D 'groups' must divide 'in' and 'out'");
  return c;
}
// The constructor arguments of a MaxPool2D or AvgPool2D spec (strides stored resolved, so 0 is
// refused here), validated as the constructors would.
struct Pool2DSpec {
  std::size_t kh, kw;
  Pool2DOptions options;
};
inline Pool2DSpec pool2d_spec(const LayerSpec& s) {
  const bool max = s.type == "MaxPool2D";
  Pool2DSpec p{spec_size(s, "kh"), spec_size(s, "kw"), {}};
  p.options.stride_h = spec_size(s, "sh");
  p.options.stride_w = spec_size(s, "sw");
  p.options.padding = {spec_bounded(s, "pt", Window2D::max_extent), spec_bounded(s, "pl", Window2D::max_extent),
                       spec_bounded(s, "pb", Window2D::max_extent), spec_bounded(s, "pr", Window2D::max_extent)};
  if (max) {
    p.options.dilation_h = spec_size(s, "dh");
    p.options.dilation_w = spec_size(s, "dw");
  } else {
    p.options.count_include_pad = spec_bounded(s, "count_include_pad", 1) == 1;
  }
  p.options.ceil_mode = spec_bounded(s, "ceil", 1) == 1;
  p.options.window(p.kh, p.kw).validate(s.type);
  return p;
}
}  // namespace detail

/// How to rebuild one kind of layer from its LayerSpec: what a weights file needs to load a model
/// that holds it.
template <Real T>
struct LayerKind {
  /// Elements of storage (weights and saved state) a layer built from the spec allocates. It
  /// validates the spec and allocates nothing: a loader checks it against what a file holds
  /// before building anything (errc::invalid_argument for a bad setting, errc::too_large on
  /// overflow).
  std::function<std::size_t(const LayerSpec&)> storage;
  /// A new layer configured by the spec, trainable weights zero, saved state at its defaults.
  std::function<std::unique_ptr<Layer<T>>(const LayerSpec&)> make;
};

namespace detail {

// The layer kinds edgesplit itself saves and loads: one entry per kind, its storage and its
// factory side by side.
template <Real T>
const std::map<std::string, LayerKind<T>>& builtin_layers() {
  using Made = std::unique_ptr<Layer<T>>;
  const auto none = [](const LayerSpec&) -> std::size_t { return 0; };
  // A layer of no settings and no storage.
  const auto plain = [none]<class L>(std::type_identity<L>) {
    return LayerKind<T>{none, [](const LayerSpec&) -> Made { return std::make_unique<L>(); }};
  };
  static const std::map<std::string, LayerKind<T>> kinds = {
      {"Dense",
       {[](const LayerSpec& s) {
          const std::size_t in = spec_size(s, "in"), out = spec_size(s, "out");
          return Shape::checked_count(std::array<std::size_t, 2>{in + 1, out});
        },
        [](const LayerSpec& s) -> Made { return std::make_unique<Dense<T>>(spec_size(s, "in"), spec_size(s, "out")); }}},
      {"Conv2D",
       {[](const LayerSpec& s) {
          const Conv2DSpec c = conv2d_spec(s);
          const std::size_t weights =
              Shape::checked_count(std::array<std::size_t, 4>{c.out, c.in / c.options.groups, c.kh, c.kw});
          if (c.options.bias && weights > std::numeric_limits<std::size_t>::max() - c.out)
            fail(errc::too_large, "Conv2D spec: storage overflows");
          return weights + (c.options.bias ? c.out : 0);
        },
        [](const LayerSpec& s) -> Made {
          const Conv2DSpec c = conv2d_spec(s);
          return std::make_unique<Conv2D<T>>(c.in, c.out, c.kh, c.kw, c.options);
        }}},
      // No storage, but a spec from outside is checked by storage() too.
      {"MaxPool2D",
       {[](const LayerSpec& s) -> std::size_t { return (void)pool2d_spec(s), 0; },
        [](const LayerSpec& s) -> Made {
          const Pool2DSpec p = pool2d_spec(s);
          return std::make_unique<MaxPool2D<T>>(p.kh, p.kw, p.options);
        }}},
      {"AvgPool2D",
       {[](const LayerSpec& s) -> std::size_t { return (void)pool2d_spec(s), 0; },
        [](const LayerSpec& s) -> Made {
          const Pool2DSpec p = pool2d_spec(s);
          return std::make_unique<AvgPool2D<T>>(p.kh, p.kw, p.options);
        }}},
      {"GlobalAvgPool", plain(std::type_identity<GlobalAvgPool<T>>{})},
      {"GlobalMaxPool", plain(std::type_identity<GlobalMaxPool<T>>{})},
      {"Flatten", plain(std::type_identity<Flatten<T>>{})},
      {"Dropout",
       {none, [](const LayerSpec& s) -> Made {
          return std::make_unique<Dropout<T>>(spec_real(s, "p"), spec_integer(s, "seed"));
        }}},
      {"Standardizer",
       {[](const LayerSpec& s) {
          return spec_integer(s, "global") ? std::size_t{2} : Shape::checked_bytes(spec_size(s, "features"), 2);
        },
        [](const LayerSpec& s) -> Made {
          const std::uint64_t global = spec_integer(s, "global");
          if (global > 1) fail(errc::invalid_argument, "Standardizer 'global' must be 0 or 1");
          return std::make_unique<Standardizer<T>>(spec_size(s, "features"),
                                                   global ? Standardize::global : Standardize::per_feature,
                                                   spec_real(s, "epsilon"));
        }}},
      // gamma, beta, running mean, running variance
      {"BatchNorm2D",
       {[](const LayerSpec& s) { return Shape::checked_bytes(spec_size(s, "channels"), 4); },
        [](const LayerSpec& s) -> Made {
          return std::make_unique<BatchNorm2D<T>>(spec_size(s, "channels"), spec_real(s, "epsilon"),
                                                  spec_real(s, "momentum"));
        }}},
      {"Identity", plain(std::type_identity<Identity<T>>{})},
      {"ReLU", plain(std::type_identity<ReLU<T>>{})},
      {"LeakyReLU",
       {none, [](const LayerSpec& s) -> Made { return std::make_unique<LeakyReLU<T>>(spec_real(s, "alpha")); }}},
      {"Sigmoid", plain(std::type_identity<Sigmoid<T>>{})},
      {"Tanh", plain(std::type_identity<Tanh<T>>{})},
      {"GELU", plain(std::type_identity<GELU<T>>{})},
      {"GELUTanh", plain(std::type_identity<GELUTanh<T>>{})},
      {"Erf", plain(std::type_identity<Erf<T>>{})},
      {"Softmax", plain(std::type_identity<Softmax<T>>{})},
      {"ReLU6", plain(std::type_identity<ReLU6<T>>{})},
      {"Clip",
       {none, [](const LayerSpec& s) -> Made {
          return std::make_unique<Clip<T>>(spec_real(s, "min"), spec_real(s, "max"));
        }}},
      {"HardSigmoid",
       {none, [](const LayerSpec& s) -> Made {
          return std::make_unique<HardSigmoid<T>>(spec_real(s, "alpha"), spec_real(s, "beta"));
        }}},
      {"HardSwish", plain(std::type_identity<HardSwish<T>>{})},
      {"SiLU", plain(std::type_identity<SiLU<T>>{})},
  };
  return kinds;
}

// The kinds users registered (register_layer), one table per element type.
template <Real T>
struct RegisteredLayers {
  std::shared_mutex mutex;
  std::map<std::string, LayerKind<T>> kinds;
  static RegisteredLayers& instance() {
    static RegisteredLayers r;
    return r;
  }
};

// The kind named `type` for element type T, built in or registered; nullptr when none.
template <Real T>
std::optional<LayerKind<T>> find_layer_kind(const std::string& type) {
  const auto& builtin = builtin_layers<T>();
  if (const auto it = builtin.find(type); it != builtin.end()) return it->second;
  auto& reg = RegisteredLayers<T>::instance();
  std::shared_lock lock(reg.mutex);
  if (const auto it = reg.kinds.find(type); it != reg.kinds.end()) return it->second;
  return std::nullopt;
}

}  // namespace detail

/// Teaches the loaders (load_safetensors, model_from_safetensors, graph_from_safetensors) a layer
/// kind of your own, so that models holding it are saved and loaded like built-in ones: a file
/// whose architecture names `type` rebuilds the layer with `kind.make`, after `kind.storage` has
/// told how many elements the layer will allocate (checked against what the file holds: a file
/// from outside cannot make the loader allocate more than its size justifies). `type` must be
/// what the layer's name() and spec().type return. errc::invalid_argument for an empty type, a
/// built-in one, one already registered for T, or a kind without both functions.
template <Real T>
void register_layer(const std::string& type, LayerKind<T> kind) {
  if (type.empty()) fail(errc::invalid_argument, "register_layer: empty layer type");
  if (!kind.storage || !kind.make) fail(errc::invalid_argument, "register_layer: '" + type + "' needs storage and make");
  if (detail::builtin_layers<T>().count(type)) fail(errc::invalid_argument, "register_layer: '" + type + "' is built in");
  auto& reg = detail::RegisteredLayers<T>::instance();
  std::unique_lock lock(reg.mutex);
  if (!reg.kinds.emplace(type, std::move(kind)).second)
    fail(errc::invalid_argument, "register_layer: '" + type + "' is already registered");
}

/// register_layer for a layer class `L` (derived from Layer<T>) that provides
/// `static std::unique_ptr<L> from_spec(const LayerSpec&)` and
/// `static std::size_t storage(const LayerSpec&)`: `register_layer<MyLayer>("MyLayer")`.
template <class L>
  requires std::derived_from<L, Layer<float>> || std::derived_from<L, Layer<double>>
void register_layer(const std::string& type) {
  using T = std::conditional_t<std::derived_from<L, Layer<float>>, float, double>;
  register_layer<T>(type, LayerKind<T>{[](const LayerSpec& s) -> std::size_t { return L::storage(s); },
                                       [](const LayerSpec& s) -> std::unique_ptr<Layer<T>> { return L::from_spec(s); }});
}

/// Elements of storage (weights and saved state) a layer built from `spec` allocates. A loader
/// checks this against what a file can hold before building anything, so an architecture read
/// from outside cannot make edgesplit allocate more than the file's size justifies.
/// errc::too_large on overflow; errc::unsupported for a type neither built in nor registered
/// (for T = float or double).
inline std::size_t layer_storage(const LayerSpec& spec) {
  if (auto k = detail::find_layer_kind<float>(spec.type)) return k->storage(spec);
  if (auto k = detail::find_layer_kind<double>(spec.type)) return k->storage(spec);
  fail(errc::unsupported, "unknown layer type '" + spec.type + "' (a layer of your own needs register_layer)");
}

/// A new layer of `spec.type` configured by `spec`; trainable weights are zero, saved state at its
/// defaults (load them afterwards). errc::unsupported for a type neither built in nor registered,
/// errc::invalid_argument for a missing or out-of-range setting.
template <Real T>
std::unique_ptr<Layer<T>> make_layer(const LayerSpec& spec) {
  const auto kind = detail::find_layer_kind<T>(spec.type);
  if (!kind) fail(errc::unsupported, "unknown layer type '" + spec.type + "' (a layer of your own needs register_layer)");
  (void)kind->storage(spec);  // validates the sizes before anything is allocated
  return kind->make(spec);
}

}  // namespace edgesplit

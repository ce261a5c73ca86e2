// edgesplit/nn/layer_factory.hpp - builds a layer from its LayerSpec (the inverse of Layer::spec).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>

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

/// Elements of storage (weights and saved state) a layer built from `spec` allocates. A loader
/// checks this against what a file can hold before building anything, so an architecture read
/// from outside cannot make edgesplit allocate more than the file's size justifies.
/// errc::too_large on overflow; errc::unsupported for an unknown type.
inline std::size_t layer_storage(const LayerSpec& spec) {
  if (spec.type == "Dense") {
    const std::size_t in = detail::spec_size(spec, "in"), out = detail::spec_size(spec, "out");
    return Shape::checked_count(std::array<std::size_t, 2>{in + 1, out});
  }
  if (spec.type == "Conv2D") {
    const detail::Conv2DSpec c = detail::conv2d_spec(spec);
    const std::size_t weights =
        Shape::checked_count(std::array<std::size_t, 4>{c.out, c.in / c.options.groups, c.kh, c.kw});
    if (c.options.bias && weights > std::numeric_limits<std::size_t>::max() - c.out)
      fail(errc::too_large, "Conv2D spec: storage overflows");
    return weights + (c.options.bias ? c.out : 0);
  }
  if (spec.type == "MaxPool2D" || spec.type == "AvgPool2D") {
    (void)detail::pool2d_spec(spec);  // no storage, but a spec from outside is checked here too
    return 0;
  }
  if (spec.type == "GlobalAvgPool" || spec.type == "GlobalMaxPool" || spec.type == "Flatten") return 0;
  if (spec.type == "Standardizer")
    return detail::spec_integer(spec, "global") ? 2 : Shape::checked_bytes(detail::spec_size(spec, "features"), 2);
  // gamma, beta, running mean, running variance
  if (spec.type == "BatchNorm2D") return Shape::checked_bytes(detail::spec_size(spec, "channels"), 4);
  if (spec.type == "ReLU6" || spec.type == "Clip" || spec.type == "HardSigmoid" || spec.type == "HardSwish" ||
      spec.type == "SiLU")
    return 0;
  if (spec.type == "Dropout" || spec.type == "Identity" || spec.type == "ReLU" || spec.type == "LeakyReLU" ||
      spec.type == "Sigmoid" || spec.type == "Tanh" || spec.type == "GELU" || spec.type == "GELUTanh" ||
      spec.type == "Erf" || spec.type == "Softmax")
    return 0;
  fail(errc::unsupported, "unknown layer type '" + spec.type + "'");
}

/// A new layer of `spec.type` configured by `spec`; trainable weights are zero, saved state at its
/// defaults (load them afterwards). errc::unsupported for an unknown type, errc::invalid_argument
/// for a missing or out-of-range setting.
template <Real T>
std::unique_ptr<Layer<T>> make_layer(const LayerSpec& spec) {
  (void)layer_storage(spec);  // validates the sizes before anything is allocated
  const std::string& t = spec.type;
  if (t == "Dense") return std::make_unique<Dense<T>>(detail::spec_size(spec, "in"), detail::spec_size(spec, "out"));
  if (t == "Conv2D") {
    const detail::Conv2DSpec c = detail::conv2d_spec(spec);
    return std::make_unique<Conv2D<T>>(c.in, c.out, c.kh, c.kw, c.options);
  }
  if (t == "MaxPool2D" || t == "AvgPool2D") {
    const detail::Pool2DSpec p = detail::pool2d_spec(spec);
    if (t == "MaxPool2D") return std::make_unique<MaxPool2D<T>>(p.kh, p.kw, p.options);
    return std::make_unique<AvgPool2D<T>>(p.kh, p.kw, p.options);
  }
  if (t == "GlobalAvgPool") return std::make_unique<GlobalAvgPool<T>>();
  if (t == "GlobalMaxPool") return std::make_unique<GlobalMaxPool<T>>();
  if (t == "Flatten") return std::make_unique<Flatten<T>>();
  if (t == "Dropout")
    return std::make_unique<Dropout<T>>(detail::spec_real(spec, "p"), detail::spec_integer(spec, "seed"));
  if (t == "Standardizer") {
    const std::uint64_t global = detail::spec_integer(spec, "global");
    if (global > 1) fail(errc::invalid_argument, "Standardizer 'global' must be 0 or 1");
    return std::make_unique<Standardizer<T>>(detail::spec_size(spec, "features"),
                                             global ? Standardize::global : Standardize::per_feature,
                                             detail::spec_real(spec, "epsilon"));
  }
  if (t == "Identity") return std::make_unique<Identity<T>>();
  if (t == "ReLU") return std::make_unique<ReLU<T>>();
  if (t == "LeakyReLU") return std::make_unique<LeakyReLU<T>>(detail::spec_real(spec, "alpha"));
  if (t == "Sigmoid") return std::make_unique<Sigmoid<T>>();
  if (t == "Tanh") return std::make_unique<Tanh<T>>();
  if (t == "GELU") return std::make_unique<GELU<T>>();
  if (t == "GELUTanh") return std::make_unique<GELUTanh<T>>();
  if (t == "Erf") return std::make_unique<Erf<T>>();
  if (t == "BatchNorm2D")
    return std::make_unique<BatchNorm2D<T>>(detail::spec_size(spec, "channels"), detail::spec_real(spec, "epsilon"),
                                            detail::spec_real(spec, "momentum"));
  if (t == "ReLU6") return std::make_unique<ReLU6<T>>();
  if (t == "Clip") return std::make_unique<Clip<T>>(detail::spec_real(spec, "min"), detail::spec_real(spec, "max"));
  if (t == "HardSigmoid")
    return std::make_unique<HardSigmoid<T>>(detail::spec_real(spec, "alpha"), detail::spec_real(spec, "beta"));
  if (t == "HardSwish") return std::make_unique<HardSwish<T>>();
  if (t == "SiLU") return std::make_unique<SiLU<T>>();
  return std::make_unique<Softmax<T>>();  // the last type layer_storage accepts
}

}  // namespace edgesplit

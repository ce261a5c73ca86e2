// edgesplit/plan/profile.hpp - what each layer of a model costs on one device.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/kernels.hpp"
#include "edgesplit/core/random.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/nn/sequential.hpp"

namespace edgesplit {

/// Cost of one layer at one batch size on one device.
struct LayerCost {
  std::string name;             ///< `Layer::describe()`
  std::uint64_t flops = 0;      ///< forward FLOPs for the whole batch
  std::size_t output_bytes = 0; ///< full-precision output bytes for the whole batch
  double seconds = 0;           ///< median forward latency for the whole batch
};

/// All layers of a model at one batch size.
struct BatchProfile {
  std::size_t batch = 0;  ///< batch size measured
  std::vector<LayerCost> layers;  ///< one cost per layer
};

/// How a profile's latencies were obtained: the planner reports it beside its predictions.
enum class ProfileSource { measured, analytic, scaled };

/// The source's name ("measured", "analytic", "scaled"), as stored in profiles.
inline const char* to_string(ProfileSource s) noexcept {
  switch (s) {
    case ProfileSource::measured: return "measured";
    case ProfileSource::analytic: return "analytic";
    case ProfileSource::scaled: return "scaled";
  }
  return "unknown";
}

/// Per-layer costs of one model on one device, for one or more batch sizes. Measured on the
/// device itself (`profile_model`), estimated from FLOPs (`analytic_profile`) where the device is
/// not at hand, or derived from another profile (`scaled`). Saved as JSON (io/profile_json.hpp),
/// so a profile measured on a board serves a planner running elsewhere.
struct DeviceProfile {
  std::string device;          ///< free text: board or CPU name
  std::string simd;            ///< SIMD instruction set the kernels were built for
  ProfileSource source = ProfileSource::measured;  ///< measured, analytic or scaled
  std::string note;            ///< e.g. how an analytic or scaled profile was made
  std::size_t input_features = 0;  ///< model input width per sample
  std::vector<BatchProfile> batches;  ///< sorted by batch size

  /// Number of layers profiled (those of the first batch size).
  std::size_t layer_count() const { return batches.empty() ? 0 : batches.front().layers.size(); }

  /// Seconds for layers [begin, end) at batch size `batch`: exact where measured, linear
  /// interpolation between the nearest measured batch sizes, linear extrapolation per sample
  /// beyond the largest (latency per sample is flat or falling with batch size, so this errs
  /// high, never low).
  double seconds(std::size_t begin, std::size_t end, std::size_t batch) const {
    if (batches.empty()) fail(errc::invalid_argument, "empty device profile");
    if (begin > end || end > layer_count())
      fail(errc::out_of_range, "layer range [" + std::to_string(begin) + ", " + std::to_string(end) +
                                   ") outside a profile of " + std::to_string(layer_count()) + " layers");
    if (batch == 0) fail(errc::invalid_argument, "batch size 0");
    auto range = [&](const BatchProfile& p) {
      double s = 0;
      for (std::size_t i = begin; i < end; ++i) s += p.layers[i].seconds;
      return s;
    };
    const auto hi = std::lower_bound(batches.begin(), batches.end(), batch,
                                     [](const BatchProfile& p, std::size_t b) { return p.batch < b; });
    if (hi != batches.end() && hi->batch == batch) return range(*hi);
    if (hi == batches.begin()) return range(*hi) * static_cast<double>(batch) / static_cast<double>(hi->batch);
    const auto lo = hi - 1;
    if (hi == batches.end()) return range(*lo) * static_cast<double>(batch) / static_cast<double>(lo->batch);
    const double t = static_cast<double>(batch - lo->batch) / static_cast<double>(hi->batch - lo->batch);
    return range(*lo) + t * (range(*hi) - range(*lo));
  }

  /// Checks the invariants a profile from a file must meet (the JSON reader calls this).
  void validate() const {
    if (batches.empty()) fail(errc::invalid_argument, "device profile has no batch sizes");
    const std::size_t n = batches.front().layers.size();
    for (std::size_t i = 0; i < batches.size(); ++i) {
      const auto& b = batches[i];
      if (b.batch == 0) fail(errc::invalid_argument, "device profile has batch size 0");
      if (i && b.batch <= batches[i - 1].batch)
        fail(errc::invalid_argument, "device profile batch sizes must be strictly increasing");
      if (b.layers.size() != n) fail(errc::shape_mismatch, "device profile batches disagree on the layer count");
      for (const auto& l : b.layers)
        if (!(l.seconds >= 0) || !(l.seconds < 1e6))
          fail(errc::invalid_argument, "device profile latency out of range for layer " + l.name);
    }
  }
};

/// Options for measuring a profile.
struct ProfileOptions {
  std::vector<std::size_t> batch_sizes{1};  ///< batch sizes to measure
  int warmup = 5;   ///< runs discarded before timing (caches, page faults, workspace growth)
  int runs = 31;    ///< timed runs per layer; the median is kept (robust to a noisy neighbour)
  std::string device = "this machine";  ///< name stored in the profile
  std::uint64_t seed = 1;  ///< seed of the random inputs
};

/// Measures every layer of `model` on this machine: for each batch size, the median over `runs`
/// of each layer's forward on its real input (the previous layer's output for random inputs).
template <Real T>
DeviceProfile profile_model(const Sequential<T>& model, std::size_t input_features, const ProfileOptions& opt = {}) {
  if (input_features == 0) fail(errc::invalid_argument, "profile_model: input_features must be > 0");
  if (opt.runs < 1 || opt.warmup < 0) fail(errc::invalid_argument, "profile_model: runs must be >= 1, warmup >= 0");
  std::vector<std::size_t> sizes = opt.batch_sizes;
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  if (sizes.empty() || sizes.front() == 0) fail(errc::invalid_argument, "profile_model: batch sizes must be >= 1");

  DeviceProfile prof;
  prof.device = opt.device;
  prof.simd = kernels::simd_arch_name();
  prof.source = ProfileSource::measured;
  prof.note = "median of " + std::to_string(opt.runs) + " runs after " + std::to_string(opt.warmup) + " warm-up runs";
  prof.input_features = input_features;

  Sequential<T> m = model;  // own copy: profiling must not disturb the caller's workspace
  Rng rng(opt.seed);
  std::vector<double> samples(static_cast<std::size_t>(opt.runs));
  for (std::size_t batch : sizes) {
    Tensor<T> x(Shape{batch, input_features});
    for (T& v : x.span()) v = static_cast<T>(rng.uniform(-1, 1));
    const auto info = m.describe(x.shape());
    BatchProfile bp{batch, {}};
    Tensor<T> in = x, out;
    for (std::size_t i = 0; i < m.size(); ++i) {
      Layer<T>& layer = m[i];
      out.resize(layer.output_shape(in.shape()));
      for (int w = 0; w < opt.warmup; ++w) layer.forward(in.cview(), out.view());
      for (auto& s : samples) {
        const auto t0 = std::chrono::steady_clock::now();
        layer.forward(in.cview(), out.view());
        s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      }
      std::nth_element(samples.begin(), samples.begin() + static_cast<std::ptrdiff_t>(samples.size() / 2), samples.end());
      bp.layers.push_back({info[i].name, info[i].flops, info[i].output_bytes, samples[samples.size() / 2]});
      std::swap(in, out);
    }
    prof.batches.push_back(std::move(bp));
  }
  return prof;
}

/// A profile estimated from FLOPs alone: seconds = FLOPs / (gflops * 1e9), for a device that has
/// not been measured. Ignores memory-boundness (batch-1 GEMV) and per-call overheads, so it
/// underestimates small layers; prefer a measured profile whenever the device is at hand.
template <Real T>
DeviceProfile analytic_profile(const Sequential<T>& model, std::size_t input_features,
                               const std::vector<std::size_t>& batch_sizes, double gflops, std::string device) {
  if (!(gflops > 0)) fail(errc::invalid_argument, "analytic_profile: gflops must be > 0");
  DeviceProfile prof;
  prof.device = std::move(device);
  prof.simd = "n/a";
  prof.source = ProfileSource::analytic;
  prof.note = "FLOPs / " + std::to_string(gflops) + " GFLOP/s";
  prof.input_features = input_features;
  std::vector<std::size_t> sizes = batch_sizes;
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  for (std::size_t batch : sizes) {
    if (batch == 0) fail(errc::invalid_argument, "analytic_profile: batch sizes must be >= 1");
    BatchProfile bp{batch, {}};
    for (const auto& l : model.describe(Shape{batch, input_features}))
      bp.layers.push_back({l.name, l.flops, l.output_bytes, static_cast<double>(l.flops) / (gflops * 1e9)});
    prof.batches.push_back(std::move(bp));
  }
  return prof;
}

/// `p` with every latency multiplied by `factor` (> 1: a slower device), labelled as scaled.
inline DeviceProfile scaled(DeviceProfile p, double factor, std::string device) {
  if (!(factor > 0)) fail(errc::invalid_argument, "scaled: factor must be > 0");
  for (auto& b : p.batches)
    for (auto& l : b.layers) l.seconds *= factor;
  p.note = "scaled x" + std::to_string(factor) + " from " + p.device + " (" + to_string(p.source) + ")";
  p.device = std::move(device);
  p.source = ProfileSource::scaled;
  return p;
}

}  // namespace edgesplit

// edgesplit/io/profile_json.hpp - device profiles as JSON files (needs nlohmann-json).
//
// A profile measured on a board (the edgesplit-profile tool) is read by a planner elsewhere, so
// the reader treats the file like network input: every field is type-checked, every count and
// value bounded, and any violation is an edgesplit::error, never a crash or a huge allocation.
//
// Format (version 1):
//   {"format": "edgesplit-profile", "version": 1, "device": "...", "simd": "...",
//    "source": "measured" | "analytic" | "scaled", "note": "...", "input_features": 784,
//    "batches": [{"batch": 1, "layers": [{"name": "Dense(784 -> 512)", "flops": 803328,
//                                          "output_bytes": 2048, "seconds": 1.2e-05}, ...]}, ...]}
#pragma once

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "edgesplit/core/error.hpp"
#include "edgesplit/plan/profile.hpp"

namespace edgesplit {

/// The version of the profile JSON this code writes and the only one it reads.
inline constexpr int profile_format_version = 1;

/// Bounds on what a profile file may describe (generous for any real model).
struct ProfileLimits {
  std::size_t max_file_bytes = 16u << 20;  ///< largest profile file read
  std::size_t max_batches = 64;  ///< most batch sizes in one profile
  std::size_t max_layers = 4096;  ///< most layers per batch size
  std::size_t max_string = 4096;  ///< longest string (device or layer name)
};

/// The profile as JSON ("format": "edgesplit-profile", version, device, batches of layer costs).
inline nlohmann::json profile_to_json(const DeviceProfile& p) {
  nlohmann::json j;
  j["format"] = "edgesplit-profile";
  j["version"] = profile_format_version;
  j["device"] = p.device;
  j["simd"] = p.simd;
  j["source"] = to_string(p.source);
  j["note"] = p.note;
  j["input_features"] = p.input_features;
  j["batches"] = nlohmann::json::array();
  for (const auto& b : p.batches) {
    nlohmann::json jb{{"batch", b.batch}, {"layers", nlohmann::json::array()}};
    for (const auto& l : b.layers)
      jb["layers"].push_back({{"name", l.name}, {"flops", l.flops}, {"output_bytes", l.output_bytes}, {"seconds", l.seconds}});
    j["batches"].push_back(std::move(jb));
  }
  return j;
}

namespace detail {

inline const nlohmann::json& profile_field(const nlohmann::json& j, const char* key, nlohmann::json::value_t type) {
  const auto it = j.find(key);
  if (it == j.end()) fail(errc::corrupt_frame, std::string("profile: missing field '") + key + "'");
  const bool ok = type == nlohmann::json::value_t::number_unsigned
                      ? it->is_number_unsigned()
                      : (type == nlohmann::json::value_t::number_float ? it->is_number() : it->type() == type);
  if (!ok) fail(errc::corrupt_frame, std::string("profile: field '") + key + "' has the wrong type");
  return *it;
}

inline std::string profile_string(const nlohmann::json& j, const char* key, const ProfileLimits& lim) {
  const auto& s = profile_field(j, key, nlohmann::json::value_t::string).get_ref<const std::string&>();
  if (s.size() > lim.max_string) fail(errc::too_large, std::string("profile: field '") + key + "' too long");
  return s;
}

}  // namespace detail

/// Parses and validates a profile; errc::corrupt_frame for malformed content,
/// errc::version_mismatch for another format version, errc::too_large past the limits.
inline DeviceProfile profile_from_json(const nlohmann::json& j, const ProfileLimits& lim = {}) {
  using vt = nlohmann::json::value_t;
  using detail::profile_field;
  if (!j.is_object()) fail(errc::corrupt_frame, "profile: not a JSON object");
  if (detail::profile_string(j, "format", lim) != "edgesplit-profile")
    fail(errc::corrupt_frame, "profile: not an edgesplit profile");
  const auto version = profile_field(j, "version", vt::number_unsigned).get<std::uint64_t>();
  if (version != profile_format_version)
    fail(errc::version_mismatch, "profile: format version " + std::to_string(version) + ", this build reads " +
                                     std::to_string(profile_format_version));
  DeviceProfile p;
  p.device = detail::profile_string(j, "device", lim);
  p.simd = detail::profile_string(j, "simd", lim);
  p.note = detail::profile_string(j, "note", lim);
  const std::string source = detail::profile_string(j, "source", lim);
  if (source == "measured") p.source = ProfileSource::measured;
  else if (source == "analytic") p.source = ProfileSource::analytic;
  else if (source == "scaled") p.source = ProfileSource::scaled;
  else fail(errc::corrupt_frame, "profile: unknown source '" + source + "'");
  p.input_features = profile_field(j, "input_features", vt::number_unsigned).get<std::size_t>();
  const auto& batches = profile_field(j, "batches", vt::array);
  if (batches.size() > lim.max_batches) fail(errc::too_large, "profile: too many batch sizes");
  for (const auto& jb : batches) {
    if (!jb.is_object()) fail(errc::corrupt_frame, "profile: batch entry is not an object");
    BatchProfile b;
    b.batch = profile_field(jb, "batch", vt::number_unsigned).get<std::size_t>();
    const auto& layers = profile_field(jb, "layers", vt::array);
    if (layers.size() > lim.max_layers) fail(errc::too_large, "profile: too many layers");
    for (const auto& jl : layers) {
      if (!jl.is_object()) fail(errc::corrupt_frame, "profile: layer entry is not an object");
      LayerCost l;
      l.name = detail::profile_string(jl, "name", lim);
      l.flops = profile_field(jl, "flops", vt::number_unsigned).get<std::uint64_t>();
      l.output_bytes = profile_field(jl, "output_bytes", vt::number_unsigned).get<std::size_t>();
      l.seconds = profile_field(jl, "seconds", vt::number_float).get<double>();
      b.layers.push_back(std::move(l));
    }
    p.batches.push_back(std::move(b));
  }
  try {
    p.validate();
  } catch (const error& e) {
    fail(errc::corrupt_frame, std::string("profile: ") + e.what());
  }
  return p;
}

/// Parses profile JSON text (see `profile_from_json`).
inline DeviceProfile parse_profile(const std::string& text, const ProfileLimits& lim = {}) {
  if (text.size() > lim.max_file_bytes) fail(errc::too_large, "profile: file over the size limit");
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) fail(errc::corrupt_frame, "profile: not valid JSON");
  return profile_from_json(j, lim);
}

/// Writes the profile to `path` as JSON; errc::io_error when the file cannot be written.
inline void save_profile(const DeviceProfile& p, const std::string& path) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) fail(errc::io_error, "cannot write profile " + path);
  f << profile_to_json(p).dump(2) << '\n';
  if (!f) fail(errc::io_error, "error writing profile " + path);
}

/// Reads and validates a profile file, bounded by `lim` (errc::too_large past it); errc::io_error
/// when it cannot be read, and parse_profile's errors for its content.
inline DeviceProfile load_profile(const std::string& path, const ProfileLimits& lim = {}) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(errc::io_error, "cannot open profile " + path);
  std::string text;
  char buf[65536];
  while (f.read(buf, sizeof buf) || f.gcount() > 0) {
    text.append(buf, static_cast<std::size_t>(f.gcount()));
    if (text.size() > lim.max_file_bytes) fail(errc::too_large, "profile " + path + " over the size limit");
  }
  return parse_profile(text, lim);
}

}  // namespace edgesplit

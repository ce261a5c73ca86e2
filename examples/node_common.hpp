// Shared by cloud_node.cpp and edge_node.cpp: argument parsing and the model both sides load.
#pragma once

#include <charconv>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>

#include <edgesplit/edgesplit.hpp>
#include <edgesplit/io/safetensors.hpp>

namespace node {

using namespace edgesplit;

/// `--key value` pairs; unknown keys and missing values are errc::invalid_argument.
inline std::map<std::string, std::string> parse_options(int argc, char** argv, std::map<std::string, std::string> defaults) {
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k.rfind("--", 0) != 0 || !defaults.count(k.substr(2))) fail(errc::invalid_argument, "unknown option " + k);
    if (i + 1 >= argc) fail(errc::invalid_argument, "option " + k + " needs a value");
    defaults[k.substr(2)] = argv[++i];
  }
  return defaults;
}

inline std::size_t number(const std::string& s, const char* what, std::size_t lo, std::size_t hi) {
  std::size_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || end != s.data() + s.size() || v < lo || v > hi)
    fail(errc::invalid_argument, std::string(what) + " must be a whole number in " + std::to_string(lo) + ".." +
                                     std::to_string(hi) + ", got '" + s + "'");
  return v;
}

/// The model both nodes load: a safetensors file written by split_demo or train_fashion_mnist.
inline Sequential<float> load_model(const std::string& path) {
  if (!std::filesystem::is_regular_file(path))
    fail(errc::io_error, "no model file " + path + " (run split_demo or train_fashion_mnist first, or pass --model)");
  return load_safetensors<float>(path);
}

inline const std::string default_model =
    (std::filesystem::temp_directory_path() / "edgesplit-split-demo-mlp.safetensors").string();

}  // namespace node

// Shared by cloud_node.cpp and edge_node.cpp: argument parsing and the model both sides load.
#pragma once

#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>

#include <edgesplit/edgesplit.hpp>
#include <edgesplit/io/safetensors.hpp>
#include "cli.hpp"

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

/// The model both nodes load: a safetensors file written by split_demo or train_fashion_mnist.
inline Sequential<float> load_model(const std::string& path) {
  if (!std::filesystem::is_regular_file(path))
    fail(errc::io_error, "no model file " + path + " (run split_demo or train_fashion_mnist first, or pass --model)");
  return load_safetensors<float>(path);
}

inline const std::string default_model =
    (std::filesystem::temp_directory_path() / "edgesplit-split-demo-mlp.safetensors").string();

}  // namespace node

// ONNX's own backend test data (Debian's libonnx-testdata) run through import_onnx.
//
//   onnx_conformance DATA_DIR [--verbose] [--filter SUBSTRING]
//
// DATA_DIR holds node/, pytorch-converted/, pytorch-operator/ and simple/, each case a directory
// with model.onnx and test_data_set_*/{input,output}_*.pb. A case whose operators are all among
// those the importer supports is imported and run on every data set, and its outputs compared
// with the expected ones as ONNX's backend tests compare them (numpy's assert_allclose with
// rtol 1e-3, atol 1e-7): any difference fails the run. A case the importer refuses with
// errc::unsupported (an attribute, a data type, a layout edgesplit does not run) is skipped with
// the reason; so is a case using an operator outside the supported list. The last lines print
// `N passed, M failed, K skipped` and a table per operator.
//
// Edgesplit runs axis 0 of every input as the batch. The test cases feed every operand as a
// graph input; an input that cannot carry the batch (another rank or another axis-0 size than
// the first input), or that the importer needs as a constant (a convolution's weights), is
// passed as OnnxImportOptions::constants, which fold it as an initializer would be.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "edgesplit/io/onnx.hpp"

namespace fs = std::filesystem;
using namespace edgesplit;

namespace {

const std::set<std::string> claimed = {
    "Conv", "Gemm", "MatMul", "Add", "Mul", "Sub", "Div", "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "Tanh",
    "HardSigmoid", "HardSwish", "Softmax", "LogSoftmax", "BatchNormalization", "MaxPool", "AveragePool",
    "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Pad",
    "Identity", "Dropout", "Constant", "Max", "Min", "Erf",
    // folded at load time when their inputs are constants
    "Shape", "Gather", "Cast"};

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

using Loaded = detail::onnx_import::Value;

// A .pb tensor (float32, float64, int32 or int64); false for another type (the case is skipped).
bool load_tensor(const fs::path& p, Loaded& out, std::string& why) {
  onnx::TensorProto t;
  const std::string bytes = read_file(p);
  if (!t.ParseFromString(bytes)) {
    why = "cannot parse " + p.string();
    return false;
  }
  try {
    out = detail::onnx_import::read_tensor(t, p.filename().string());
  } catch (const error& e) {
    why = std::string("data type ") + detail::onnx_import::dtype_name(t.data_type());
    return false;
  }
  out.integer = t.data_type() != onnx::TensorProto::FLOAT;  // here: "not float32", so it is folded
  return true;
}

struct Tally {
  int passed = 0, failed = 0, skipped = 0;
};

enum class Outcome { passed, failed, skipped, not_claimed };

struct Runner {
  bool verbose = false;
  std::map<std::string, Tally> per_op;
  std::map<std::string, int> skip_reasons;
  int passed = 0, failed = 0, skipped = 0, not_claimed = 0;

  Outcome run_case(const fs::path& dir, std::string& detail, std::set<std::string>& ops) {
    onnx::ModelProto m;
    if (!m.ParseFromString(read_file(dir / "model.onnx"))) {
      detail = "model.onnx does not parse";
      return Outcome::failed;
    }
    for (const auto& n : m.graph().node()) ops.insert(n.op_type());
    for (const auto& op : ops)
      if (!claimed.count(op)) {
        detail = "operator " + op;
        return Outcome::not_claimed;
      }
    for (const auto& i : m.graph().input())
      if (!i.type().has_tensor_type()) return detail = "input '" + i.name() + "' is not a tensor (a sequence or map)", Outcome::skipped;
    std::set<std::string> init;
    for (const auto& t : m.graph().initializer()) init.insert(t.name());
    std::vector<std::string> inputs;
    for (const auto& i : m.graph().input())
      if (!init.count(i.name())) inputs.push_back(i.name());
    std::vector<fs::path> sets;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_directory() && e.path().filename().string().rfind("test_data_set_", 0) == 0) sets.push_back(e.path());
    std::sort(sets.begin(), sets.end());
    if (sets.empty()) {
      detail = "no test data";
      return Outcome::skipped;
    }
    const std::string bytes = read_file(dir / "model.onnx");
    for (const auto& set : sets) {
      std::vector<Loaded> in, out;
      for (std::size_t k = 0;; ++k) {
        const fs::path p = set / ("input_" + std::to_string(k) + ".pb");
        if (!fs::exists(p)) break;
        Loaded l;
        if (!load_tensor(p, l, detail)) return detail = "input " + detail, Outcome::skipped;
        in.push_back(std::move(l));
      }
      for (std::size_t k = 0;; ++k) {
        const fs::path p = set / ("output_" + std::to_string(k) + ".pb");
        if (!fs::exists(p)) break;
        Loaded l;
        if (!load_tensor(p, l, detail)) return detail = "output " + detail, Outcome::skipped;
        if (l.integer) return detail = "an output that is not float32", Outcome::skipped;
        out.push_back(std::move(l));
      }
      if (in.empty()) return detail = "the model has no input", Outcome::skipped;
      if (in.size() > inputs.size()) return detail = "inputs do not match the model", Outcome::failed;
      // Inputs that cannot carry the batch are constants; retry with every input but the first
      // constant when the importer needs one.
      std::vector<char> bind(in.size(), 0);
      for (std::size_t k = 1; k < in.size(); ++k)
        bind[k] = in[k].integer || in[k].dims.size() != in[0].dims.size() || in[k].dims.empty() || in[k].dims[0] != in[0].dims[0];
      if (in[0].dims.empty()) return detail = "a scalar first input has no batch axis", Outcome::skipped;
      if (in[0].integer) return detail = "the first input is not float32", Outcome::skipped;
      OnnxModel model;
      for (int attempt = 0;; ++attempt) {
        OnnxImportOptions o;
        for (std::size_t k = 1; k < in.size(); ++k)
          if (bind[k]) o.constants.emplace(inputs[k], detail::onnx_import::to_tensor(in[k], false));
        try {
          model = import_onnx(std::span<const unsigned char>(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size()), o);
          break;
        } catch (const error& e) {
          if (e.code() != errc::unsupported) return detail = e.what(), Outcome::failed;
          if (attempt == 1 || std::count(bind.begin(), bind.end(), 1) + 1 == static_cast<long>(in.size())) {
            detail = e.what();
            return Outcome::skipped;
          }
          std::fill(bind.begin() + 1, bind.end(), 1);
        }
      }
      std::vector<Tensor<float>> xs;
      std::vector<TensorView<const float>> views;
      const auto names = model.graph.input_names();
      for (const std::string& name : names) {
        std::size_t k = 0;
        while (k < in.size() && inputs[k] != name) ++k;
        if (k == in.size()) return detail = "no data for input " + name, Outcome::failed;
        const Shape s = model.graph.shape(name, static_cast<std::size_t>(in[k].dims[0]));
        if (s.count() != in[k].data.size()) return detail = "input " + name + " data does not fit " + s.str(), Outcome::failed;
        Tensor<float> t(s);
        std::copy(in[k].data.begin(), in[k].data.end(), t.data());
        xs.push_back(std::move(t));
      }
      for (const auto& t : xs) views.push_back(t.cview());
      try {
        model.graph.forward(std::span<const TensorView<const float>>(views));
      } catch (const error& e) {
        return detail = std::string("run: ") + e.what(), Outcome::failed;
      }
      if (out.size() != model.graph.output_names().size()) return detail = "output count differs", Outcome::failed;
      for (std::size_t k = 0; k < out.size(); ++k) {
        const TensorView<const float> y = model.graph.result(k);
        std::vector<std::int64_t> got(y.shape().dims().begin(), y.shape().dims().end());
        if (model.output_ranks[k] == 1) got.resize(1);
        if (got != out[k].dims)
          return detail = "output " + std::to_string(k) + " has shape " + detail::onnx_import::dims_str(got) + ", expected " +
                          detail::onnx_import::dims_str(out[k].dims),
                 Outcome::failed;
        for (std::size_t i = 0; i < y.size(); ++i) {
          const double g = y[i], e = out[k].data[i];
          if (std::isnan(e) && std::isnan(g)) continue;
          if (std::isinf(e) && g == e) continue;
          if (!(std::fabs(g - e) <= 1e-7 + 1e-3 * std::fabs(e))) {
            char buf[160];
            std::snprintf(buf, sizeof buf, "output %zu element %zu: got %.9g, expected %.9g (%s)", k, i, g, e,
                          set.filename().c_str());
            detail = buf;
            return Outcome::failed;
          }
        }
      }
    }
    return Outcome::passed;
  }

  void run_dir(const fs::path& root, const std::string& filter) {
    std::vector<fs::path> cases;
    for (const auto& e : fs::directory_iterator(root))
      if (e.is_directory() && fs::exists(e.path() / "model.onnx")) cases.push_back(e.path());
    std::sort(cases.begin(), cases.end());
    for (const auto& c : cases) {
      const std::string label = root.filename().string() + "/" + c.filename().string();
      if (!filter.empty() && label.find(filter) == std::string::npos) continue;
      std::string detail;
      std::set<std::string> ops;
      Outcome r;
      try {
        r = run_case(c, detail, ops);
      } catch (const std::exception& e) {
        r = Outcome::failed;
        detail = std::string("exception: ") + e.what();
      }
      if (r == Outcome::not_claimed) {
        ++not_claimed;
        if (verbose) std::cout << "other   " << label << ": " << detail << "\n";
        continue;
      }
      for (const auto& op : ops) {
        Tally& t = per_op[op];
        (r == Outcome::passed ? t.passed : r == Outcome::failed ? t.failed : t.skipped)++;
      }
      if (r == Outcome::passed) {
        ++passed;
        if (verbose) std::cout << "pass    " << label << "\n";
      } else if (r == Outcome::failed) {
        ++failed;
        std::cout << "FAIL    " << label << ": " << detail << "\n";
      } else {
        ++skipped;
        std::cout << "skip    " << label << ": " << detail << "\n";
      }
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: onnx_conformance DATA_DIR [--verbose] [--filter SUBSTRING]\n";
    return 2;
  }
  Runner r;
  std::string filter;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--verbose") r.verbose = true;
    else if (a == "--filter" && i + 1 < argc) filter = argv[++i];
    else {
      std::cerr << "onnx_conformance: unknown argument '" << a << "'\n";
      return 2;
    }
  }
  const fs::path root = argv[1];
  if (!fs::is_directory(root / "node")) {
    std::cerr << "onnx_conformance: " << root << " has no node/ directory (install libonnx-testdata)\n";
    return 2;
  }
  for (const char* sub : {"node", "pytorch-converted", "pytorch-operator", "simple"})
    if (fs::is_directory(root / sub)) r.run_dir(root / sub, filter);
  std::cout << "\nper operator (cases that use it): passed / failed / skipped\n";
  for (const auto& [op, t] : r.per_op)
    std::printf("  %-20s %4d %4d %4d\n", op.c_str(), t.passed, t.failed, t.skipped);
  std::cout << "\ncases using an operator outside the supported list (not run): " << r.not_claimed << "\n";
  std::cout << r.passed << " passed, " << r.failed << " failed, " << r.skipped << " skipped\n";
  return r.failed == 0 && r.passed > 0 ? 0 : 1;
}

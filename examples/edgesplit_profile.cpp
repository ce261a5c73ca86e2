// edgesplit-profile: measure what each layer of a model costs on this board, as JSON.
//
// Run it on the target board (copy the binary there, or cross-compile: docs/boards.md), then give
// the JSON file to the planner wherever it runs.
//
//   edgesplit-profile --layers 784,512,256,10 --batch 1,8,64 --runs 31 --device "pi4" --out pi4.json
//
// The model is a ReLU MLP of the given widths (Dense layers with ReLU between them, the shape of
// the Fashion-MNIST models). Latencies do not depend on the weights' values, so random weights
// serve. Exit status: 0 on success, 2 on bad arguments, 1 on any other failure.
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include <edgesplit/edgesplit.hpp>
#include <edgesplit/io/profile_json.hpp>
#include <edgesplit/plan/profile.hpp>
#include "cli.hpp"

using namespace edgesplit;

namespace {

void usage(std::FILE* to) {
  std::fputs(
      "usage: edgesplit-profile [--layers W0,W1,...] [--batch B1,B2,...] [--runs N] [--warmup N]\n"
      "                         [--device NAME] [--out FILE]\n"
      "  --layers  widths of a ReLU MLP (default 784,512,256,10)\n"
      "  --batch   batch sizes to measure (default 1,8,64)\n"
      "  --runs    timed runs per layer; the median is kept (default 31)\n"
      "  --warmup  untimed runs first (default 5)\n"
      "  --device  name written into the profile (default: this machine)\n"
      "  --out     output file (default: standard output)\n",
      to);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::size_t> widths{784, 512, 256, 10};
  ProfileOptions opt;
  opt.batch_sizes = {1, 8, 64};
  std::string out;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string_view a = argv[i];
      if (a == "--help" || a == "-h") {
        usage(stdout);
        return 0;
      }
      if (i + 1 >= argc) fail(errc::invalid_argument, "option " + std::string(a) + " needs a value");
      const std::string_view v = argv[++i];
      if (a == "--layers") widths = cli::numbers<std::size_t>(v, a, 1, 1u << 16);
      else if (a == "--batch") opt.batch_sizes = cli::numbers<std::size_t>(v, a, 1, 1u << 16);
      else if (a == "--runs") opt.runs = cli::number(v, a, 1, 100000);
      else if (a == "--warmup") opt.warmup = cli::number(v, a, 0, 100000);
      else if (a == "--device") opt.device = std::string(v);
      else if (a == "--out") out = std::string(v);
      else fail(errc::invalid_argument, "unknown option " + std::string(a));
    }
    if (widths.size() < 2) fail(errc::invalid_argument, "--layers needs at least two widths");
  } catch (const error& e) {
    std::fprintf(stderr, "edgesplit-profile: %s\n", e.what());
    usage(stderr);
    return 2;
  }
  try {
    Rng rng(1);
    Sequential<float> model;
    for (std::size_t i = 1; i < widths.size(); ++i) {
      if (i > 1) model.add<ReLU<float>>();
      model.add<Dense<float>>(widths[i - 1], widths[i], rng);
    }
    const DeviceProfile p = profile_model(model, widths.front(), opt);
    if (out.empty()) {
      std::printf("%s\n", profile_to_json(p).dump(2).c_str());
    } else {
      save_profile(p, out);
      std::fprintf(stderr, "edgesplit-profile: wrote %s (%zu layers x %zu batch sizes, simd %s)\n", out.c_str(),
                   p.layer_count(), p.batches.size(), p.simd.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "edgesplit-profile: %s\n", e.what());
    return 1;
  }
  return 0;
}

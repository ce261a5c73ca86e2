// The `edgesplit` command-line tool (tools/edgesplit.cpp), run as a user runs it: on an ONNX file
// written here, with .npy inputs, checked against the imported graph's own answers; bad
// arguments and bad files end with a one-line message and a non-zero exit status.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "edgesplit/edgesplit.hpp"
#include "edgesplit/io/npy.hpp"
#include "edgesplit/io/onnx.hpp"
#include "onnx_builder.hpp"

using namespace edgesplit;
namespace fs = std::filesystem;

namespace {

// A scratch directory per test process.
struct Scratch {
  fs::path dir = fs::temp_directory_path() / ("edgesplit_cli_" + std::to_string(::getpid()));
  Scratch() { fs::create_directories(dir); }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string operator()(const std::string& name) const { return (dir / name).string(); }
};

struct Run {
  int status = -1;
  std::string out;  // stdout and stderr
};

// Runs the tool with `args` (already shell-quoted where needed), capturing its output.
Run tool(const Scratch& s, const std::string& args) {
  const std::string log = s("log.txt");
  const std::string cmd = std::string(EDGESPLIT_CLI) + " " + args + " > " + log + " 2>&1";
  const int rc = std::system(cmd.c_str());
  Run r;
  r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  std::ifstream f(log);
  std::stringstream ss;
  ss << f.rdbuf();
  r.out = ss.str();
  return r;
}

// The model of the tests: a small CNN with a residual join, as an ONNX file.
std::string write_model(const Scratch& s) {
  edgesplit_test::OnnxBuilder b;
  b.input("image", {2, 6, 6});
  b.weight("w1", {4, 2, 3, 3});
  b.weight("b1", {4});
  b.weight("w2", {4, 4, 3, 3});
  b.weight("wf", {3, 144});
  b.weight("bf", {3});
  auto* c1 = b.node("Conv", {"image", "w1", "b1"}, {"c1"});
  edgesplit_test::OnnxBuilder::attr(c1, "pads", std::vector<std::int64_t>{1, 1, 1, 1});
  b.node("Relu", {"c1"}, {"a"});
  auto* c2 = b.node("Conv", {"a", "w2"}, {"c2"});
  edgesplit_test::OnnxBuilder::attr(c2, "pads", std::vector<std::int64_t>{1, 1, 1, 1});
  b.node("Add", {"c2", "a"}, {"sum"});
  b.node("Flatten", {"sum"}, {"flat"});
  auto* fc = b.node("Gemm", {"flat", "wf", "bf"}, {"logits"});
  edgesplit_test::OnnxBuilder::attr(fc, "transB", std::int64_t{1});
  b.output("logits");
  const std::string path = s("cnn.onnx");
  std::ofstream(path, std::ios::binary) << b.bytes();
  return path;
}

Tensor<float> inputs(std::size_t n) {
  Rng rng(17);
  Tensor<float> x(Shape{n, 2, 6, 6});
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(rng.uniform(-1, 1));
  return x;
}

}  // namespace

TEST_CASE("edgesplit inspect, run and run with a cut give the imported graph's answers", "[onnx][cli]") {
  const Scratch s;
  const std::string model = write_model(s);
  const Tensor<float> x = inputs(5);
  save_npy(s("x.npy"), x.cview());
  OnnxModel m = import_onnx(model);
  const Tensor<float> want = m.graph.predict(x.cview());

  const Run help = tool(s, "--help");
  CHECK(help.status == 0);
  for (const char* c : {"inspect", "run", "split", "plan", "serve", "edge"}) {
    const Run h = tool(s, std::string(c) + " --help");
    INFO(c << ": " << h.out);
    CHECK(h.status == 0);
    CHECK(h.out.find(std::string("edgesplit ") + c) != std::string::npos);
  }

  const Run ins = tool(s, "inspect " + model);
  INFO(ins.out);
  REQUIRE(ins.status == 0);
  CHECK(ins.out.find("candidate cuts") != std::string::npos);
  CHECK(ins.out.find("{a, c2}") != std::string::npos);  // inside the residual block, two tensors cross
  CHECK(ins.out.find("sum") != std::string::npos);

  const Run r = tool(s, "run " + model + " --input " + s("x.npy") + " --output " + s("y.npy"));
  INFO(r.out);
  REQUIRE(r.status == 0);
  const Tensor<float> y = read_npy(s("y.npy"));
  REQUIRE(y.shape() == want.shape());
  for (std::size_t i = 0; i < y.size(); ++i) CHECK(y[i] == want[i]);  // the same graph, the same floats

  // fp32 across the cut: bit for bit. int8 per tensor: each value off by at most half a step of
  // its frame's range / 255, carried through the Flatten and the 144-wide Dense.
  const Run c32 = tool(s, "run " + model + " --input " + s("x.npy") + " --output " + s("y32.npy") + " --cut sum --codec fp32");
  INFO(c32.out);
  REQUIRE(c32.status == 0);
  const Tensor<float> y32 = read_npy(s("y32.npy"));
  for (std::size_t i = 0; i < y32.size(); ++i) CHECK(y32[i] == want[i]);
  const Run c8 = tool(s, "run " + model + " --input " + s("x.npy") + " --output " + s("y8.npy") + " --cut sum --codec int8");
  INFO(c8.out);
  REQUIRE(c8.status == 0);
  CHECK(c8.out.find("bytes crossed") != std::string::npos);
  const Tensor<float> y8 = read_npy(s("y8.npy"));
  auto [head, tail] = m.graph.cut({"sum"});
  const Tensor<float> feat = head.predict(x.cview());
  float lo = feat[0], hi = feat[0];
  for (std::size_t i = 0; i < feat.size(); ++i) lo = std::min(lo, feat[i]), hi = std::max(hi, feat[i]);
  const auto* dense = dynamic_cast<const Dense<float>*>(tail.layer(tail.node_count() - 1));
  REQUIRE(dense != nullptr);
  double row_l1 = 0;
  for (std::size_t o = 0; o < 3; ++o) {
    double l1 = 0;
    for (std::size_t k = 0; k < 144; ++k) l1 += std::fabs(dense->weight()[o * 144 + k]);
    row_l1 = std::max(row_l1, l1);
  }
  const double bound = 0.5 * (hi - lo) / 255.0 * row_l1 * 1.001 + 1e-5;
  for (std::size_t i = 0; i < y8.size(); ++i) CHECK(std::fabs(y8[i] - want[i]) <= bound);
}

TEST_CASE("edgesplit split writes a head and a tail as ONNX files that chain to the whole model", "[onnx][cli]") {
  const Scratch s;
  const std::string model = write_model(s);
  const Tensor<float> x = inputs(4);
  save_npy(s("x.npy"), x.cview());
  const Tensor<float> want = import_onnx(model).graph.predict(x.cview());
  // Inside the residual block: two tensors cross, so the head has two outputs, the tail two inputs.
  const Run sp = tool(s, "split " + model + " --cut a,c2 --head " + s("head.onnx") + " --tail " + s("tail.onnx"));
  INFO(sp.out);
  REQUIRE(sp.status == 0);
  const Run h = tool(s, "run " + s("head.onnx") + " --input " + s("x.npy") + " --output " + s("a.npy") + "," + s("c2.npy"));
  INFO(h.out);
  REQUIRE(h.status == 0);
  const Run t = tool(s, "run " + s("tail.onnx") + " --input " + s("a.npy") + "," + s("c2.npy") + " --output " + s("y.npy"));
  INFO(t.out);
  REQUIRE(t.status == 0);
  const Tensor<float> y = read_npy(s("y.npy"));
  REQUIRE(y.shape() == want.shape());
  for (std::size_t i = 0; i < y.size(); ++i) CHECK(y[i] == want[i]);  // the same layers, the same floats
  const Run bad = tool(s, "split " + model + " --cut c2 --head " + s("h2.onnx") + " --tail " + s("t2.onnx"));
  CHECK(bad.status == 1);
  CHECK(bad.out.find("bypasses") != std::string::npos);
}

TEST_CASE("edgesplit plan picks a cut and serve and edge answer over TCP as the whole model", "[onnx][cli]") {
  const Scratch s;
  const std::string model = write_model(s);
  const Tensor<float> x = inputs(7);
  save_npy(s("x.npy"), x.cview());
  const Tensor<float> want = import_onnx(model).graph.predict(x.cview());

  const Run p = tool(s, "plan " + model + " --link wifi --edge-slowdown 1000");
  INFO(p.out);
  REQUIRE(p.status == 0);
  CHECK(p.out.find("pick:") != std::string::npos);
  // An accuracy budget: labels the whole model gets right by construction (its own argmax).
  Tensor<float> labels(Shape{7});
  for (std::size_t i = 0; i < 7; ++i) {
    const float* row = want.data() + i * 3;
    labels[i] = static_cast<float>(std::max_element(row, row + 3) - row);
  }
  save_npy(s("labels.npy"), labels.cview());
  const Run pa = tool(s, "plan " + model + " --link 2,40 --edge-slowdown 1000 --accuracy-data " + s("x.npy") + " " +
                             s("labels.npy") + " --max-loss 0");
  INFO(pa.out);
  REQUIRE(pa.status == 0);
  CHECK(pa.out.find("the whole model: 100.00% top-1") != std::string::npos);

  // The pick's kind of run: accuracy against the labels, and one request at a time through the
  // runtime over a simulated link on a virtual clock (the link's round trip is in every answer).
  const Run r = tool(s, "run " + model + " --input " + s("x.npy") + " --output " + s("yr.npy") + " --cut sum --codec int8 --labels " +
                            s("labels.npy") + " --link 2,40 --edge-slowdown 10");
  INFO(r.out);
  REQUIRE(r.status == 0);
  CHECK(r.out.find("top-1 accuracy of the split at sum, int8 on 7 samples") != std::string::npos);
  const std::size_t at = r.out.find("latency ");
  REQUIRE(at != std::string::npos);
  CHECK(std::stod(r.out.substr(at + 8)) >= 40.0);  // ms: at least the 40 ms round trip

  // serve in the background on a free loopback port, edge against it, then stop it.
  const std::string serve = std::string(EDGESPLIT_CLI) + " serve " + model + " --cut sum --port 0 --port-file " +
                            s("port.txt") + " > " + s("serve.log") + " 2>&1 & echo $! > " + s("serve.pid");
  REQUIRE(std::system(serve.c_str()) == 0);
  std::string port;
  for (int i = 0; i < 100 && port.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::ifstream f(s("port.txt"));
    std::getline(f, port);
  }
  REQUIRE_FALSE(port.empty());
  const Run e = tool(s, "edge " + model + " --cut sum --connect 127.0.0.1:" + port + " --input " + s("x.npy") + " --output " +
                            s("ye.npy") + " --codec fp32 --batch 3");
  std::string pid;
  std::getline(std::ifstream(s("serve.pid")), pid);
  REQUIRE(std::system(("kill " + pid).c_str()) == 0);
  INFO(e.out);
  REQUIRE(e.status == 0);
  const Tensor<float> ye = read_npy(s("ye.npy"));
  REQUIRE(ye.shape() == want.shape());
  // The cloud batches requests with others and runs its Dense at another batch size than the
  // whole model did here: the same sums in another order, a few roundings of the logits' size.
  for (std::size_t i = 0; i < ye.size(); ++i) CHECK(std::fabs(ye[i] - want[i]) <= 1e-5 * (1 + std::fabs(want[i])));
}

TEST_CASE("edgesplit refuses bad arguments and bad files with one line and a non-zero status", "[onnx][cli]") {
  const Scratch s;
  const std::string model = write_model(s);
  save_npy(s("x.npy"), inputs(2).cview());
  std::ofstream(s("bad.npy"), std::ios::binary) << "\x93NUMPY\x01\x00garbage";
  std::ofstream(s("bad.onnx"), std::ios::binary) << "not a model";
  const struct {
    std::string args;
    int status;
    const char* says;
  } cases[] = {
      {"", 2, "no command"},
      {"frobnicate " + model, 2, "unknown command"},
      {"run " + model + " --inptu x", 2, "unknown option --inptu"},
      {"run " + model + " --input " + s("x.npy"), 2, "missing --output"},
      {"run " + model + " --input " + s("x.npy") + " --output " + s("y.npy") + " --cut sum --codec int3", 2, "--codec"},
      {"run " + model + " --input " + s("bad.npy") + " --output " + s("y.npy"), 1, "corrupt_frame"},
      {"run " + model + " --input " + s("missing.npy") + " --output " + s("y.npy"), 1, "io_error"},
      {"run " + model + " --input " + s("x.npy") + " --output " + s("y.npy") + " --cut nowhere", 1, "no tensor named 'nowhere'"},
      {"run " + model + " --input " + s("x.npy") + " --output " + s("y.npy") + " --cut c2", 1, "bypasses"},
      {"inspect " + s("bad.onnx"), 1, "not an ONNX model"},
      {"inspect " + s("missing.onnx"), 1, "no model file"},
      {"plan " + model + " --link 5g", 2, "--link"},
      {"edge " + model + " --cut sum --connect nowhere --input " + s("x.npy") + " --output " + s("y.npy"), 2, "HOST:PORT"},
  };
  for (const auto& c : cases) {
    const Run r = tool(s, c.args);
    INFO(c.args << "\n" << r.out);
    CHECK(r.status == c.status);
    CHECK(r.out.find(c.says) != std::string::npos);
    CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);  // one line
  }
  // A wrong input shape names the input and the shape it needs.
  save_npy(s("wrong.npy"), Tensor<float>(Shape{2, 3, 6, 6}).cview());
  const Run w = tool(s, "run " + model + " --input " + s("wrong.npy") + " --output " + s("y.npy"));
  INFO(w.out);
  CHECK(w.status == 1);
  CHECK(w.out.find("does not fit input 'image' of shape [N, 2, 6, 6]") != std::string::npos);
}

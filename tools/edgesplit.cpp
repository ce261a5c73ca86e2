// edgesplit - a first look at splitting a model without writing C++.
//
//   edgesplit inspect MODEL
//   edgesplit run MODEL --input X.npy --output Y.npy [--cut T1,T2 --codec fp32|int8|int4|int2 [--per-channel] [--zstd]]
//   edgesplit split MODEL --cut T1[,T2] --head HEAD.onnx --tail TAIL.onnx
//   edgesplit plan MODEL --link wifi|lte|3g|RATE_MBPS[,RTT_MS] [--edge-profile F | --edge-slowdown X]
//                        [--cloud-profile F] [--accuracy-data X.npy Y.npy --max-loss POINTS]
//   edgesplit serve MODEL --cut T1[,T2] --port N [--host H] [--port-file F]
//   edgesplit edge MODEL --cut T1[,T2] --connect HOST:PORT --input X.npy --output Y.npy [--codec ...]
//
// MODEL is an ONNX file (.onnx) or an edgesplit graph saved as safetensors. Every argument is
// input from outside the process: a bad one stops the tool with a one-line message naming it
// and exit status 2; a failure while working (a file that does not parse, an unknown tensor name,
// a shape that does not fit) gives exit status 1.
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <edgesplit/edgesplit.hpp>
#include <edgesplit/eval/ground_truth.hpp>
#include <edgesplit/io/npy.hpp>
#include <edgesplit/io/onnx.hpp>
#include <edgesplit/io/onnx_export.hpp>
#include <edgesplit/plan/candidates.hpp>
#include <edgesplit/plan/graph_planner.hpp>
#include <edgesplit/plan/graph_profile.hpp>
#include <edgesplit/runtime/cloud_server.hpp>
#include <edgesplit/runtime/edge_client.hpp>
#include <edgesplit/transport/tcp.hpp>
#include <edgesplit/wire/protocol.hpp>
#if EDGESPLIT_TOOL_JSON
#include <edgesplit/io/profile_json.hpp>
#include <edgesplit/io/safetensors.hpp>
#endif

#include "../examples/cli.hpp"

using namespace edgesplit;

namespace {

// A usage mistake: exit status 2 (a failure while working is 1).
struct usage_error : error {
  explicit usage_error(const std::string& what) : error(errc::invalid_argument, what) {}
};

const char* const help_text[][2] = {
    {"inspect", "edgesplit inspect MODEL\n"
                "  Prints the model's inputs, nodes (kind, shape per sample, parameters, FLOPs) and every\n"
                "  candidate cut with the bytes it sends per sample at fp32, int8, int4 and int2.\n"},
    {"run", "edgesplit run MODEL --input X.npy[,X2.npy] --output Y.npy[,Y2.npy]\n"
            "               [--cut T1[,T2] --codec fp32|int8|int4|int2 [--per-channel] [--zstd]] [--repeat N]\n"
            "               [--labels L.npy] [--link wifi|lte|3g|RATE_MBPS[,RTT_MS] [--edge-slowdown X]]\n"
            "  Runs the model on the inputs (float32 .npy, axis 0 the batch) and writes its outputs. With\n"
            "  --cut, runs the head, sends the cut's tensors through the codec (encoded and decoded, as on\n"
            "  the wire) and runs the tail: the answer a split deployment gives. --repeat N runs the whole\n"
            "  model N more times on the same inputs and prints the median time of one run (one thread).\n"
            "  --labels (class indices, one per sample) prints the top-1 accuracy of the answers. --link\n"
            "  also sends the samples one by one through the runtime (edge client, simulated link, cloud\n"
            "  server) on a virtual clock, the edge this machine X times slower, and prints the measured\n"
            "  latency and bytes of one request.\n"},
    {"split", "edgesplit split MODEL --cut T1[,T2] --head HEAD.onnx --tail TAIL.onnx\n"
              "  Writes the head (inputs -> cut) and the tail (cut -> outputs) as ONNX files that any ONNX\n"
              "  engine can serve.\n"},
    {"plan", "edgesplit plan MODEL --link wifi|lte|3g|RATE_MBPS[,RTT_MS]\n"
             "               [--edge-profile F | --edge-slowdown X] [--cloud-profile F]\n"
             "               [--accuracy-data X.npy Y.npy --max-loss POINTS]\n"
             "  Measures every node on this machine (the cloud, unless --cloud-profile gives a profile\n"
             "  JSON), takes the edge from --edge-profile or as this machine --edge-slowdown times slower\n"
             "  (default 10), and prints the planner's pick of cut and codec for the link. With accuracy\n"
             "  data (inputs, and labels as class indices), picks among the plans that lose at most\n"
             "  POINTS percentage points of top-1 accuracy against the whole model.\n"},
    {"serve", "edgesplit serve MODEL --cut T1[,T2] --port N [--host 127.0.0.1] [--port-file F] [--model-id ID]\n"
              "  Serves the model's tail over TCP until SIGINT or SIGTERM. Port 0 picks a free port; --port-file\n"
              "  writes the port chosen.\n"},
    {"edge", "edgesplit edge MODEL --cut T1[,T2] --connect HOST:PORT --input X.npy --output Y.npy\n"
             "               [--codec fp32|int8|int4|int2 [--per-channel] [--zstd]] [--batch N] [--model-id ID]\n"
             "  Runs the head here, sends the cut to a `edgesplit serve` of the same model and cut, and\n"
             "  writes the tail's answers.\n"},
};

void print_help(const std::string& command) {
  for (const auto& h : help_text)
    if (command.empty() || command == h[0]) std::printf("%s\n", h[1]);
  if (command.empty())
    std::printf("MODEL is an ONNX file (.onnx) or an edgesplit graph in a .safetensors file.\n"
                "`edgesplit COMMAND --help` prints one command's help.\n");
}

// Options of one command: --name value, --flag, and positionals.
struct Args {
  std::string command;
  std::vector<std::string> positional;
  std::map<std::string, std::vector<std::string>> options;
  bool help = false;

  bool has(const std::string& k) const { return options.count(k) != 0; }
  const std::string& one(const std::string& k) const {
    const auto it = options.find(k);
    if (it == options.end()) throw usage_error("missing --" + k);
    return it->second.at(0);
  }
  std::string get(const std::string& k, const std::string& def) const { return has(k) ? one(k) : def; }
};

// Parses argv against the command's options: name -> number of values (0 for a flag).
Args parse(int argc, char** argv, const std::map<std::string, std::map<std::string, int>>& commands) {
  Args a;
  if (argc < 2) throw usage_error("no command (inspect, run, split, plan, serve, edge); see edgesplit --help");
  a.command = argv[1];
  if (a.command == "--help" || a.command == "-h" || a.command == "help") {
    a.help = true;
    a.command.clear();
    return a;
  }
  const auto c = commands.find(a.command);
  if (c == commands.end()) throw usage_error("unknown command '" + a.command + "'; see edgesplit --help");
  for (int i = 2; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--help" || k == "-h") {
      a.help = true;
      continue;
    }
    if (k.rfind("--", 0) != 0) {
      a.positional.push_back(k);
      continue;
    }
    const auto o = c->second.find(k.substr(2));
    if (o == c->second.end()) throw usage_error("unknown option " + k + " for '" + a.command + "'");
    if (a.options.count(o->first)) throw usage_error("option " + k + " given twice");
    auto& values = a.options[o->first];
    for (int v = 0; v < o->second; ++v) {
      if (i + 1 >= argc) throw usage_error("option " + k + " needs " + std::to_string(o->second) + " value(s)");
      values.push_back(argv[++i]);
    }
  }
  if (!a.help && a.positional.size() != 1) throw usage_error("'" + a.command + "' takes one MODEL");
  return a;
}

std::vector<std::string> split_list(const std::string& s, const char* what) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = s.find(',', start);
    out.push_back(s.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (out.back().empty()) throw usage_error(std::string(what) + ": empty item in '" + s + "'");
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

Graph<float> load_model(const std::string& path) {
  if (!std::filesystem::is_regular_file(path)) fail(errc::io_error, "no model file '" + path + "'");
  const std::string ext = std::filesystem::path(path).extension().string();
  if (ext == ".onnx") return import_onnx(path).graph;
#if EDGESPLIT_TOOL_JSON
  if (ext == ".safetensors") return load_graph_safetensors<float>(path);
#endif
  throw usage_error("'" + path + "': MODEL is an .onnx file" +
                    std::string(EDGESPLIT_TOOL_JSON ? " or a graph in a .safetensors file" : ""));
}

// The codec options of run and edge.
CodecConfig codec_from(const Args& a) {
  CodecConfig c;
  const std::string name = a.get("codec", "fp32");
  if (name == "fp32") c.bits = wire::raw_f32_bits;
  else if (name == "int8") c.bits = 8;
  else if (name == "int4") c.bits = 4;
  else if (name == "int2") c.bits = 2;
  else throw usage_error("--codec must be fp32, int8, int4 or int2, got '" + name + "'");
  if (a.has("per-channel")) {
    if (c.bits == wire::raw_f32_bits) throw usage_error("--per-channel needs a quantizing codec (int8, int4, int2)");
    c.granularity = Granularity::per_channel;
  }
  if (a.has("zstd")) {
#if EDGESPLIT_HAS_ZSTD
    c.lossless = wire::Lossless::zstd;
#else
    fail(errc::unsupported, "this build has no zstd (EDGESPLIT_WITH_ZSTD)");
#endif
  }
  return c;
}

// Reads one .npy per model input, checked against the input's shape (any batch, equal for all).
std::vector<Tensor<float>> read_inputs(const Graph<float>& g, const std::string& list) {
  const auto files = split_list(list, "--input");
  const auto names = g.input_names();
  if (files.size() != names.size())
    throw usage_error("--input: the model has " + std::to_string(names.size()) + " input(s), got " + std::to_string(files.size()) + " file(s)");
  std::vector<Tensor<float>> xs;
  for (std::size_t k = 0; k < files.size(); ++k) {
    Tensor<float> t = read_npy(files[k]);
    const Shape& want = g.sample_shape(names[k]);
    // An ONNX input [N] runs as [N, 1]: accept the file's [N] for it.
    if (t.shape().rank() == 1 && want == Shape{1}) t.resize(Shape{t.shape()[0], 1});
    if (t.shape().rank() < 1 || t.shape().batch() == 0 || !(g.shape(names[k], t.shape().batch()) == t.shape()))
      fail(errc::shape_mismatch, files[k] + ": shape " + t.shape().str() + " does not fit input '" + names[k] +
                                     "' of shape [N, " + want.str().substr(1));
    if (k > 0 && t.shape().batch() != xs[0].shape().batch())
      fail(errc::shape_mismatch, files[k] + ": batch " + std::to_string(t.shape().batch()) + " differs from " + files[0] + "'s");
    xs.push_back(std::move(t));
  }
  return xs;
}

void write_outputs(const std::vector<Tensor<float>>& ys, const std::string& list) {
  const auto files = split_list(list, "--output");
  if (files.size() != ys.size())
    throw usage_error("--output: the model has " + std::to_string(ys.size()) + " output(s), got " + std::to_string(files.size()) + " file(s)");
  for (std::size_t k = 0; k < ys.size(); ++k) save_npy(files[k], ys[k].cview());
}

std::vector<Tensor<float>> forward_all(Graph<float>& g, const std::vector<TensorView<const float>>& in) {
  g.forward(std::span<const TensorView<const float>>(in.data(), in.size()));
  std::vector<Tensor<float>> out;
  for (std::size_t k = 0; k < g.output_names().size(); ++k) {
    const TensorView<const float> y = g.result(k);
    Tensor<float> t(y.shape());
    std::copy_n(y.data(), y.size(), t.data());
    out.push_back(std::move(t));
  }
  return out;
}

// Head -> codec (encode and decode every crossing tensor) -> tail; bytes per batch in `bytes`.
std::vector<Tensor<float>> run_split(Graph<float>& head, Graph<float>& tail, const std::vector<TensorView<const float>>& in,
                                     const CodecConfig& cc, std::size_t* bytes = nullptr) {
  const std::vector<Tensor<float>> feats = forward_all(head, in);
  FeatureCodec codec(cc);
  std::vector<Tensor<float>> back(feats.size());
  std::vector<std::byte> frame;
  std::size_t total = 0;
  // The tail reads the cut's tensors by name, the head writes them in its output order.
  const auto head_out = head.output_names();
  std::vector<TensorView<const float>> tin;
  for (const std::string& name : tail.input_names()) {
    const std::size_t k = static_cast<std::size_t>(std::find(head_out.begin(), head_out.end(), name) - head_out.begin());
    codec.encode(feats[k].cview(), frame);
    total += frame.size();
    codec.decode(frame, back[k]);
    tin.push_back(back[k].cview());
  }
  if (bytes) *bytes = total;
  return forward_all(tail, tin);
}

std::vector<TensorView<const float>> views(const std::vector<Tensor<float>>& ts) {
  std::vector<TensorView<const float>> v;
  for (const auto& t : ts) v.push_back(t.cview());
  return v;
}

// ---- inspect -------------------------------------------------------------------------------------

int inspect(const Args& a) {
  Graph<float> g = load_model(a.positional[0]);
  std::printf("%s: %zu nodes, %zu parameters, %.3f MFLOPs per sample\n", a.positional[0].c_str(), g.node_count(),
              g.parameter_count(), static_cast<double>(g.flops(1)) / 1e6);
  std::printf("%s", g.describe().c_str());
  std::printf("\nbytes per sample a cut sends, by codec (payload; each frame adds a header):\n");
  std::printf("  %-4s %12s %12s %12s %12s  %s\n", "cut", "fp32", "int8", "int4", "int2", "tensors");
  const auto cuts = g.candidate_cuts();
  for (std::size_t k = 0; k < cuts.size(); ++k) {
    std::size_t elements = 0;
    for (const auto& t : cuts[k].tensors) elements += g.sample_shape(t).count();
    std::string names;
    for (const auto& t : cuts[k].tensors) names += (names.empty() ? "" : ", ") + t;
    std::printf("  %-4zu %12zu %12zu %12zu %12zu  %s\n", k, elements * 4, elements, (elements + 1) / 2, (elements + 3) / 4,
                names.c_str());
  }
  return 0;
}

// ---- run -----------------------------------------------------------------------------------------

LinkProfile link_from(const std::string& s);
std::vector<std::size_t> read_labels(const std::string& path, std::size_t n, std::size_t classes);
double top1(const Tensor<float>& logits, const std::vector<std::size_t>& labels);

// The top-1 accuracy of the first output against --labels, when given.
void report_accuracy(const Args& a, const std::vector<Tensor<float>>& ys, const char* what) {
  if (!a.has("labels")) return;
  const Tensor<float>& y = ys.at(0);
  const auto labels = read_labels(a.one("labels"), y.shape().batch(), y.size() / y.shape().batch());
  std::printf("top-1 accuracy of %s on %zu samples: %.2f%%\n", what, labels.size(), top1(y, labels));
}

int run(const Args& a) {
  Graph<float> g = load_model(a.positional[0]);
  const std::vector<Tensor<float>> xs = read_inputs(g, a.one("input"));
  if ((a.has("link") || a.has("edge-slowdown")) && !a.has("cut")) throw usage_error("--link and --edge-slowdown need --cut");
  if (!a.has("cut")) {
    if (a.has("codec") || a.has("per-channel") || a.has("zstd")) throw usage_error("--codec, --per-channel and --zstd need --cut");
    const std::vector<Tensor<float>> ys = forward_all(g, views(xs));
    write_outputs(ys, a.one("output"));
    report_accuracy(a, ys, "the whole model");
    if (a.has("repeat")) {
      const std::size_t n = cli::number<std::size_t>(a.one("repeat"), "--repeat", 1, 100000);
      const auto in = views(xs);
      std::vector<double> ms;
      for (std::size_t r = 0; r < n; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        g.forward(std::span<const TensorView<const float>>(in.data(), in.size()));
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
      std::nth_element(ms.begin(), ms.begin() + static_cast<std::ptrdiff_t>(n / 2), ms.end());
      std::printf("median of %zu runs at batch %zu: %.3f ms\n", n, xs[0].shape().batch(), ms[n / 2]);
    }
    return 0;
  }
  if (a.has("repeat")) throw usage_error("--repeat times the whole model: drop --cut");
  const CodecConfig cc = codec_from(a);
  const std::vector<std::string> cut = split_list(a.one("cut"), "--cut");
  auto [head, tail] = g.cut(cut);
  std::size_t bytes = 0;
  const std::vector<Tensor<float>> ys = run_split(head, tail, views(xs), cc, &bytes);
  write_outputs(ys, a.one("output"));
  std::printf("%zu samples, %zu bytes crossed (%.1f per sample)\n", xs[0].shape().batch(), bytes,
              static_cast<double>(bytes) / static_cast<double>(xs[0].shape().batch()));
  report_accuracy(a, ys, ("the split at " + a.one("cut") + ", " + a.get("codec", "fp32")).c_str());
  if (a.has("link")) {
    if (xs.size() != 1) fail(errc::unsupported, "--link measures models of one input");
    const LinkProfile link = link_from(a.one("link"));
    GroundTruthOptions gt;
    gt.requests = std::min<std::size_t>(xs[0].shape().batch(), 15);
    gt.warmup = 2;
    gt.edge_slowdown = cli::number<double>(a.get("edge-slowdown", "1"), "--edge-slowdown", 1, 1e6);
    const Measured m = measure_graph_cut(g, cut, CodecSpec{a.get("codec", "fp32"), cc}, xs[0].cview(), link, link, gt);
    std::printf("on %s, edge %sx slower than this machine, one sample per request (median of %zu):\n"
                "  latency %.2f ms = edge %.2f + encode %.2f + uplink %.2f + cloud %.2f + downlink %.2f + decode %.2f; %.0f bytes sent\n",
                link.name.c_str(), a.get("edge-slowdown", "1").c_str(), gt.requests, 1e3 * m.latency_s, 1e3 * m.edge_s,
                1e3 * m.encode_s, 1e3 * m.uplink_s, 1e3 * m.cloud_s, 1e3 * m.downlink_s, 1e3 * m.decode_reply_s, m.bytes);
  }
  return 0;
}

// ---- split ---------------------------------------------------------------------------------------

int split(const Args& a) {
  Graph<float> g = load_model(a.positional[0]);
  auto [head, tail] = g.cut(split_list(a.one("cut"), "--cut"));
  save_onnx(head, a.one("head"));
  save_onnx(tail, a.one("tail"));
  std::printf("head: %zu nodes -> %s\ntail: %zu nodes -> %s\n", head.node_count(), a.one("head").c_str(), tail.node_count(),
              a.one("tail").c_str());
  return 0;
}

// ---- plan ----------------------------------------------------------------------------------------

LinkProfile link_from(const std::string& s) {
  for (const LinkProfile& p : LinkProfile::presets())
    if (p.name == s) return p;
  const auto parts = split_list(s, "--link");
  if (parts.size() > 2) throw usage_error("--link is wifi, lte, 3g or RATE_MBPS[,RTT_MS], got '" + s + "'");
  LinkProfile p;
  p.name = s;
  p.bandwidth_bps = cli::number<double>(parts[0], "--link rate (Mbit/s)", 0.001, 1e6) * 1e6;
  const double rtt_ms = parts.size() == 2 ? cli::number<double>(parts[1], "--link RTT (ms)", 0, 1e5) : 20;
  p.latency = LinkProfile::seconds_to_duration(rtt_ms / 2e3);
  return p;
}

// Labels as class indices, one per sample ([N] or [N, 1] float32 holding whole numbers).
std::vector<std::size_t> read_labels(const std::string& path, std::size_t n, std::size_t classes) {
  const Tensor<float> y = read_npy(path);
  if (y.shape().batch() != n || y.size() != n)
    fail(errc::shape_mismatch, path + ": " + std::to_string(n) + " labels expected ([N] or [N, 1]), got " + y.shape().str());
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < n; ++i) {
    const float v = y[i];
    if (!(v >= 0 && v < static_cast<float>(classes) && v == std::floor(v)))
      fail(errc::invalid_argument, path + ": label " + std::to_string(v) + " at " + std::to_string(i) + " is not a class index below " +
                                       std::to_string(classes));
    out.push_back(static_cast<std::size_t>(v));
  }
  return out;
}

double top1(const Tensor<float>& logits, const std::vector<std::size_t>& labels) {
  const std::size_t n = logits.shape().batch(), c = logits.size() / n;
  std::size_t right = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const float* row = logits.data() + i * c;
    right += static_cast<std::size_t>(std::max_element(row, row + c) - row) == labels[i];
  }
  return 100.0 * static_cast<double>(right) / static_cast<double>(n);
}

int plan(const Args& a) {
  Graph<float> g = load_model(a.positional[0]);
  if (g.input_names().size() != 1 || g.output_names().size() != 1)
    fail(errc::unsupported, "plan takes models of one input and one output");
  const LinkProfile link = link_from(a.one("link"));
  if (a.has("edge-profile") && a.has("edge-slowdown")) throw usage_error("--edge-profile and --edge-slowdown exclude each other");
  if (a.has("accuracy-data") != a.has("max-loss")) throw usage_error("--accuracy-data and --max-loss go together");
  ProfileOptions po;
  po.runs = 11;
  po.device = "this machine";
  DeviceProfile cloud, edge;
#if EDGESPLIT_TOOL_JSON
  if (a.has("cloud-profile")) cloud = load_profile(a.one("cloud-profile"));
  if (a.has("edge-profile")) edge = load_profile(a.one("edge-profile"));
#else
  if (a.has("cloud-profile") || a.has("edge-profile")) fail(errc::unsupported, "this build reads no profile JSON (EDGESPLIT_WITH_JSON)");
#endif
  if (!a.has("cloud-profile") || !a.has("edge-profile")) {
    const DeviceProfile here = profile_graph(g, po);  // this machine, node by node
    if (!a.has("cloud-profile")) cloud = here;
    if (!a.has("edge-profile")) {
      const std::string f = a.get("edge-slowdown", "10");
      edge = scaled(here, cli::number<double>(f, "--edge-slowdown", 0.01, 1e6), "this machine, " + f + "x slower");
    }
  }
  GraphPlanRequest req;
  const std::size_t out_elems = g.sample_shape(g.output_names()[0]).count();
  req.response_bytes_per_sample = static_cast<double>(out_elems * 4 + wire::frame_header_size + 64);
  std::printf("%s on %s (%.2f Mbit/s, RTT %.1f ms); edge: %s; cloud: %s\n", a.positional[0].c_str(), link.name.c_str(),
              link.bandwidth_bps / 1e6, 2e3 * std::chrono::duration<double>(link.latency).count(), edge.device.c_str(),
              cloud.device.c_str());
  struct Option {
    GraphPlan plan;
    CodecConfig codec;
    double accuracy = -1;
  };
  std::vector<Option> options;
  const struct {
    const char* name;
    int bits;
    double bytes;
  } codecs[] = {{"fp32", wire::raw_f32_bits, 4}, {"int8", 8, 1}, {"int4", 4, 0.5}, {"int2", 2, 0.25}};
  for (const auto& c : codecs) {
    req.codec.name = c.name;
    req.codec.bytes_per_element = c.bytes;
    req.codec.bytes_per_tensor = static_cast<double>(wire::frame_header_size + 32);
    Option o;
    o.plan = plan_graph_cut(g, edge, cloud, link_model(link), req);
    o.codec.bits = c.bits;
    options.push_back(std::move(o));
  }
  double whole = -1;
  if (a.has("accuracy-data")) {
    const Tensor<float> x = read_npy(a.options.at("accuracy-data")[0]);
    if (!(g.shape(g.input_names()[0], std::max<std::size_t>(x.shape().batch(), 1)) == x.shape()))
      fail(errc::shape_mismatch, a.options.at("accuracy-data")[0] + ": shape " + x.shape().str() + " does not fit the model's input");
    const std::size_t classes = out_elems;
    const auto labels = read_labels(a.options.at("accuracy-data")[1], x.shape().batch(), classes);
    whole = top1(g.predict(x.cview()), labels);
    for (Option& o : options) {
      if (o.plan.all_edge) {
        o.accuracy = whole;
        continue;
      }
      auto [head, tail] = g.cut(o.plan.cut);
      o.accuracy = top1(run_split(head, tail, {x.cview()}, o.codec)[0], labels);
    }
  }
  const double max_loss = a.has("max-loss") ? cli::number<double>(a.one("max-loss"), "--max-loss", 0, 100) : 100;
  std::printf("\n  %-6s %10s %10s %10s %10s %9s  %s\n", "codec", "latency", "edge", "transfer", "cloud", "top-1", "cut");
  const Option* best = nullptr;
  bool all_edge_shown = false;
  for (const Option& o : options) {
    if (o.plan.all_edge && std::exchange(all_edge_shown, true)) continue;  // one row for "send nothing"
    std::string cut;
    for (const auto& t : o.plan.cut) cut += (cut.empty() ? "" : ", ") + t;
    if (o.plan.all_edge) cut = "(all on the edge)";
    char acc[32] = "-";
    if (o.accuracy >= 0) std::snprintf(acc, sizeof acc, "%.2f%%", o.accuracy);
    std::printf("  %-6s %8.2fms %8.2fms %8.2fms %8.2fms %9s  %s\n", o.plan.codec.c_str(), 1e3 * o.plan.latency_s,
                1e3 * o.plan.edge_s, 1e3 * o.plan.transfer_s, 1e3 * o.plan.cloud_s, acc, cut.c_str());
    const bool ok = o.accuracy < 0 || whole - o.accuracy <= max_loss;
    if (ok && (!best || o.plan.latency_s < best->plan.latency_s)) best = &o;
  }
  if (whole >= 0) std::printf("\nthe whole model: %.2f%% top-1; budget: lose at most %.2f points\n", whole, max_loss);
  std::string cut;
  for (const auto& t : best->plan.cut) cut += (cut.empty() ? "" : ",") + t;
  if (best->plan.all_edge) std::printf("\npick: run everything on the edge (%.2f ms)\n", 1e3 * best->plan.latency_s);
  else
    std::printf("\npick: --cut %s --codec %s (%.2f ms, %.0f bytes per request)\n", cut.c_str(), best->plan.codec.c_str(),
                1e3 * best->plan.latency_s, best->plan.bytes);
  return 0;
}

// ---- serve and edge ------------------------------------------------------------------------------

wire::ModelIdentity identity(const Args& a, const Graph<float>& head) {
  return {a.get("model-id", "model"), 1, 0, static_cast<std::uint16_t>(std::min<std::size_t>(head.node_count(), UINT16_MAX))};
}

int serve(const Args& a) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  const auto port = static_cast<std::uint16_t>(cli::number<std::size_t>(a.one("port"), "--port", 0, 65535));
  Graph<float> g = load_model(a.positional[0]);
  auto [head, tail] = g.cut(split_list(a.one("cut"), "--cut"));
  if (tail.empty()) fail(errc::invalid_argument, "the cut leaves the tail empty: nothing to serve");
  ServerOptions so;
  CloudServer server(so);
  server.register_model(identity(a, head), std::move(tail));
  auto listener = TcpListener::bind(a.get("host", "127.0.0.1"), port);
  const std::uint16_t bound = listener.port();
  server.listen(std::move(listener));
  if (a.has("port-file")) {
    std::ofstream f(a.one("port-file"));
    f << bound << "\n";
    if (!f) fail(errc::io_error, "cannot write " + a.one("port-file"));
  }
  std::printf("serving the tail of %s (model id '%s') on %s:%u\n", a.positional[0].c_str(), a.get("model-id", "model").c_str(),
              a.get("host", "127.0.0.1").c_str(), static_cast<unsigned>(bound));
  std::fflush(stdout);
  int sig = 0;
  sigwait(&signals, &sig);
  server.shutdown(std::chrono::seconds(5));
  std::printf("stopped\n");
  return 0;
}

int edge(const Args& a) {
  Graph<float> g = load_model(a.positional[0]);
  if (g.output_names().size() != 1) fail(errc::unsupported, "edge takes models of one output");
  const std::string target = a.one("connect");
  const std::size_t colon = target.rfind(':');
  if (colon == std::string::npos || colon == 0) throw usage_error("--connect is HOST:PORT, got '" + target + "'");
  const std::string host = target.substr(0, colon);
  const auto port = static_cast<std::uint16_t>(cli::number<std::size_t>(target.substr(colon + 1), "--connect port", 1, 65535));
  const std::size_t batch = cli::number<std::size_t>(a.get("batch", "8"), "--batch", 1, 4096);
  const std::vector<Tensor<float>> xs = read_inputs(g, a.one("input"));
  if (xs.size() != 1) fail(errc::unsupported, "edge takes models of one input");
  auto [head, tail] = g.cut(split_list(a.one("cut"), "--cut"));
  EdgeOptions eo;
  eo.model = identity(a, head);
  eo.codec = codec_from(a);
  EdgeClient client(std::move(head), [host, port] {
    return Channel(TcpTransport::connect(host, port, deadline_after(std::chrono::seconds(5))));
  }, eo);
  if (!client.connected()) fail(errc::unreachable, "cannot reach " + target + ": " + client.last_error());
  const std::size_t n = xs[0].shape().batch();
  Tensor<float> out;
  std::size_t bytes = 0;
  for (std::size_t b = 0; b < n; b += batch) {
    const std::size_t e = std::min(n, b + batch);
    InferResult r = client.infer(xs[0].batch(b, e), deadline_after(std::chrono::seconds(30)));
    if (r.path != AnswerPath::cloud) fail(r.fallback_reason.value_or(errc::unreachable), "the cloud did not answer: " + r.fallback_message);
    if (b == 0) out.resize(r.output.shape().with_batch(n));
    std::copy_n(r.output.data(), r.output.size(), out.data() + b * (out.size() / n));
    bytes += r.bytes_sent;
  }
  save_npy(a.one("output"), out.cview());
  std::printf("%zu samples answered by %s, %zu bytes sent\n", n, target.c_str(), bytes);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::map<std::string, std::map<std::string, int>> commands = {
      {"inspect", {}},
      {"run", {{"input", 1}, {"output", 1}, {"cut", 1}, {"codec", 1}, {"per-channel", 0}, {"zstd", 0}, {"repeat", 1}, {"labels", 1},
              {"link", 1}, {"edge-slowdown", 1}}},
      {"split", {{"cut", 1}, {"head", 1}, {"tail", 1}}},
      {"plan", {{"link", 1}, {"edge-profile", 1}, {"edge-slowdown", 1}, {"cloud-profile", 1}, {"accuracy-data", 2}, {"max-loss", 1}}},
      {"serve", {{"cut", 1}, {"port", 1}, {"host", 1}, {"port-file", 1}, {"model-id", 1}}},
      {"edge", {{"cut", 1}, {"connect", 1}, {"input", 1}, {"output", 1}, {"codec", 1}, {"per-channel", 0}, {"zstd", 0}, {"batch", 1}, {"model-id", 1}}},
  };
  Args a;
  try {
    a = parse(argc, argv, commands);
    if (a.help) {
      print_help(a.command);
      return 0;
    }
    if (a.command == "inspect") return inspect(a);
    if (a.command == "run") return run(a);
    if (a.command == "split") return split(a);
    if (a.command == "plan") return plan(a);
    if (a.command == "serve") return serve(a);
    return edge(a);
  } catch (const usage_error& e) {
    std::fprintf(stderr, "edgesplit: %s\n", e.what());
    return 2;
  } catch (const error& e) {
    std::fprintf(stderr, "edgesplit %s: %s\n", a.command.c_str(), e.what());
    return e.code() == errc::invalid_argument && std::string(e.what()).find("--") != std::string::npos ? 2 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "edgesplit %s: %s\n", a.command.c_str(), e.what());
    return 1;
  }
}

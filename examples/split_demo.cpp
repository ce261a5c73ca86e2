// split_demo: split inference end to end, in one binary, on Fashion-MNIST.
//
// Trains (or loads from its cache file) a model, cuts it, and serves the tail from a CloudServer
// while an EdgeClient runs the head. --model mlp (the default) is a 784-256-128-10 MLP cut after
// its first hidden layer; --model cnn is the CNN of examples/fmnist_cnn.hpp (convolutions,
// BatchNorm, pooling, a residual block), a graph cut after --split K of its nodes (default 13,
// after the second pooling; a cut inside the residual block sends two tensors). Edge and cloud
// talk over in-process transports shaped by a SimulatedLink with the Wi-Fi, LTE and 3G uplink
// presets (Neurosurgeon's bandwidths), and over TCP on 127.0.0.1. For each link it reports test
// accuracy through the real wire path (quantized features), bytes per request, and where the
// time of a single-image request goes: edge compute, encode, network, cloud queue and compute,
// decode.
//
//   split_demo [--model mlp|cnn] [--epochs N] [--bits 32|8|4|2] [--split K] [--limit N]
//              [--requests N] [--subset N] [--cache FILE] [--data DIR]
//
// --subset N trains a model that is not cached on the first N training images only (quick runs).
//
// Exit status: 0 on success, 2 on bad arguments, 77 when the data set is missing, 1 otherwise.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <unistd.h>

#include <edgesplit/edgesplit.hpp>
#include <edgesplit/io/idx.hpp>
#include <edgesplit/runtime/cloud_server.hpp>
#include <edgesplit/runtime/edge_client.hpp>
#include <edgesplit/transport/inproc.hpp>
#include <edgesplit/transport/simulated_link.hpp>
#include <edgesplit/transport/tcp.hpp>

#include "fmnist_cnn.hpp"
#include "fmnist_mlp.hpp"
#include "cli.hpp"
#include "fmnist_main.hpp"

using namespace edgesplit;
using namespace std::chrono_literals;

namespace {

struct Args {
  bool cnn = false;
  static constexpr std::size_t unset = static_cast<std::size_t>(-1);
  std::size_t epochs = 0, split = unset, limit = 10000, requests = 40, subset = 0;  // epochs 0, split unset: the model's default
  int bits = 8;
  std::filesystem::path cache;  // empty: the model's default
  std::filesystem::path data = fashion_mnist_dir;
};

Args parse(int argc, char** argv) {
  Args a;
  cli::options(argc, argv, [&](std::string_view k, std::string_view v) {
    if (k == "--model") {
      if (v != "mlp" && v != "cnn") fail(errc::invalid_argument, "--model must be mlp or cnn");
      a.cnn = v == "cnn";
    } else if (k == "--epochs") a.epochs = cli::number<std::size_t>(v, "--epochs", 1, 200);
    else if (k == "--split") a.split = cli::number<std::size_t>(v, "--split", 0, 1000);
    else if (k == "--limit") a.limit = cli::number<std::size_t>(v, "--limit", 1, 10000);
    else if (k == "--requests") a.requests = cli::number<std::size_t>(v, "--requests", 1, 100000);
    else if (k == "--subset") a.subset = cli::number<std::size_t>(v, "--subset", 1, 60000);
    else if (k == "--bits") {
      a.bits = static_cast<int>(cli::number<std::size_t>(v, "--bits", 2, 32));
      if (a.bits != 32 && a.bits != 8 && a.bits != 4 && a.bits != 2) fail(errc::invalid_argument, "--bits must be 32, 8, 4 or 2");
    } else if (k == "--cache") a.cache = std::string(v);
    else if (k == "--data") a.data = std::string(v);
    else fail(errc::invalid_argument, "unknown option " + std::string(k));
  });
  if (a.split == Args::unset) a.split = a.cnn ? 13 : 2;
  if (a.epochs == 0) a.epochs = a.cnn ? 15 : 4;
  if (a.cache.empty())
    a.cache = std::filesystem::temp_directory_path() /
              (a.cnn ? "edgesplit-split-demo-cnn.safetensors" : "edgesplit-split-demo-mlp.safetensors");
  return a;
}

// A one-line progress bar on stderr, redrawn in place on a terminal.
void progress(const char* what, std::size_t done, std::size_t total) {
  if (!isatty(STDERR_FILENO) && done != total) return;
  const int width = 30, filled = static_cast<int>(width * done / std::max<std::size_t>(total, 1));
  std::fprintf(stderr, "\r  %-24s [%.*s%*s] %zu/%zu", what, filled, "##############################", width - filled, "",
               done, total);
  if (done == total) std::fputc('\n', stderr);
}

std::size_t argmax(const float* p, std::size_t n) { return static_cast<std::size_t>(std::max_element(p, p + n) - p); }

struct Row {
  std::string link;
  double accuracy = 0, bytes = 0, head = 0, encode = 0, network = 0, queue = 0, compute = 0, decode = 0, total = 0;
  std::size_t fallbacks = 0;
};

// Serves `tail` and runs `head` over a simulated `link`, or over TCP on 127.0.0.1 without one.
template <class Model>
Row run_link(const std::optional<LinkProfile>& link, const Args& a, const Model& head, const Model& tail,
             const Dataset<float>& test) {
  const wire::ModelIdentity id{a.cnn ? "fmnist-cnn" : "fmnist-mlp", 1, 0, static_cast<std::uint16_t>(a.split)};
  ServerOptions so;
  so.max_queue_delay = std::chrono::microseconds(0);  // one request at a time: nothing to wait for
  CloudServer server(so);
  server.register_model(id, tail);
  EdgeOptions eo;
  eo.model = id;
  eo.codec.bits = a.bits;
  std::uint64_t seed = 1;
  EdgeClient::Connector connect;
  if (link) {
    connect = [&] {
      auto [edge_end, cloud_end] = InProcTransport::make_pair();
      server.serve(SimulatedLink<InProcTransport>(std::move(cloud_end), *link, seed++));
      return Channel(SimulatedLink<InProcTransport>(std::move(edge_end), *link, seed++));
    };
  } else {
    auto listener = TcpListener::bind("127.0.0.1", 0);
    const std::uint16_t port = listener.port();
    server.listen(std::move(listener));
    connect = [port] { return Channel(TcpTransport::connect("127.0.0.1", port)); };
  }
  EdgeClient client(head, connect, eo);
  Row r;
  r.link = link ? link->name : "tcp";

  // Accuracy over the test images, in batches of 500 (CNN: 100) per request.
  const std::size_t n = std::min(a.limit, test.size()), step = a.cnn ? 100 : 500;
  std::size_t correct = 0;
  for (std::size_t b = 0; b < n; b += step) {
    const std::size_t e = std::min(n, b + step);
    const InferResult res = client.infer(test.inputs.batch(b, e), deadline_after(60s));
    if (res.path != AnswerPath::cloud) fail(errc::unreachable, "the cloud did not answer: " + res.fallback_message);
    for (std::size_t i = b; i < e; ++i) correct += argmax(res.output.data() + (i - b) * 10, 10) == std::size_t(test.labels[i]);
    progress((r.link + ": accuracy").c_str(), e, n);
  }
  r.accuracy = 100.0 * double(correct) / double(n);

  // Latency of single-image requests, one at a time.
  for (std::size_t i = 0; i < a.requests; ++i) {
    const InferResult res = client.infer(test.inputs.batch(i % n, i % n + 1), deadline_after(10s));
    if (res.path != AnswerPath::cloud) ++r.fallbacks;
    const auto& t = res.timings;
    r.bytes += double(res.bytes_sent);
    r.head += t.head;
    r.encode += t.encode;
    r.network += t.network();
    r.queue += t.server_queue;
    r.compute += t.server_compute;
    r.decode += t.decode;
    progress((r.link + ": latency").c_str(), i + 1, a.requests);
  }
  const double k = 1.0 / double(a.requests);
  for (double* v : {&r.bytes, &r.head, &r.encode, &r.network, &r.queue, &r.compute, &r.decode}) *v *= k;
  r.total = r.head + r.encode + r.network + r.queue + r.compute + r.decode;
  return r;
}

// Runs the model locally, then split over every link, and prints the table.
template <class Model>
void demo(const Args& a, Model& model, const Model& head, const Model& tail, const Dataset<float>& test,
          const std::string& cut) {
  const std::size_t n = std::min(a.limit, test.size());
  std::size_t correct = 0;
  for (std::size_t b = 0; b < n; b += 500) {  // in batches: a CNN's early feature maps are large
    const std::size_t e = std::min(n, b + 500);
    const TensorView<const float> local = model.forward(test.inputs.batch(b, e));
    for (std::size_t i = b; i < e; ++i) correct += argmax(local.data() + (i - b) * 10, 10) == std::size_t(test.labels[i]);
  }
  const double float_acc = 100.0 * double(correct) / double(n);
  std::printf("\nsplit %s; %d-bit features on the wire\n", cut.c_str(), a.bits);
  std::printf("test accuracy, float model run locally on %zu images: %.2f%%\n\n", n, float_acc);

  std::vector<Row> rows;
  for (const auto& link : LinkProfile::presets()) rows.push_back(run_link(std::optional<LinkProfile>(link), a, head, tail, test));
  rows.push_back(run_link(std::optional<LinkProfile>(), a, head, tail, test));

  std::printf("\n%-6s %9s %10s | %-51s | %9s\n", "link", "accuracy", "bytes/req",
              "mean ms per single-image request: edge  encode  network  queue  cloud  decode", "total ms");
  for (const auto& r : rows)
    std::printf("%-6s %8.2f%% %10.0f | %40.3f %7.3f %8.2f %6.3f %6.3f %7.3f | %9.2f%s\n", r.link.c_str(), r.accuracy,
                r.bytes, 1e3 * r.head, 1e3 * r.encode, 1e3 * r.network, 1e3 * r.queue, 1e3 * r.compute,
                1e3 * r.decode, 1e3 * r.total, r.fallbacks ? "  (some fallbacks)" : "");
  std::printf("\nnetwork = round trip minus the cloud's queue and compute time (serialization at the link rate "
              "and propagation, both ways); tcp = loopback, no link model\n");
}

}  // namespace

int main(int argc, char** argv) {
  return edgesplit_examples::fmnist_main("split_demo", argc, argv, parse, [&](Args& a) {
    auto [full, test] = load_fashion_mnist<float>(a.data);
    Dataset<float> train = a.subset ? full.slice(0, std::min(a.subset, full.size())) : std::move(full);
    if (a.cnn) {
      Graph<float> model = edgesplit_examples::fmnist_cnn(a.cache, a.epochs, edgesplit_examples::as_images(std::move(train)),
                                                          edgesplit_examples::as_images(Dataset<float>(test)));
      const auto cuts = model.candidate_cuts();
      if (a.split >= cuts.size()) fail(errc::invalid_argument, "--split past the CNN's " + std::to_string(cuts.size() - 1) + " nodes");
      std::string sent;
      for (const auto& t : cuts[a.split].tensors) sent += (sent.empty() ? "" : ", ") + t;
      auto [head, tail] = model.split(a.split);
      demo(a, model, head, tail, edgesplit_examples::as_images(std::move(test)),
           "after " + std::to_string(a.split) + " nodes the edge sends {" + sent + "}, " +
               std::to_string(cuts[a.split].bytes / sizeof(float)) + " floats per image");
    } else {
      Sequential<float> model = edgesplit_examples::fmnist_mlp(a.cache, a.epochs, train, test);
      if (a.split > model.size()) fail(errc::invalid_argument, "--split past the model's " + std::to_string(model.size()) + " layers");
      auto [head, tail] = model.split(a.split);
      const auto info = model.describe(Shape{1, 784});
      demo(a, model, head, tail, test,
           "after layer " + std::to_string(a.split) + " (" + (a.split ? info[a.split - 1].name : std::string("input")) +
               ") the edge sends " + std::to_string(head.output_shape(Shape{1, 784}).count()) + " floats per image");
    }
    return 0;
  });
}

// edge_node: the edge half of split inference, as its own process.
//
// Loads the same model as cloud_node, runs the layers before --split locally, sends the
// features to the cloud node over TCP and classifies Fashion-MNIST test images; falls back to the
// whole model locally when the cloud does not answer in time.
//
//   edge_node [--model FILE] [--split K] [--host 127.0.0.1] [--port 7000] [--bits 8]
//             [--limit 1000] [--timeout-ms 500] [--data DIR]
//             [--tls-ca FILE [--tls-cert FILE --tls-key FILE]] [--metrics-file FILE]
//             [--oip-grpc HOST:PORT [--oip-model NAME] [--oip-version V]]
//
// With --tls-ca it speaks TLS 1.3 and accepts only a server certificate of that CA for --host;
// --tls-cert and --tls-key present a client certificate (for a cloud node that asks for one).
// --metrics-file writes the edge client's metrics (answers by path, reconnections, the link
// estimate) in the Prometheus text format when the run ends, replacing FILE at once: the form
// node_exporter's textfile collector reads for a batch job.
// With --oip-grpc (needs a build with EDGESPLIT_WITH_GRPC) the features go to any Open Inference
// Protocol gRPC server at HOST:PORT (Triton, KServe, or cloud_node --grpc-port) as ModelInfer
// calls instead of edgesplit's protocol: model --oip-model (default --model-id), version
// --oip-version (default the split; "any" for the server's choice).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include <edgesplit/io/idx.hpp>
#include <edgesplit/runtime/edge_client.hpp>
#include <edgesplit/runtime/edge_metrics.hpp>
#include <edgesplit/transport/tcp.hpp>
#if EDGESPLIT_HAS_TLS
#include <edgesplit/transport/tls.hpp>
#endif

#if EDGESPLIT_HAS_GRPC
#include <edgesplit/runtime/oip_grpc_transport.hpp>
#endif

#include "node_common.hpp"

using namespace edgesplit;

int main(int argc, char** argv) {
  std::map<std::string, std::string> o;
  try {
    o = node::parse_options(argc, argv,
                            {{"model", node::default_model}, {"split", "2"}, {"host", "127.0.0.1"}, {"port", "7000"},
                             {"bits", "8"}, {"limit", "1000"}, {"timeout-ms", "500"}, {"data", fashion_mnist_dir.string()},
                             {"model-id", "fmnist-mlp"}, {"tls-ca", ""}, {"tls-cert", ""}, {"tls-key", ""},
                             {"metrics-file", ""}, {"oip-grpc", ""}, {"oip-model", ""}, {"oip-version", ""}});
    if (o["tls-cert"].empty() != o["tls-key"].empty())
      fail(errc::invalid_argument, "--tls-cert and --tls-key go together");
    if (!o["tls-cert"].empty() && o["tls-ca"].empty()) fail(errc::invalid_argument, "--tls-cert needs --tls-ca");
#if !EDGESPLIT_HAS_TLS
    if (!o["tls-ca"].empty()) fail(errc::unsupported, "this build has no TLS (EDGESPLIT_WITH_TLS)");
#endif
#if !EDGESPLIT_HAS_GRPC
    if (!o["oip-grpc"].empty()) fail(errc::unsupported, "this build has no gRPC (EDGESPLIT_WITH_GRPC)");
#endif
    if (!o["oip-grpc"].empty() && !o["tls-ca"].empty())
      fail(errc::invalid_argument, "--oip-grpc speaks plain gRPC; --tls-ca is for the native protocol");
    if (o["oip-grpc"].empty() && !(o["oip-model"].empty() && o["oip-version"].empty()))
      fail(errc::invalid_argument, "--oip-model and --oip-version go with --oip-grpc");
    const std::size_t bits = cli::number<std::size_t>(o["bits"], "--bits", 2, 32);
    if (bits != 2 && bits != 4 && bits != 8 && bits != 32) fail(errc::invalid_argument, "--bits must be 32, 8, 4 or 2");
  } catch (const error& e) {
    std::fprintf(stderr, "edge_node: %s\n", e.what());
    return 2;
  }
  try {
    if (!fashion_mnist_available(o["data"])) {
      std::fprintf(stderr, "edge_node: Fashion-MNIST not found in %s\n", o["data"].c_str());
      return 77;
    }
    Sequential<float> model = node::load_model(o["model"]);
    const std::size_t split = cli::number<std::size_t>(o["split"], "--split", 0, model.size());
    const auto port = static_cast<std::uint16_t>(cli::number<std::size_t>(o["port"], "--port", 1, 65535));
    const auto timeout = std::chrono::milliseconds(cli::number<std::size_t>(o["timeout-ms"], "--timeout-ms", 1, 600000));
    auto [head, tail] = model.split(split);

    EdgeOptions eo;
    eo.model = {o["model-id"], 1, 0, static_cast<std::uint16_t>(split)};
    eo.codec.bits = static_cast<int>(cli::number<std::size_t>(o["bits"], "--bits", 2, 32));
    const std::string host = o["host"];
    EdgeClient::Connector connector = [host, port] {
      return Channel(TcpTransport::connect(host, port, deadline_after(std::chrono::seconds(2))));
    };
#if EDGESPLIT_HAS_TLS
    if (!o["tls-ca"].empty()) {
      TlsOptions tls;
      tls.ca_file = o["tls-ca"];
      tls.certificate_file = o["tls-cert"];
      tls.private_key_file = o["tls-key"];
      connector = [host, port, ctx = TlsContext::client(tls)] {
        return Channel(TlsTransport::connect(host, port, ctx, deadline_after(std::chrono::seconds(2))));
      };
    }
#endif
#if EDGESPLIT_HAS_GRPC
    if (!o["oip-grpc"].empty()) {
      GrpcClientOptions go;
      go.timeout = timeout;
      auto oip = std::make_shared<OipGrpcClient>(o["oip-grpc"], go);
      OipTransportOptions to;
      to.model_name = o["oip-model"];
      if (o["oip-version"] == "any")
        to.model_version = std::string();
      else if (!o["oip-version"].empty())
        to.model_version = o["oip-version"];
      connector = [oip, to] { return Channel(OipGrpcTransport(oip, to)); };
    }
#endif
    EdgeClient client(head, connector, eo, Fallback{model, Fallback::Input::input});

    const auto data = load_fashion_mnist<float>(o["data"]);
    const Dataset<float>& test = data.second;  // a reference, not a binding: lambdas capture it
    const std::size_t n = std::min(cli::number<std::size_t>(o["limit"], "--limit", 1, 10000), test.size());
    std::size_t correct = 0, cloud = 0;
    std::vector<double> ms;
    // Keep several requests in flight: the head of image i+1 runs while image i is on the wire.
    std::vector<std::future<InferResult>> inflight;
    std::size_t next_check = 0;
    auto collect = [&](std::future<InferResult>& f) {
      const InferResult r = f.get();
      const std::size_t i = next_check++;
      const float* p = r.output.data();
      correct += static_cast<std::size_t>(std::max_element(p, p + 10) - p) == std::size_t(test.labels[i]);
      cloud += r.path == AnswerPath::cloud;
      ms.push_back(1e3 * (r.timings.head + r.timings.encode + r.timings.round_trip + r.timings.decode + r.timings.fallback));
    };
    for (std::size_t i = 0; i < n; ++i) {
      inflight.push_back(client.submit(test.inputs.batch(i, i + 1), deadline_after(timeout)));
      if (inflight.size() == 8) {
        collect(inflight.front());
        inflight.erase(inflight.begin());
      }
    }
    for (auto& f : inflight) collect(f);
    std::sort(ms.begin(), ms.end());
    std::printf("edge_node: %zu images, accuracy %.2f%%, %zu answered by the cloud, %zu by the local fallback\n", n,
                100.0 * double(correct) / double(n), cloud, n - cloud);
    if (!client.last_error().empty()) std::printf("edge_node: the cloud said: %s\n", client.last_error().c_str());
    std::printf("edge_node: latency p50 %.2f ms, p99 %.2f ms\n", ms[ms.size() / 2], ms[ms.size() * 99 / 100]);
    if (const std::string path = o["metrics-file"]; !path.empty()) {
      MetricsWriter w;
      write_edge_metrics(w, client, o["model-id"]);
      const std::string tmp = path + ".tmp";
      {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        f << w.text();
        if (!f.flush()) fail(errc::io_error, "cannot write " + tmp);
      }
      std::filesystem::rename(tmp, path);  // readers see the old file or the new one, never half
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "edge_node: %s\n", e.what());
    return 1;
  }
  return 0;
}

// cloud_node: the cloud half of split inference, as its own process.
//
// Loads a model, keeps the layers from --split on, and serves them over TCP (or TLS) until
// SIGINT or SIGTERM, then drains the queue and exits.
//
//   cloud_node [--model FILE] [--split K] [--host 127.0.0.1] [--port 7000] [--workers 1]
//              [--max-batch 32] [--port-file FILE] [--memory-budget-mib 256]
//              [--max-connections 16384] [--idle-timeout-s 300]
//              [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]
//              [--http-port 0] [--http-host HOST] [--grpc-port 0] [--grpc-host HOST]
//
// --port 0 picks a free port; --port-file writes the port chosen (for scripts and tests).
// With --tls-cert and --tls-key it speaks TLS 1.3; with --tls-client-ca as well, only clients
// with a certificate signed by that CA get in (mutual TLS). Without them it says it serves plain
// TCP, for trusted networks only. It raises its open-files limit to the hard limit, so that
// --max-connections can be reached.
//
// With --http-port P (not 0; needs a build with EDGESPLIT_WITH_HTTP) it also serves the Open
// Inference Protocol over HTTP/REST, the health routes and Prometheus /metrics on that port
// (on --http-host, by default the same host as --host); model name = --model-id, version = --split.
// With --grpc-port P (not 0; needs a build with EDGESPLIT_WITH_GRPC) it serves the Open Inference
// Protocol over gRPC on that port (on --grpc-host, by default --host); /metrics then shows the
// gRPC front end's counters too.
#include <sys/resource.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <csignal>
#include <cstdio>
#include <fstream>
#include <memory>

#include <edgesplit/runtime/cloud_server.hpp>
#if EDGESPLIT_HAS_TLS
#include <edgesplit/transport/tls.hpp>
#endif

#include "node_common.hpp"
#include "oip_front_ends.hpp"  // last: after every header that includes Eigen (see runtime/oip_http.hpp)

using namespace edgesplit;

int main(int argc, char** argv) {
  std::map<std::string, std::string> o;
  try {
    std::map<std::string, std::string> defaults{
        {"model", node::default_model}, {"split", "2"}, {"host", "127.0.0.1"}, {"port", "7000"},
        {"workers", "1"}, {"max-batch", "32"}, {"port-file", ""}, {"model-id", "fmnist-mlp"},
        {"memory-budget-mib", "256"}, {"max-connections", "16384"}, {"idle-timeout-s", "300"},
        {"tls-cert", ""}, {"tls-key", ""}, {"tls-client-ca", ""}};
    defaults.insert(node::oip_options.begin(), node::oip_options.end());
    o = node::parse_options(argc, argv, defaults);
    (void)cli::number<std::size_t>(o["port"], "--port", 0, 65535);
    node::check_oip_options(o);
    if (o["tls-cert"].empty() != o["tls-key"].empty())
      fail(errc::invalid_argument, "--tls-cert and --tls-key go together");
    if (!o["tls-client-ca"].empty() && o["tls-cert"].empty())
      fail(errc::invalid_argument, "--tls-client-ca needs --tls-cert and --tls-key");
#if !EDGESPLIT_HAS_TLS
    if (!o["tls-cert"].empty()) fail(errc::unsupported, "this build has no TLS (EDGESPLIT_WITH_TLS)");
#endif
  } catch (const error& e) {
    std::fprintf(stderr, "cloud_node: %s\n", e.what());
    return 2;
  }
  try {
    // Signals are taken by sigwait below, so block them before any thread starts.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);

    Sequential<float> model = node::load_model(o["model"]);
    const std::size_t split = cli::number<std::size_t>(o["split"], "--split", 0, model.size());
    auto [head, tail] = model.split(split);
    ServerOptions so;
    so.workers = cli::number<std::size_t>(o["workers"], "--workers", 1, 256);
    so.max_batch = cli::number<std::size_t>(o["max-batch"], "--max-batch", 1, 4096);
    so.memory_budget = cli::number<std::size_t>(o["memory-budget-mib"], "--memory-budget-mib", 64, 1 << 20) << 20;
    so.max_connections = cli::number<std::size_t>(o["max-connections"], "--max-connections", 1, 1 << 20);
    so.idle_timeout = std::chrono::seconds(cli::number<std::size_t>(o["idle-timeout-s"], "--idle-timeout-s", 1, 86400));
#if defined(__GLIBC__)
    // Buffers of large requests go back to the system when freed: glibc otherwise raises its
    // mmap threshold after the first large free and keeps later ones in its heaps, so resident
    // memory would stay above what the memory budget bounds.
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
#endif
    // Room for the connections asked for: the soft open-files limit up to the hard one.
    rlimit files{};
    if (::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
      files.rlim_cur = files.rlim_max;
      (void)::setrlimit(RLIMIT_NOFILE, &files);
    }
    CloudServer server(so);
    server.register_model({o["model-id"], 1, 0, static_cast<std::uint16_t>(split)}, std::move(tail));
    auto listener = TcpListener::bind(o["host"], static_cast<std::uint16_t>(cli::number<std::size_t>(o["port"], "--port", 0, 65535)));
    const auto port = listener.port();
    const char* security = "plain TCP: no encryption, no authentication, for trusted networks only";
#if EDGESPLIT_HAS_TLS
    if (!o["tls-cert"].empty()) {
      TlsOptions tls;
      tls.certificate_file = o["tls-cert"];
      tls.private_key_file = o["tls-key"];
      tls.ca_file = o["tls-client-ca"];
      tls.require_client_certificate = !o["tls-client-ca"].empty();
      server.listen(std::move(listener), TlsContext::server(tls));
      security = tls.require_client_certificate ? "TLS 1.3, clients need a certificate of the given CA" : "TLS 1.3";
    } else {
      server.listen(std::move(listener));
    }
#else
    server.listen(std::move(listener));
#endif
    node::OipFrontEnds front_ends(server, o, o["host"], "cloud_node", o["model-id"], split);
    if (!o["port-file"].empty()) std::ofstream(o["port-file"]) << port << '\n';
    std::printf("cloud_node: serving '%s' layers %zu..%zu on %s port %u (%s)\n", o["model-id"].c_str(), split,
                model.size(), o["host"].c_str(), static_cast<unsigned>(port), security);
    std::fflush(stdout);

    int sig = 0;
    sigwait(&signals, &sig);
    front_ends.stop();  // finishes the HTTP and gRPC requests in flight while the server still answers them
    server.shutdown(std::chrono::seconds(5));
    const auto st = server.stats();
    std::printf("cloud_node: stopped; %zu requests, %zu batches, %zu expired, %zu rejected, %zu connections "
                "(%zu dropped, %zu refused), peak memory held for peers %.1f MiB\n",
                st.requests, st.batches, st.expired, st.rejected_overloaded, st.connections_total, st.connections_dropped,
                st.connections_refused, st.memory_peak / 1048576.0);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cloud_node: %s\n", e.what());
    return 1;
  }
  return 0;
}

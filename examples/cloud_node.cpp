// cloud_node: the cloud half of split inference, as its own process.
//
// Loads a model, keeps the layers from --split on, and serves them over TCP until SIGINT or
// SIGTERM, then drains the queue and exits.
//
//   cloud_node [--model FILE] [--split K] [--host 127.0.0.1] [--port 7000] [--workers 1]
//              [--max-batch 32] [--port-file FILE]
//
// --port 0 picks a free port; --port-file writes the port chosen (for scripts and tests).
#include <csignal>
#include <cstdio>
#include <fstream>

#include <edgesplit/runtime/cloud_server.hpp>

#include "node_common.hpp"

using namespace edgesplit;

int main(int argc, char** argv) {
  std::map<std::string, std::string> o;
  try {
    o = node::parse_options(argc, argv,
                            {{"model", node::default_model}, {"split", "2"}, {"host", "127.0.0.1"}, {"port", "7000"},
                             {"workers", "1"}, {"max-batch", "32"}, {"port-file", ""}, {"model-id", "fmnist-mlp"}});
    (void)cli::number<std::size_t>(o["port"], "--port", 0, 65535);
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
    CloudServer server(so);
    server.register_model({o["model-id"], 1, 0, static_cast<std::uint16_t>(split)}, std::move(tail));
    auto listener = TcpListener::bind(o["host"], static_cast<std::uint16_t>(cli::number<std::size_t>(o["port"], "--port", 0, 65535)));
    const auto port = listener.port();
    server.listen(std::move(listener));
    if (!o["port-file"].empty()) std::ofstream(o["port-file"]) << port << '\n';
    std::printf("cloud_node: serving '%s' layers %zu..%zu on %s port %u\n", o["model-id"].c_str(), split, model.size(),
                o["host"].c_str(), static_cast<unsigned>(port));
    std::fflush(stdout);

    int sig = 0;
    sigwait(&signals, &sig);
    server.shutdown(std::chrono::seconds(5));
    const auto st = server.stats();
    std::printf("cloud_node: stopped; %zu requests, %zu batches, %zu expired, %zu rejected, %zu connections\n",
                st.requests, st.batches, st.expired, st.rejected_overloaded, st.connections_total);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cloud_node: %s\n", e.what());
    return 1;
  }
  return 0;
}

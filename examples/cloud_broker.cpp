// cloud_broker: the broker of a ZeroMQ cluster (docs/deployment.md). Edge clients connect to its
// front end, cloud_worker processes to its back end; CURVE on both, with allow-lists.
//
//   cloud_broker --key broker.key --clients clients.allow --workers workers.allow
//                [--front tcp://0.0.0.0:5555] [--back tcp://0.0.0.0:5556]
//                [--heartbeat-ms 1000] [--liveness 3] [--queue 10000] [--stats-every-s 0]
//   cloud_broker --insecure ...   (no CURVE: trusted networks only)
//
// Runs until SIGINT or SIGTERM, then prints its counters.
#include <chrono>
#include <cstdio>
#include <thread>

#include <edgesplit/runtime/zmq_broker.hpp>

#include "cluster_common.hpp"

using namespace edgesplit;

namespace {
void print(const BrokerStats& s) {
  std::printf("cloud_broker: workers %zu (joined %zu, expired %zu, lost %zu, left %zu); requests %zu, replies %zu, "
              "re-sent %zu, duplicates dropped %zu/%zu, replayed %zu, overloaded %zu, malformed %zu/%zu; "
              "handshakes %zu, refused keys %zu, protocol failures %zu (crypto %zu)\n",
              s.workers, s.workers_joined, s.workers_expired, s.workers_lost, s.workers_left, s.requests, s.replies,
              s.resent, s.duplicate_requests, s.duplicate_replies, s.replayed, s.rejected_overloaded,
              s.malformed_client, s.malformed_worker, s.handshakes, s.auth_failures, s.protocol_failures,
              s.crypto_failures);
  std::fflush(stdout);
}
}  // namespace

int main(int argc, char** argv) {
  const sigset_t signals = cluster::block_stop_signals();
  std::map<std::string, std::string> o;
  BrokerOptions bo;
  try {
    o = node::parse_options(argc, argv,
                            {{"key", ""}, {"clients", ""}, {"workers", ""}, {"insecure", "no"},
                             {"front", "tcp://0.0.0.0:5555"}, {"back", "tcp://0.0.0.0:5556"}, {"heartbeat-ms", "1000"},
                             {"liveness", "3"}, {"queue", "10000"}, {"stats-every-s", "0"}});
    bo.frontend = o["front"];
    bo.backend = o["back"];
    bo.heartbeat_interval = std::chrono::milliseconds(cli::number<std::size_t>(o["heartbeat-ms"], "--heartbeat-ms", 10, 60000));
    bo.liveness = static_cast<int>(cli::number<std::size_t>(o["liveness"], "--liveness", 1, 100));
    bo.queue_capacity = cli::number<std::size_t>(o["queue"], "--queue", 1, 10000000);
    if (o["insecure"] != "yes" && o["insecure"] != "no") fail(errc::invalid_argument, "--insecure takes yes or no");
    if (o["insecure"] == "no" && (o["key"].empty() || o["clients"].empty() || o["workers"].empty()))
      fail(errc::invalid_argument, "--key, --clients and --workers are needed (or --insecure yes on a trusted network)");
  } catch (const error& e) {
    std::fprintf(stderr, "cloud_broker: %s\n", e.what());
    return 2;
  }
  try {
    if (o["insecure"] == "no") {
      bo.curve = read_curve_secret_file(o["key"]);
      bo.client_keys = read_curve_allow_list(o["clients"]);
      bo.worker_keys = read_curve_allow_list(o["workers"]);
    }
    const auto every = std::chrono::seconds(cli::number<std::size_t>(o["stats-every-s"], "--stats-every-s", 0, 86400));
    ZmqBroker broker(bo);
    std::printf("cloud_broker: edges on %s, workers on %s, %s (%zu client keys, %zu worker keys)\n",
                broker.frontend_endpoint().c_str(), broker.backend_endpoint().c_str(),
                bo.curve ? "CURVE" : "NO SECURITY", bo.client_keys.size(), bo.worker_keys.size());
    std::fflush(stdout);
    std::atomic<bool> done{false};
    std::thread reporter;
    if (every.count() > 0)
      reporter = std::thread([&] {
        while (!done) {
          for (auto t = std::chrono::steady_clock::now() + every; !done && std::chrono::steady_clock::now() < t;)
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
          if (!done) print(broker.stats());
        }
      });
    cluster::wait_for_signal(signals);
    done = true;
    if (reporter.joinable()) reporter.join();
    broker.stop();
    print(broker.stats());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cloud_broker: %s\n", e.what());
    return 1;
  }
  return 0;
}

// cloud_worker: a worker of a ZeroMQ cluster (docs/deployment.md): runs the tail of the model for
// the requests cloud_broker gives it. Start as many as the load needs; they may join and leave
// at any time.
//
//   cloud_worker --key worker.key --broker-key broker.pub [--broker tcp://127.0.0.1:5556]
//                [--model FILE|synthetic] [--split 2] [--model-id fmnist-mlp]
//                [--capacity 64] [--threads 1] [--max-batch 32] [--heartbeat-ms 1000]
//                [--http-port 0] [--http-host 127.0.0.1] [--grpc-port 0] [--grpc-host 127.0.0.1]
//   cloud_worker --insecure yes ...   (no CURVE: trusted networks only)
//
// --http-port and --grpc-port serve the worker's own CloudServer as cloud_node does (health
// probes, /metrics, the status page, and the Open Inference Protocol straight to this worker).
//
// Leaves gracefully on SIGINT or SIGTERM (the broker re-sends what it held).
#include <cstdio>

#include <edgesplit/runtime/zmq_worker.hpp>

#include "cluster_common.hpp"
#include "oip_front_ends.hpp"  // last: after every header that includes Eigen (see runtime/oip_http.hpp)

using namespace edgesplit;

int main(int argc, char** argv) {
  const sigset_t signals = cluster::block_stop_signals();
  std::map<std::string, std::string> o;
  WorkerOptions wo;
  try {
    std::map<std::string, std::string> defaults{
        {"key", ""}, {"broker-key", ""}, {"insecure", "no"}, {"broker", "tcp://127.0.0.1:5556"},
        {"model", "synthetic"}, {"split", "2"}, {"model-id", "fmnist-mlp"}, {"capacity", "64"},
        {"threads", "1"}, {"max-batch", "32"}, {"heartbeat-ms", "1000"}};
    defaults.insert(node::oip_options.begin(), node::oip_options.end());
    o = node::parse_options(argc, argv, defaults);
    node::check_oip_options(o);
    wo.broker = o["broker"];
    wo.capacity = static_cast<std::uint32_t>(cli::number<std::size_t>(o["capacity"], "--capacity", 1, 65536));
    wo.server.workers = cli::number<std::size_t>(o["threads"], "--threads", 1, 256);
    wo.server.max_batch = cli::number<std::size_t>(o["max-batch"], "--max-batch", 1, 4096);
    wo.heartbeat_interval = std::chrono::milliseconds(cli::number<std::size_t>(o["heartbeat-ms"], "--heartbeat-ms", 10, 60000));
    if (o["insecure"] != "yes" && o["insecure"] != "no") fail(errc::invalid_argument, "--insecure takes yes or no");
    if (o["insecure"] == "no" && (o["key"].empty() || o["broker-key"].empty()))
      fail(errc::invalid_argument, "--key and --broker-key are needed (or --insecure yes on a trusted network)");
  } catch (const error& e) {
    std::fprintf(stderr, "cloud_worker: %s\n", e.what());
    return 2;
  }
  try {
    if (o["insecure"] == "no") wo.curve = cluster::client_keys(o["key"], o["broker-key"]);
    Sequential<float> model = cluster::model(o["model"]);
    const std::size_t split = cli::number<std::size_t>(o["split"], "--split", 0, model.size());
    auto [head, tail] = model.split(split);
    ZmqWorker worker(wo);
    worker.register_model({o["model-id"], 1, 0, static_cast<std::uint16_t>(split)}, std::move(tail));
    worker.start();
    std::printf("cloud_worker: serving '%s' layers %zu..%zu for %s (%s, capacity %u)\n", o["model-id"].c_str(), split,
                model.size(), wo.broker.c_str(), wo.curve ? "CURVE" : "NO SECURITY", wo.capacity);
    node::OipFrontEnds front_ends(worker.server(), o, "127.0.0.1", "cloud_worker", o["model-id"], split);
    std::fflush(stdout);
    cluster::wait_for_signal(signals);
    front_ends.stop();
    worker.stop();
    const auto st = worker.stats();
    std::printf("cloud_worker: stopped; %zu requests, %zu replies, %zu rejected, %zu reconnects\n", st.requests,
                st.replies, st.rejected, st.reconnects);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cloud_worker: %s\n", e.what());
    return 1;
  }
  return 0;
}

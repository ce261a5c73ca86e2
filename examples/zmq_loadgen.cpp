// zmq_loadgen: N edge clients against a ZeroMQ cluster; throughput, latency percentiles and
// errors (docs/deployment.md has the measured figures).
//
// Against a running cluster (cloud_broker + cloud_worker processes):
//   zmq_loadgen --front tcp://127.0.0.1:5555 --key edge.key --broker-key broker.pub [options]
// Or everything in this process (a broker and N workers as threads, keys generated now):
//   zmq_loadgen --in-process-workers 2 [options]
//
// Options:
//   --clients 64         edge clients, each its own DEALER socket (its own CURVE session)
//   --seconds 10         how long requests are sent
//   --rate 0             requests per second over all clients; 0: closed loop
//   --window 1           closed loop: requests each client keeps in flight
//   --timeout-ms 10000   a request unanswered this long counts as lost
//   --bits 8             feature encoding (32: raw fp32; 8, 4, 2: quantized)
//   --model synthetic --split 2 --model-id fmnist-mlp   what the workers serve
//   --kill-after-s S --restart-after-s T   in-process only: kill worker 0 at S (a crash: no
//                        goodbye), start a new worker at T; the p99 of requests sent in the
//                        window from S to T is reported
//   --heartbeat-ms 1000 --capacity 64 --max-batch 32   in-process cluster settings
//   --insecure yes       no CURVE (with --front: the cluster runs without; in process: started so)
//   --timeline yes       one line per second: sent, answered, p99 of that second's requests
//   --max-errors N       exit status 1 when errors (lost, wrong, ERROR replies) exceed N
//
// Each client first gets one answer (the warm-up: connections and CURVE handshakes) before the
// clock starts. The edge side is precomputed (a pool of 256 inputs run through the head and encoded once; each
// send relabels a pooled frame with a fresh request id), so the figures are the cluster's:
// broker, CURVE, workers, tail. Every answer is checked against the tail run locally on the same
// decoded features.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include <edgesplit/runtime/zmq_broker.hpp>
#include <edgesplit/runtime/zmq_worker.hpp>
#include <edgesplit/wire/cluster_protocol.hpp>

#include "cluster_common.hpp"

using namespace edgesplit;
using Steady = std::chrono::steady_clock;

namespace {

struct Sent {
  std::size_t pool = 0;
  Steady::time_point at;
};
struct Client {
  zmq::socket_t socket;
  std::uint32_t next_id = 1;
  std::map<std::uint32_t, Sent> outstanding;
  Steady::time_point next_send;
};
struct Done {
  double sent_s = 0;  // since the start
  double latency_ms = 0;
};

// CPU seconds (user + system) of this thread, or of the whole process.
double cpu_seconds(int who) {
  rusage u{};
  getrusage(who, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + 1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t i = std::min(v.size() - 1, static_cast<std::size_t>(std::ceil(p * double(v.size())) - 1));
  return v[i];
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> o;
  try {
    o = node::parse_options(
        argc, argv,
        {{"front", ""}, {"key", ""}, {"broker-key", ""}, {"insecure", "no"}, {"in-process-workers", "0"},
         {"clients", "64"}, {"seconds", "10"}, {"rate", "0"}, {"window", "1"}, {"timeout-ms", "10000"}, {"bits", "8"},
         {"model", "synthetic"}, {"split", "2"}, {"model-id", "fmnist-mlp"}, {"kill-after-s", "0"},
         {"restart-after-s", "0"}, {"heartbeat-ms", "1000"}, {"capacity", "64"}, {"max-batch", "32"},
         {"timeline", "no"}, {"max-errors", "-1"}});
    const std::size_t bits = cli::number<std::size_t>(o["bits"], "--bits", 2, 32);
    if (bits != 2 && bits != 4 && bits != 8 && bits != 32) fail(errc::invalid_argument, "--bits must be 32, 8, 4 or 2");
    if (cli::number<std::size_t>(o["in-process-workers"], "--in-process-workers", 0, 64) == 0 && o["front"].empty())
      fail(errc::invalid_argument, "give --front (a running cluster) or --in-process-workers N");
    if (o["insecure"] == "no" && !o["front"].empty() && (o["key"].empty() || o["broker-key"].empty()))
      fail(errc::invalid_argument, "--key and --broker-key are needed with --front (or --insecure yes)");
  } catch (const error& e) {
    std::fprintf(stderr, "zmq_loadgen: %s\n", e.what());
    return 2;
  }
  try {
    const std::size_t n_clients = cli::number<std::size_t>(o["clients"], "--clients", 1, 4096);
    const double seconds = double(cli::number<std::size_t>(o["seconds"], "--seconds", 1, 86400));
    const double rate = double(cli::number<std::size_t>(o["rate"], "--rate", 0, 10000000));
    const std::size_t window = cli::number<std::size_t>(o["window"], "--window", 1, 1024);
    const auto timeout = std::chrono::milliseconds(cli::number<std::size_t>(o["timeout-ms"], "--timeout-ms", 1, 600000));
    const std::size_t in_process = cli::number<std::size_t>(o["in-process-workers"], "--in-process-workers", 0, 64);
    const double kill_at = double(cli::number<std::size_t>(o["kill-after-s"], "--kill-after-s", 0, 86400));
    const double restart_at = double(cli::number<std::size_t>(o["restart-after-s"], "--restart-after-s", 0, 86400));
    const bool timeline = o["timeline"] == "yes";
    const long max_errors = o["max-errors"] == "-1" ? -1 : long(cli::number<std::size_t>(o["max-errors"], "--max-errors", 0, 1u << 30));

    Sequential<float> model = cluster::model(o["model"]);
    const std::size_t split = cli::number<std::size_t>(o["split"], "--split", 0, model.size());
    auto [head, tail] = model.split(split);
    const wire::ModelIdentity id{o["model-id"], 1, 0, static_cast<std::uint16_t>(split)};

    // The cluster: given, or started here.
    std::string front = o["front"];
    std::optional<CurveClientKeys> keys;
    std::unique_ptr<ZmqBroker> broker;
    std::vector<std::unique_ptr<ZmqWorker>> workers;
    WorkerOptions wo;
    if (in_process > 0) {
      const bool secure = o["insecure"] != "yes";
      const CurveKeyPair bk = generate_curve_keypair(), ck = generate_curve_keypair(), wk = generate_curve_keypair();
      BrokerOptions bo;
      bo.frontend = bo.backend = "tcp://127.0.0.1:*";
      if (secure) {
        bo.curve = bk;
        bo.client_keys = {ck.public_key};
        bo.worker_keys = {wk.public_key};
      }
      bo.heartbeat_interval = std::chrono::milliseconds(cli::number<std::size_t>(o["heartbeat-ms"], "--heartbeat-ms", 10, 60000));
      broker = std::make_unique<ZmqBroker>(bo);
      front = broker->frontend_endpoint();
      wo.broker = broker->backend_endpoint();
      if (secure) {
        keys = CurveClientKeys{ck, bk.public_key};
        wo.curve = CurveClientKeys{wk, bk.public_key};
      }
      wo.heartbeat_interval = bo.heartbeat_interval;
      wo.capacity = static_cast<std::uint32_t>(cli::number<std::size_t>(o["capacity"], "--capacity", 1, 65536));
      wo.server.max_batch = cli::number<std::size_t>(o["max-batch"], "--max-batch", 1, 4096);
      for (std::size_t i = 0; i < in_process; ++i) {
        workers.push_back(std::make_unique<ZmqWorker>(wo));
        workers.back()->register_model(id, tail);
        workers.back()->start();
      }
      while (broker->stats().workers < in_process) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    } else if (o["insecure"] == "no") {
      keys = cluster::client_keys(o["key"], o["broker-key"]);
    }

    // The edge side, precomputed: 256 encoded INFER frames and the answers they must get.
    CodecConfig cfg;
    cfg.bits = static_cast<int>(cli::number<std::size_t>(o["bits"], "--bits", 2, 32));
    FeatureCodec codec(cfg);
    CodecConfig raw_cfg;
    raw_cfg.bits = wire::raw_f32_bits;
    FeatureCodec decoder(raw_cfg);
    std::vector<std::vector<std::byte>> pool(256);
    std::vector<Tensor<float>> expected(pool.size());
    Rng rng(1);
    for (std::size_t i = 0; i < pool.size(); ++i) {
      Tensor<float> x(Shape{1, 784});
      for (float& v : x.span()) v = static_cast<float>(rng.uniform(0, 1));
      wire::encode_infer(pool[i], 0, {id.model_id, id.split, 0}, codec, head.forward(x.cview()));
      Tensor<float> features;
      (void)wire::decode_infer(pool[i], decoder, features);  // what the worker will decode
      expected[i] = tail.predict(features.cview());
    }

    zmq::context_t ctx(2);
    std::vector<Client> clients(n_clients);
    std::vector<std::byte> frame;
    const auto per_client = rate > 0 ? std::chrono::duration<double>(double(n_clients) / rate) : std::chrono::duration<double>(0);
    for (std::size_t c = 0; c < n_clients; ++c) {
      clients[c].socket = zmq::socket_t(ctx, zmq::socket_type::dealer);
      clients[c].socket.set(zmq::sockopt::linger, 0);
      if (keys) configure_curve_client(clients[c].socket, *keys);
      clients[c].socket.connect(front);
    }
    // Warm-up, not measured: every client connects (the CURVE handshakes cost milliseconds of CPU
    // each) and gets one answer before the clock starts.
    {
      std::vector<bool> answered(n_clients, false);
      std::size_t waiting = n_clients;
      std::vector<zmq_pollitem_t> warm(n_clients);
      for (std::size_t c = 0; c < n_clients; ++c) {
        frame = pool[c % pool.size()];
        wire::cluster::relabel(frame, clients[c].next_id++);
        clients[c].socket.send(zmq::buffer(frame), zmq::send_flags::none);
      }
      const auto give_up = Steady::now() + timeout;
      while (waiting > 0 && Steady::now() < give_up) {
        for (std::size_t c = 0; c < n_clients; ++c) warm[c] = {clients[c].socket.handle(), 0, ZMQ_POLLIN, 0};
        zmq::poll(warm.data(), warm.size(), std::chrono::milliseconds(10));
        for (std::size_t c = 0; c < n_clients; ++c) {
          zmq::message_t m;
          while ((warm[c].revents & ZMQ_POLLIN) && clients[c].socket.recv(m, zmq::recv_flags::dontwait))
            if (!answered[c]) answered[c] = true, --waiting;
        }
      }
      if (waiting > 0) fail(errc::timeout, std::to_string(waiting) + " clients got no answer to their warm-up request");
    }
    const auto t0 = Steady::now();
    for (std::size_t c = 0; c < n_clients; ++c)  // open loop: spread the first sends over one interval
      clients[c].next_send = t0 + std::chrono::duration_cast<Steady::duration>(per_client * (double(c) / double(n_clients)));

    std::vector<Done> done;
    done.reserve(1 << 20);
    std::size_t sent = 0, wrong = 0, lost = 0, unexpected = 0, pool_next = 0;
    std::map<std::string, std::size_t> error_replies;
    std::vector<zmq_pollitem_t> items(n_clients);
    const auto end = t0 + std::chrono::duration_cast<Steady::duration>(std::chrono::duration<double>(seconds));
    bool killed = false, restarted = false;
    for (;;) {
      const auto now = Steady::now();
      const double t = std::chrono::duration<double>(now - t0).count();
      if (!workers.empty() && kill_at > 0 && !killed && t >= kill_at) {
        workers[0]->kill();
        killed = true;
        std::printf("zmq_loadgen: t=%.2fs killed worker 0\n", t);
      }
      if (!workers.empty() && restart_at > 0 && !restarted && t >= restart_at) {
        workers.push_back(std::make_unique<ZmqWorker>(wo));
        workers.back()->register_model(id, tail);
        workers.back()->start();
        restarted = true;
        std::printf("zmq_loadgen: t=%.2fs started a new worker\n", t);
      }
      const bool sending = now < end;
      std::size_t outstanding = 0;
      for (auto& c : clients) {
        while (sending && (rate > 0 ? now >= c.next_send : c.outstanding.size() < window)) {
          frame = pool[pool_next];
          const std::uint32_t rid = c.next_id++;
          wire::cluster::relabel(frame, rid);
          if (!c.socket.send(zmq::buffer(frame), zmq::send_flags::dontwait)) break;  // its queue is full
          c.outstanding.emplace(rid, Sent{pool_next, now});
          pool_next = (pool_next + 1) % pool.size();
          ++sent;
          if (rate > 0) c.next_send += std::chrono::duration_cast<Steady::duration>(per_client);
        }
        // Requests past their time are lost.
        for (auto it = c.outstanding.begin(); it != c.outstanding.end();) {
          if (now - it->second.at > timeout) {
            ++lost;
            it = c.outstanding.erase(it);
          } else {
            ++it;
          }
        }
        outstanding += c.outstanding.size();
      }
      if (!sending && outstanding == 0) break;
      for (std::size_t c = 0; c < n_clients; ++c) items[c] = {clients[c].socket.handle(), 0, ZMQ_POLLIN, 0};
      zmq::poll(items.data(), items.size(), std::chrono::milliseconds(rate > 0 ? 1 : 10));
      const auto received = Steady::now();
      for (std::size_t c = 0; c < n_clients; ++c) {
        if (!(items[c].revents & ZMQ_POLLIN)) continue;
        zmq::message_t m;
        while (clients[c].socket.recv(m, zmq::recv_flags::dontwait)) {
          const std::span<const std::byte> b(static_cast<const std::byte*>(m.data()), m.size());
          try {
            const auto h = wire::peek(b);
            const auto it = clients[c].outstanding.find(h.request_id);
            if (it == clients[c].outstanding.end()) {
              ++unexpected;  // a second answer, or one after its timeout
              continue;
            }
            const Sent s = it->second;
            clients[c].outstanding.erase(it);
            if (h.type == wire::MessageType::error) {
              ++error_replies[std::string(to_string(wire::decode_error(b).code))];
              continue;
            }
            Tensor<float> y;
            (void)wire::decode_response(b, decoder, y);
            const Tensor<float>& want = expected[s.pool];
            bool ok = y.shape() == want.shape();
            for (std::size_t j = 0; ok && j < want.size(); ++j) ok = std::abs(y[j] - want[j]) <= 1e-4f * (1 + std::abs(want[j]));
            if (!ok) {
              ++wrong;
              continue;
            }
            done.push_back({std::chrono::duration<double>(s.at - t0).count(),
                            std::chrono::duration<double, std::milli>(received - s.at).count()});
          } catch (const error&) {
            ++wrong;
          }
        }
      }
    }
    const double driver_cpu = cpu_seconds(RUSAGE_THREAD), process_cpu = cpu_seconds(RUSAGE_SELF);
    clients.clear();  // close every socket before the context ends

    std::vector<double> all;
    for (const auto& d : done) all.push_back(d.latency_ms);
    std::size_t errors = wrong + lost;
    for (auto& [code, n] : error_replies) errors += n;
    const std::string where = in_process > 0 ? std::to_string(in_process) + " worker(s) in process" : "an external cluster";
    std::printf("zmq_loadgen: %zu clients, %s, %.0f s, %s, %s\n", n_clients,
                rate > 0 ? ("open loop at " + std::to_string(long(rate)) + " req/s").c_str()
                         : ("closed loop, window " + std::to_string(window)).c_str(),
                seconds, keys ? "CURVE" : "no security", where.c_str());
    std::printf("zmq_loadgen: sent %zu, answered %zu, throughput %.0f req/s\n", sent, done.size(),
                double(done.size()) / seconds);
    std::printf("zmq_loadgen: latency ms p50 %.3f  p95 %.3f  p99 %.3f  max %.3f\n", percentile(all, 0.50),
                percentile(all, 0.95), percentile(all, 0.99), percentile(all, 1.0));
    std::printf("zmq_loadgen: errors %zu (lost %zu, wrong answers %zu, ERROR replies", errors, lost, wrong);
    if (error_replies.empty()) std::printf(" 0");
    for (auto& [code, n] : error_replies) std::printf(" %s %zu", code.c_str(), n);
    std::printf("), unexpected replies %zu\n", unexpected);
    // Where the CPU went: the thread that drives the clients is part of the measurement's cost.
    std::printf("zmq_loadgen: CPU %.1f s in this process (%.1f us per answer), of which the client-driving thread "
                "%.1f s\n",
                process_cpu, done.empty() ? 0.0 : 1e6 * process_cpu / double(done.size()), driver_cpu);
    if (killed) {
      const double to = restart_at > kill_at ? restart_at : seconds;
      std::vector<double> before, during;
      for (const auto& d : done) {
        if (d.sent_s < kill_at) before.push_back(d.latency_ms);
        else if (d.sent_s < to) during.push_back(d.latency_ms);
      }
      std::printf("zmq_loadgen: p99 before the kill %.3f ms (%zu requests); sent between kill and %s: p99 %.3f ms, "
                  "max %.3f ms (%zu requests)\n",
                  percentile(before, 0.99), before.size(), restart_at > kill_at ? "restart" : "end",
                  percentile(during, 0.99), percentile(during, 1.0), during.size());
    }
    if (timeline) {
      std::map<long, std::vector<double>> per_second;
      for (const auto& d : done) per_second[long(d.sent_s)].push_back(d.latency_ms);
      for (auto& [sec, v] : per_second)
        std::printf("zmq_loadgen: second %ld: %zu answered, p50 %.3f ms, p99 %.3f ms\n", sec, v.size(), percentile(v, 0.5),
                    percentile(v, 0.99));
    }
    if (broker) {
      const BrokerStats st = broker->stats();
      std::printf("zmq_loadgen: broker: requests %zu, replies %zu, re-sent %zu, duplicate replies dropped %zu, "
                  "workers expired %zu, lost %zu\n",
                  st.requests, st.replies, st.resent, st.duplicate_replies, st.workers_expired, st.workers_lost);
      for (std::size_t i = 0; i < workers.size(); ++i)
        std::printf("zmq_loadgen: worker %zu: %zu requests, %zu replies\n", i, workers[i]->stats().requests,
                    workers[i]->stats().replies);
    }
    if (max_errors >= 0 && long(errors) > max_errors) return 1;
    if (done.empty()) return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zmq_loadgen: %s\n", e.what());
    return 1;
  }
  return 0;
}

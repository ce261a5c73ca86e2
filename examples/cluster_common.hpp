// Shared by cloud_broker.cpp, cloud_worker.cpp and zmq_loadgen.cpp: the model every part of the
// cluster agrees on, CURVE key files, and waiting for a stop signal.
#pragma once

#include <csignal>
#include <string>

#include <edgesplit/edgesplit.hpp>
#include <edgesplit/transport/zmq_curve.hpp>

#include "cli.hpp"
#include "node_common.hpp"

namespace cluster {

using namespace edgesplit;

/// The model: a safetensors file (as cloud_node loads), or "synthetic": the examples'
/// Fashion-MNIST shape 784-256-128-10 with weights from a fixed seed, so every process builds
/// the same one without a file (the right cost per request; its answers are checked, not its
/// accuracy), or "synthetic-large": 784-2048-2048-10, a tail about 60 times as costly, for
/// seeing how workers scale when the tail and not the messaging is the work.
inline Sequential<float> model(const std::string& spec) {
  if (spec != "synthetic" && spec != "synthetic-large") return node::load_model(spec);
  const std::size_t hidden = spec == "synthetic" ? 256 : 2048, second = spec == "synthetic" ? 128 : 2048;
  Rng rng(2026);
  Sequential<float> m;
  m.add<Dense<float>>(784, hidden, rng);
  m.add<ReLU<float>>();
  m.add<Dense<float>>(hidden, second, rng);
  m.add<ReLU<float>>();
  m.add<Dense<float>>(second, 10, rng);
  return m;
}

/// The client side of a CURVE hop from key files: our ".key" file and the server's ".pub" file.
inline CurveClientKeys client_keys(const std::string& own_key_file, const std::string& server_pub_file) {
  return CurveClientKeys{read_curve_secret_file(own_key_file), read_curve_public_file(server_pub_file)};
}

/// Blocks SIGINT and SIGTERM in every thread started after this call; wait_for_signal() takes
/// them. Call it first in main().
inline sigset_t block_stop_signals() {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGINT);
  sigaddset(&s, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &s, nullptr);
  return s;
}

inline int wait_for_signal(const sigset_t& s) {
  int sig = 0;
  sigwait(&s, &sig);
  return sig;
}

}  // namespace cluster

// The optional Open Inference Protocol front ends of a program that serves a CloudServer
// (cloud_node, cloud_worker): --http-port/--http-host (OIP over HTTP, health, /metrics, the status
// page) and --grpc-port/--grpc-host (OIP over gRPC). Include last: it includes httplib.h, which
// must come after Eigen (see runtime/oip_http.hpp).
#pragma once

#include <cstdio>
#include <map>
#include <memory>
#include <string>

#include <edgesplit/core/error.hpp>
#include <edgesplit/runtime/cloud_server.hpp>

#include "cli.hpp"

#if EDGESPLIT_HAS_GRPC
#include <edgesplit/runtime/oip_grpc_server.hpp>
#endif
#if EDGESPLIT_HAS_HTTP
#include <edgesplit/runtime/oip_http.hpp>
#endif

namespace node {

/// The options, with their defaults (0: off), for parse_options.
inline const std::map<std::string, std::string> oip_options{
    {"http-port", "0"}, {"http-host", ""}, {"grpc-port", "0"}, {"grpc-host", ""}};

/// Checks the options before anything starts: ports in range, and a front end this build has.
inline void check_oip_options(std::map<std::string, std::string>& o) {
  using namespace edgesplit;
  (void)cli::number<std::size_t>(o["http-port"], "--http-port", 0, 65535);
  (void)cli::number<std::size_t>(o["grpc-port"], "--grpc-port", 0, 65535);
#if !EDGESPLIT_HAS_GRPC
  if (o["grpc-port"] != "0") fail(errc::unsupported, "this build has no gRPC front end (EDGESPLIT_WITH_GRPC)");
#endif
#if !EDGESPLIT_HAS_HTTP
  if (o["http-port"] != "0") fail(errc::unsupported, "this build has no HTTP front end (EDGESPLIT_WITH_HTTP)");
#endif
}

/// The front ends asked for, serving `server` until stop(). Hosts default to `host`.
class OipFrontEnds {
 public:
  OipFrontEnds(edgesplit::CloudServer& server, std::map<std::string, std::string>& o, const std::string& host,
               const char* program, const std::string& model_id, std::size_t split) {
    using namespace edgesplit;
    (void)server;
    (void)program;
    (void)model_id;
    (void)split;
#if EDGESPLIT_HAS_GRPC
    if (const auto port = cli::number<std::size_t>(o["grpc-port"], "--grpc-port", 0, 65535); port != 0) {
      const std::string h = o["grpc-host"].empty() ? host : o["grpc-host"];
      grpc_ = std::make_unique<OipGrpcServer>(server, h, static_cast<std::uint16_t>(port));
      std::printf("%s: Open Inference Protocol over gRPC on %s port %u (model '%s', version %zu; no TLS, "
                  "for trusted networks only)\n",
                  program, h.c_str(), static_cast<unsigned>(grpc_->port()), model_id.c_str(), split);
    }
#endif
#if EDGESPLIT_HAS_HTTP
    if (const auto port = cli::number<std::size_t>(o["http-port"], "--http-port", 0, 65535); port != 0) {
      const std::string h = o["http-host"].empty() ? host : o["http-host"];
      HttpOptions ho;
#if EDGESPLIT_HAS_GRPC
      if (grpc_) ho.extra_metrics = [g = grpc_.get()](MetricsWriter& w) { g->write_metrics(w); };
#endif
      http_ = std::make_unique<OipHttpServer>(server, h, static_cast<std::uint16_t>(port), ho);
      std::printf("%s: Open Inference Protocol, health and /metrics over HTTP on %s port %u "
                  "(model '%s', version %zu; plain HTTP, for trusted networks only)\n",
                  program, h.c_str(), static_cast<unsigned>(http_->port()), model_id.c_str(), split);
    }
#endif
  }

  /// Stops listening; the requests in flight are answered while the server still runs them.
  void stop() {
#if EDGESPLIT_HAS_HTTP
    if (http_) http_->stop();
#endif
#if EDGESPLIT_HAS_GRPC
    if (grpc_) grpc_->stop();
#endif
  }
  ~OipFrontEnds() { stop(); }

 private:
#if EDGESPLIT_HAS_GRPC
  std::unique_ptr<edgesplit::OipGrpcServer> grpc_;
#endif
#if EDGESPLIT_HAS_HTTP
  std::unique_ptr<edgesplit::OipHttpServer> http_;  // declared last: destroyed first, before the gRPC front end its metrics read
#endif
};

}  // namespace node

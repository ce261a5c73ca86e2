// edgesplit/runtime.hpp - serving a split model: CloudServer (its batcher, limits and memory
// budget), EdgeClient, AdaptiveClient and the cascade, with their metrics. The front ends of
// optional dependencies have headers of their own: runtime/oip_http.hpp (cpp-httplib),
// runtime/zmq_broker.hpp and runtime/zmq_worker.hpp (ZeroMQ).
#pragma once

#include "edgesplit/runtime/adaptive_client.hpp"
#include "edgesplit/runtime/cascade.hpp"
#include "edgesplit/runtime/channel.hpp"
#include "edgesplit/runtime/cloud_server.hpp"
#include "edgesplit/runtime/deployment.hpp"
#include "edgesplit/runtime/dynamic_batcher.hpp"
#include "edgesplit/runtime/edge_client.hpp"
#include "edgesplit/runtime/edge_metrics.hpp"
#include "edgesplit/runtime/local_connection.hpp"
#include "edgesplit/runtime/memory_budget.hpp"
#include "edgesplit/runtime/metrics.hpp"
#include "edgesplit/runtime/model_registry.hpp"
#include "edgesplit/runtime/request_handler.hpp"
#include "edgesplit/runtime/server_metrics.hpp"
#include "edgesplit/runtime/server_options.hpp"
#include "edgesplit/runtime/socket_front_end.hpp"

// edgesplit/edgesplit.hpp - the whole library in one include: models and training, quantization,
// the wire format, transports, planning and the runtime. A program that needs only a part can
// include that module instead (edgesplit/nn.hpp for training alone: no sockets, no runtime), or
// single headers. Headers of optional dependencies are included on their own: io/safetensors.hpp
// and io/idx.hpp, io/onnx.hpp, transport/tls.hpp, transport/zmq.hpp, runtime/oip_http.hpp.
#pragma once

#include "edgesplit/core.hpp"
#include "edgesplit/nn.hpp"
#include "edgesplit/plan.hpp"
#include "edgesplit/quant.hpp"
#include "edgesplit/runtime.hpp"
#include "edgesplit/transport.hpp"
#include "edgesplit/wire.hpp"

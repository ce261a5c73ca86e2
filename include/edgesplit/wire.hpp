// edgesplit/wire.hpp - the wire format: frames, the feature codec, tensor payloads and the
// native protocol's messages; the protobuf codec of the Open Inference Protocol's gRPC messages.
#pragma once

#include "edgesplit/wire/crc32c.hpp"
#include "edgesplit/wire/feature_codec.hpp"
#include "edgesplit/wire/frame.hpp"
#include "edgesplit/wire/oip_grpc.hpp"
#include "edgesplit/wire/protobuf.hpp"
#include "edgesplit/wire/protocol.hpp"
#include "edgesplit/wire/tensor_payload.hpp"

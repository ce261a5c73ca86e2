// edgesplit/edgesplit.hpp - the public API in one include.
#pragma once

#include "edgesplit/core/dtype.hpp"
#include "edgesplit/core/error.hpp"
#include "edgesplit/core/kernels.hpp"
#include "edgesplit/core/random.hpp"
#include "edgesplit/core/shape.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/nn/activations.hpp"
#include "edgesplit/nn/collaborative.hpp"
#include "edgesplit/nn/dataset.hpp"
#include "edgesplit/nn/dense.hpp"
#include "edgesplit/nn/dropout.hpp"
#include "edgesplit/nn/layer.hpp"
#include "edgesplit/nn/layer_factory.hpp"
#include "edgesplit/nn/loss.hpp"
#include "edgesplit/nn/multi_exit.hpp"
#include "edgesplit/nn/optimizer.hpp"
#include "edgesplit/nn/sequential.hpp"
#include "edgesplit/nn/standardizer.hpp"
#include "edgesplit/nn/trainer.hpp"
#include "edgesplit/nn/weights.hpp"
#include "edgesplit/transport/clock.hpp"
#include "edgesplit/transport/inproc.hpp"
#include "edgesplit/transport/simulated_link.hpp"
#include "edgesplit/transport/tcp.hpp"
#include "edgesplit/transport/transport.hpp"
// Not included here because they need optional dependencies (CMake options EDGESPLIT_WITH_JSON
// and EDGESPLIT_WITH_ZLIB); include them directly:
//   edgesplit/io/safetensors.hpp  weights files (nlohmann-json)
//   edgesplit/io/idx.hpp          IDX data sets such as Fashion-MNIST, gzip-compressed (zlib)

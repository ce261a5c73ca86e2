// edgesplit/edgesplit.hpp - the public API in one include.
#pragma once

#include "edgesplit/core/dtype.hpp"
#include "edgesplit/core/error.hpp"
#include "edgesplit/core/kernels.hpp"
#include "edgesplit/core/random.hpp"
#include "edgesplit/core/shape.hpp"
#include "edgesplit/core/tensor.hpp"
#include "edgesplit/nn/activations.hpp"
#include "edgesplit/nn/dense.hpp"
#include "edgesplit/nn/layer.hpp"
#include "edgesplit/nn/sequential.hpp"

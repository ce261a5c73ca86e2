// edgesplit/core.hpp - tensors, shapes, errors, seeded random numbers and the SIMD kernels.
#pragma once

#include "edgesplit/core/dtype.hpp"
#include "edgesplit/core/error.hpp"
#include "edgesplit/core/im2col.hpp"
#include "edgesplit/core/kernels.hpp"
#include "edgesplit/core/random.hpp"
#include "edgesplit/core/shape.hpp"
#include "edgesplit/core/tensor.hpp"

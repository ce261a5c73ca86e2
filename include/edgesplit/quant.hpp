// edgesplit/quant.hpp - quantization: parameters, calibration, bit packing, int8 Dense.
#pragma once

#include "edgesplit/core.hpp"
#include "edgesplit/quant/bit_pack.hpp"
#include "edgesplit/quant/calibration.hpp"
#include "edgesplit/quant/quant_params.hpp"
#include "edgesplit/quant/quantize.hpp"
#include "edgesplit/quant/quantized_dense.hpp"
#include "edgesplit/quant/quantizer.hpp"

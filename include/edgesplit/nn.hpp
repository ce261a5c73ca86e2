// edgesplit/nn.hpp - models and their training: layers, Sequential and Graph, losses,
// optimizers, the Trainer, collaborative and multi-exit objectives, .npy files. Enough for a
// training-only program: no sockets, no threads of the runtime.
#pragma once

#include "edgesplit/core.hpp"
#include "edgesplit/io/npy.hpp"
#include "edgesplit/nn/activations.hpp"
#include "edgesplit/nn/batchnorm.hpp"
#include "edgesplit/nn/collaborative.hpp"
#include "edgesplit/nn/conv2d.hpp"
#include "edgesplit/nn/dataset.hpp"
#include "edgesplit/nn/dense.hpp"
#include "edgesplit/nn/dropout.hpp"
#include "edgesplit/nn/fold.hpp"
#include "edgesplit/nn/graph.hpp"
#include "edgesplit/nn/layer.hpp"
#include "edgesplit/nn/layer_factory.hpp"
#include "edgesplit/nn/loss.hpp"
#include "edgesplit/nn/merge.hpp"
#include "edgesplit/nn/multi_exit.hpp"
#include "edgesplit/nn/optimizer.hpp"
#include "edgesplit/nn/pool.hpp"
#include "edgesplit/nn/sequential.hpp"
#include "edgesplit/nn/standardizer.hpp"
#include "edgesplit/nn/tensor_ops.hpp"
#include "edgesplit/nn/trainer.hpp"
#include "edgesplit/nn/weights.hpp"

// edgesplit/nn/fold.hpp - inference-time rewrites that merge layers: BatchNorm2D into Conv2D.
#pragma once

#include <cmath>
#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "edgesplit/nn/batchnorm.hpp"
#include "edgesplit/nn/conv2d.hpp"
#include "edgesplit/nn/graph.hpp"
#include "edgesplit/nn/sequential.hpp"

namespace edgesplit {

/// The Conv2D computing `bn(conv(x))` as `bn` does in inference mode (running statistics): per
/// output channel o, with s_o = gamma_o / sqrt(running_var_o + epsilon),
/// W'[o] = W[o] s_o and b'_o = (b_o - running_mean_o) s_o + beta_o (b_o = 0 for a conv without
/// bias, which gains one). Same kernel, stride, padding, dilation and groups.
///
/// Folding removes a whole pass over the activations at inference (and a layer from a split
/// model's edge half) at the cost of one rounding per weight: s_o and the products are computed
/// in double and rounded to T once, so the folded conv is as accurate as a conv whose weights
/// were trained that way. It is exact for inference only: training the folded conv trains
/// neither gamma nor the statistics. errc::shape_mismatch when `conv.out_channels()` differs from
/// `bn.channels()`.
template <Real T>
Conv2D<T> fold_batchnorm(const Conv2D<T>& conv, const BatchNorm2D<T>& bn) {
  const std::size_t out = conv.out_channels();
  if (bn.channels() != out)
    fail(errc::shape_mismatch, "fold_batchnorm: " + conv.describe() + " gives " + std::to_string(out) +
                                   " channels, " + bn.describe() + " normalises " + std::to_string(bn.channels()));
  Conv2DOptions options = conv.options();
  options.bias = true;
  Conv2D<T> folded(conv.in_channels(), out, conv.window().kernel_h, conv.window().kernel_w, options);
  folded.set_training(conv.training());
  const std::size_t per_channel = conv.weight().size() / out;
  for (std::size_t o = 0; o < out; ++o) {
    const double s = static_cast<double>(bn.weight()[o]) / std::sqrt(static_cast<double>(bn.running_var()[o]) + bn.epsilon());
    const T* w = conv.weight().data() + o * per_channel;
    T* wf = folded.weight().data() + o * per_channel;
    for (std::size_t k = 0; k < per_channel; ++k) wf[k] = static_cast<T>(static_cast<double>(w[k]) * s);
    const double b = conv.has_bias() ? static_cast<double>(conv.bias()[o]) : 0.0;
    folded.bias()[o] =
        static_cast<T>((b - static_cast<double>(bn.running_mean()[o])) * s + static_cast<double>(bn.bias()[o]));
  }
  return folded;
}

/// A copy of `model` in which every Conv2D immediately followed by a BatchNorm2D is replaced by
/// their fold (see the overload above); every other layer is copied as it is, a BatchNorm2D after
/// anything but a Conv2D included. The result equals `model` in inference mode up to rounding
/// (tests/test_nn.cpp derives the bound) and has one layer fewer per fold, so split indices
/// shift. errc::shape_mismatch when a Conv2D and its BatchNorm2D disagree on the channel count.
template <Real T>
Sequential<T> fold_batchnorm(const Sequential<T>& model) {
  Sequential<T> folded;
  for (std::size_t i = 0; i < model.size(); ++i) {
    const auto* conv = dynamic_cast<const Conv2D<T>*>(&model[i]);
    const auto* bn = i + 1 < model.size() ? dynamic_cast<const BatchNorm2D<T>*>(&model[i + 1]) : nullptr;
    if (conv != nullptr && bn != nullptr) {
      folded.add(std::make_unique<Conv2D<T>>(fold_batchnorm(*conv, *bn)));
      ++i;  // the BatchNorm2D is in the fold
    } else {
      folded.add(model[i].clone());
    }
  }
  return folded;
}

/// A copy of `graph` in which every Conv2D read only by a BatchNorm2D is folded with it (see the
/// two-layer overload): the folded conv takes the BatchNorm2D's place and its output name, so the
/// nodes that read the BatchNorm2D read the fold. A Conv2D read by other nodes too, or returned
/// as an output, is kept whole, as is every other node. Inference mode only, as above; the
/// folded graph has fewer nodes, so split numbers shift (cut by tensor names to keep a cut).
template <Real T>
Graph<T> fold_batchnorm(const Graph<T>& graph) {
  // readers[t]: how many nodes read tensor t, plus one if it is an output
  std::map<std::string, std::size_t> readers;
  for (const auto& o : graph.output_names()) ++readers[o];
  for (std::size_t i = 0; i < graph.node_count(); ++i)
    for (const auto& t : graph.node_inputs(i)) ++readers[t];
  std::map<std::string, std::size_t> producer;
  for (std::size_t i = 0; i < graph.node_count(); ++i) producer[graph.node_output(i)] = i;
  // conv_of[i]: for a BatchNorm2D node i that folds, the index of its Conv2D
  std::map<std::size_t, std::size_t> conv_of;
  std::vector<char> folded_away(graph.node_count(), 0);
  for (std::size_t i = 0; i < graph.node_count(); ++i) {
    if (dynamic_cast<const BatchNorm2D<T>*>(graph.layer(i)) == nullptr) continue;
    const std::string in = graph.node_inputs(i)[0];
    const auto p = producer.find(in);
    if (p == producer.end() || readers[in] != 1 || dynamic_cast<const Conv2D<T>*>(graph.layer(p->second)) == nullptr)
      continue;
    conv_of[i] = p->second;
    folded_away[p->second] = 1;
  }
  Graph<T> out;
  for (const auto& name : graph.input_names()) out.input(name, graph.sample_shape(name));
  for (std::size_t i = 0; i < graph.node_count(); ++i) {
    if (folded_away[i]) continue;
    if (const auto c = conv_of.find(i); c != conv_of.end()) {
      const auto& conv = static_cast<const Conv2D<T>&>(*graph.layer(c->second));
      const auto& bn = static_cast<const BatchNorm2D<T>&>(*graph.layer(i));
      out.add(graph.node_output(i), graph.node_inputs(c->second), std::make_unique<Conv2D<T>>(fold_batchnorm(conv, bn)));
    } else if (graph.layer(i) != nullptr) {
      out.add(graph.node_output(i), graph.node_inputs(i), graph.layer(i)->clone());
    } else {
      out.add(graph.node_output(i), graph.node_inputs(i), graph.merge(i)->clone());
    }
  }
  for (const auto& name : graph.output_names()) out.output(name);
  out.set_training(graph.training());
  return out;
}

}  // namespace edgesplit

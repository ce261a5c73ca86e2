// edgesplit/nn/fold.hpp - inference-time rewrites that merge layers: BatchNorm2D into Conv2D.
#pragma once

#include <cmath>
#include <cstddef>
#include <memory>
#include <string>

#include "edgesplit/nn/batchnorm.hpp"
#include "edgesplit/nn/conv2d.hpp"
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

}  // namespace edgesplit

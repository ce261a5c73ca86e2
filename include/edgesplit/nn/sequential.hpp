// edgesplit/nn/sequential.hpp - a chain of layers that can be cut anywhere into head and tail.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "edgesplit/core/random.hpp"
#include "edgesplit/nn/layer.hpp"

namespace edgesplit {

template <Real T>
class Dense;

/// What the planner needs to know about one layer for a given input shape.
struct LayerInfo {
  std::string name;            ///< `Layer::describe()`
  Shape output;                ///< output shape
  std::size_t output_bytes;    ///< bytes of the output at full precision: what a split here sends
  std::uint64_t flops;         ///< forward FLOPs
  std::size_t parameters;      ///< trainable scalars
};

/// A model: layers applied in order. Owns its layers and a workspace with one buffer per layer
/// output, reused across calls, so a steady stream of same-sized batches allocates nothing.
/// Not thread-safe: one Sequential per thread (copies are cheap to make with the copy constructor).
template <Real T>
class Sequential {
 public:
  Sequential() = default;
  /// A model with a declared per-sample input shape (no batch dimension: `Shape{784}`, or
  /// `Shape{1, 28, 28}` for images), as Keras' `Input(shape=...)`: layers added later may leave
  /// out the input size they would repeat (`model.add<Dense<float>>(512)`), and summary() needs
  /// no shape. errc::invalid_argument for an empty shape.
  explicit Sequential(const Shape& input) { this->input(input); }
  /// Moves the layers and the workspace.
  Sequential(Sequential&&) noexcept = default;
  /// Moves the layers and the workspace.
  Sequential& operator=(Sequential&&) noexcept = default;
  /// Deep copy: weights are copied, the workspace is not.
  Sequential(const Sequential& o) : input_(o.input_) {
    layers_.reserve(o.layers_.size());
    for (const auto& l : o.layers_) layers_.push_back(l->clone());
  }
  /// Deep copy, like the copy constructor.
  Sequential& operator=(const Sequential& o) {
    if (this != &o) *this = Sequential(o);
    return *this;
  }

  /// Declares the per-sample input shape (see the constructor); returns the model.
  Sequential& input(const Shape& per_sample) {
    if (per_sample.rank() == 0 || per_sample.count() == 0)
      fail(errc::invalid_argument, "Sequential input shape must have at least one dimension, none of them 0");
    input_ = per_sample;
    return *this;
  }
  /// The declared per-sample input shape, if any.
  const std::optional<Shape>& input() const noexcept { return input_; }

  /// Appends a layer constructed in place: `model.add<Dense<float>>(784, 512, rng)`. A Dense
  /// may be given its output width alone (`add<Dense<float>>(512)`, or `(512, rng)`): its input
  /// width is then the per-sample size of what the model outputs so far (a Dense flattens what
  /// it takes: [N, 8, 14, 14] is 1568 features), known from the declared input shape, or from the
  /// last Dense when only element-wise layers follow it; errc::invalid_argument otherwise.
  template <class L, class... Args>
  L& add(Args&&... args) {
    static_assert(std::is_base_of_v<Layer<T>, L>, "add<L>: L must derive from Layer<T>");
    std::unique_ptr<L> p;
    if constexpr (std::is_same_v<L, Dense<T>> && output_width_only<Args...>()) {
      p = std::make_unique<L>(next_width(), std::forward<Args>(args)...);
    } else {
      p = std::make_unique<L>(std::forward<Args>(args)...);
    }
    L& ref = *p;
    layers_.push_back(std::move(p));
    return ref;
  }
  /// Appends a layer that was built elsewhere; returns the model for chaining.
  Sequential& add(std::unique_ptr<Layer<T>> layer) {
    if (!layer) fail(errc::invalid_argument, "Sequential::add of a null layer");
    layers_.push_back(std::move(layer));
    return *this;
  }

  std::size_t size() const noexcept { return layers_.size(); }  ///< number of layers
  bool empty() const noexcept { return layers_.empty(); }  ///< true when there are no layers
  /// Layer `i`; std::out_of_range past the end.
  Layer<T>& operator[](std::size_t i) { return *layers_.at(i); }
  /// Layer `i`; std::out_of_range past the end.
  const Layer<T>& operator[](std::size_t i) const { return *layers_.at(i); }

  /// Output shape for input shape `in` (the input shape itself for an empty model).
  Shape output_shape(Shape in) const {
    for (const auto& l : layers_) in = l->output_shape(in);
    return in;
  }

  /// Runs the model; the result lives in the workspace until the next call (for an empty model
  /// it is `in` itself). Allocates only when a batch is larger than any seen before.
  TensorView<const T> forward(TensorView<const T> in) {
    if (layers_.empty()) return in;
    if (acts_.size() != layers_.size()) acts_.resize(layers_.size());
    TensorView<const T> x = in;
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      acts_[i].resize(layers_[i]->output_shape(x.shape()));
      layers_[i]->forward(x, acts_[i].view());
      x = acts_[i].cview();
    }
    return x;
  }
  /// Runs the model into a caller-owned `out` of shape `output_shape(in.shape())`.
  void forward(TensorView<const T> in, TensorView<T> out) {
    const Shape want = output_shape(in.shape());
    if (!(out.shape() == want))
      fail(errc::shape_mismatch, "Sequential output has shape " + out.shape().str() + ", expected " + want.str());
    copy(forward(in), out);
  }
  /// Convenience for one-off calls: returns a fresh tensor.
  Tensor<T> predict(TensorView<const T> in) {
    Tensor<T> out(output_shape(in.shape()));
    forward(in, out.view());
    return out;
  }

  /// Backpropagates `grad_out` (dL/d output of the latest `forward(in)`), adding parameter
  /// gradients into each layer and writing dL/d input into `grad_in` unless it is empty.
  void backward(TensorView<const T> in, TensorView<const T> grad_out, TensorView<T> grad_in = {}) {
    if (layers_.empty()) {
      if (grad_in.data() != nullptr) copy(grad_out, grad_in);
      return;
    }
    if (acts_.size() != layers_.size() || !(acts_.back().shape() == output_shape(in.shape())))
      fail(errc::invalid_argument, "Sequential::backward needs the forward pass of the same input first");
    if (grads_.size() != 2) grads_.resize(2);
    TensorView<const T> g = grad_out;
    for (std::size_t i = layers_.size(); i-- > 0;) {
      const TensorView<const T> x = i == 0 ? in : acts_[i - 1].cview();
      TensorView<T> gi;
      if (i > 0) {
        grads_[i % 2].resize(x.shape());
        gi = grads_[i % 2].view();
      } else {
        gi = grad_in;
      }
      layers_[i]->backward(x, acts_[i].cview(), g, gi);
      g = gi;
    }
  }

  /// Cuts the model before layer `k`: head = layers [0, k), tail = layers [k, size()).
  /// k = 0 gives an empty head (all cloud), k = size() an empty tail (all edge). The halves are
  /// deep copies, so this model stays whole and each half can live in another process.
  std::pair<Sequential, Sequential> split(std::size_t k) const {
    if (k > layers_.size())
      fail(errc::out_of_range, "split point " + std::to_string(k) + " past a model of " +
                                   std::to_string(layers_.size()) + " layers");
    Sequential head, tail;
    for (std::size_t i = 0; i < layers_.size(); ++i) (i < k ? head : tail).layers_.push_back(layers_[i]->clone());
    if (input_) {  // the tail's input is what the head outputs
      head.input_ = input_;
      const Shape out = head.output_shape(input_->with_leading(1));
      tail.input_ = Shape(out.dims().subspan(1));
    }
    return {std::move(head), std::move(tail)};
  }

  /// Per-layer output shape, bytes, FLOPs and parameters for input shape `in`.
  std::vector<LayerInfo> describe(Shape in) const {
    std::vector<LayerInfo> info;
    info.reserve(layers_.size());
    for (const auto& l : layers_) {
      const std::uint64_t f = l->flops(in);
      in = l->output_shape(in);
      info.push_back({l->describe(), in, in.count() * sizeof(T), f, l->parameter_count()});
    }
    return info;
  }

  /// A Keras-like table of the model for one sample of per-sample shape `sample` (no batch
  /// dimension): each layer's output shape, parameters and FLOPs, and the split point after it
  /// with the bytes a cut there sends per sample at fp32 (`split(k)` keeps layers [0, k) on the
  /// edge; k = 0 sends the input), so that no split index is counted by hand.
  std::string summary(const Shape& sample) const {
    return table(sample);
  }
  /// summary() of the declared input shape; errc::invalid_argument when none was declared.
  std::string summary() const {
    if (!input_) fail(errc::invalid_argument, "summary() of a model without a declared input shape: pass one, summary(Shape{784})");
    return table(*input_);
  }

 private:
  std::string table(const Shape& sample) const {
    const Shape in = sample.with_leading(1);
    const std::vector<LayerInfo> info = describe(in);
    const auto per_sample = [](const Shape& s) {
      std::string t = "[";
      for (std::size_t i = 1; i < s.rank(); ++i) t += (i > 1 ? ", " : "") + std::to_string(s[i]);
      return t + "]";
    };
    std::string out;
    char line[200];
    std::snprintf(line, sizeof line, "%-5s  %-32s %-16s %12s %14s   %s\n", "layer", "", "output shape", "parameters",
                  "FLOPs", "split after it: sends (fp32)");
    out += line;
    std::snprintf(line, sizeof line, "%-5s  %-32s %-16s %12s %14s   k=0: %zu bytes\n", "-", "input",
                  per_sample(in).c_str(), "", "", in.count() * sizeof(T));
    out += line;
    std::size_t params = 0;
    std::uint64_t flops = 0;
    for (std::size_t i = 0; i < info.size(); ++i) {
      const LayerInfo& l = info[i];
      params += l.parameters;
      flops += l.flops;
      std::snprintf(line, sizeof line, "%-5zu  %-32s %-16s %12zu %14llu   k=%zu: %zu bytes%s\n", i, l.name.c_str(),
                    per_sample(l.output).c_str(), l.parameters, static_cast<unsigned long long>(l.flops), i + 1,
                    l.output_bytes, i + 1 == info.size() ? " (all on the edge)" : "");
      out += line;
    }
    std::snprintf(line, sizeof line, "total: %zu layers, %zu parameters, %llu FLOPs per sample\n", info.size(), params,
                  static_cast<unsigned long long>(flops));
    return out + line;
  }

 public:

  /// FLOPs of a forward pass on an input of shape `in`, summed over the layers.
  std::uint64_t flops(Shape in) const {
    std::uint64_t f = 0;
    for (const auto& l : layers_) {
      f += l->flops(in);
      in = l->output_shape(in);
    }
    return f;
  }
  /// Trainable scalars over all layers.
  std::size_t parameter_count() const {
    std::size_t n = 0;
    for (const auto& l : layers_) n += l->parameter_count();
    return n;
  }

  /// Every trainable tensor, named "<layer index>.<name>" (as PyTorch names nn.Sequential's).
  std::vector<Parameter<T>> parameters() { return named(&Layer<T>::parameters); }
  /// Every trainable tensor, read-only: for saving or copying the weights of a model that is not
  /// to change (packed weights stay packed).
  std::vector<ConstParameter<T>> parameters() const { return named(&Layer<T>::parameters); }
  /// Every saved-but-not-trained tensor (`Layer::buffers`), named like parameters.
  std::vector<Parameter<T>> buffers() { return named(&Layer<T>::buffers); }
  /// Every saved-but-not-trained tensor, read-only.
  std::vector<ConstParameter<T>> buffers() const { return named(&Layer<T>::buffers); }
  /// Zeroes every layer's gradients (allocating them the first time).
  void zero_grad() {
    for (auto& l : layers_) l->zero_grad();
  }
  /// Layer::pack_weights() on every layer: for a model whose weights stay fixed while it serves.
  void pack_weights() { set_weight_packing(WeightPacking::fixed); }
  /// Layer::set_weight_packing on every layer (automatic by default; off saves the packs' memory).
  void set_weight_packing(WeightPacking mode) {
    for (auto& l : layers_) l->set_weight_packing(mode);
  }
  /// Training or inference mode for every layer (Dropout cares).
  void set_training(bool on) noexcept {
    for (auto& l : layers_) l->set_training(on);
  }

 private:
  // add<Dense<T>>(out) or add<Dense<T>>(out, rng): the output width alone.
  template <class... Args>
  static constexpr bool output_width_only() {
    if constexpr (sizeof...(Args) == 1) {
      return (std::is_integral_v<std::remove_cvref_t<Args>> && ...);
    } else if constexpr (sizeof...(Args) == 2) {
      using First = std::remove_cvref_t<std::tuple_element_t<0, std::tuple<Args...>>>;
      using Second = std::remove_cvref_t<std::tuple_element_t<1, std::tuple<Args...>>>;
      return std::is_integral_v<First> && std::is_same_v<Second, Rng>;
    } else {
      return false;
    }
  }

  // The width of what the model outputs so far, for a Dense added without its input width.
  std::size_t next_width() const {
    const auto unknown = [] {
      fail(errc::invalid_argument,
           "add<Dense>(out): the input width is unknown; declare the model's input shape "
           "(Sequential<float> model(Shape{784})) or give it (add<Dense<float>>(784, out))");
    };
    Shape out;
    if (input_) {
      out = output_shape(input_->with_leading(1));
    } else {
      std::size_t i = layers_.size();
      while (i > 0 && layers_[i - 1]->name() != "Dense") --i;
      if (i == 0) unknown();
      out = Shape{1, static_cast<const Dense<T>&>(*layers_[i - 1]).out_features()};
      for (std::size_t j = i; j < layers_.size(); ++j) {  // element-wise layers keep the width
        bool same = false;
        try {
          same = layers_[j]->output_shape(out) == out;
        } catch (const error&) {  // a layer that takes other shapes: not element-wise
        }
        if (!same) unknown();
      }
    }
    return out.features();
  }

  std::vector<Parameter<T>> named(std::vector<Parameter<T>> (Layer<T>::*which)()) {
    std::vector<Parameter<T>> all;
    for (std::size_t i = 0; i < layers_.size(); ++i)
      for (auto& p : ((*layers_[i]).*which)()) {
        p.name = std::to_string(i) + "." + p.name;
        all.push_back(std::move(p));
      }
    return all;
  }
  std::vector<ConstParameter<T>> named(std::vector<ConstParameter<T>> (Layer<T>::*which)() const) const {
    std::vector<ConstParameter<T>> all;
    for (std::size_t i = 0; i < layers_.size(); ++i)
      for (auto& p : (std::as_const(*layers_[i]).*which)()) {
        p.name = std::to_string(i) + "." + p.name;
        all.push_back(std::move(p));
      }
    return all;
  }

  std::vector<std::unique_ptr<Layer<T>>> layers_;
  std::optional<Shape> input_;  // declared per-sample input shape
  std::vector<Tensor<T>> acts_;   // output of each layer, kept for backward
  std::vector<Tensor<T>> grads_;  // two ping-pong buffers for input gradients
};

}  // namespace edgesplit

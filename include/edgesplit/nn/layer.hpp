// edgesplit/nn/layer.hpp - the layer contract every model part follows.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/tensor.hpp"

namespace edgesplit {

/// A named trainable tensor of a layer. `grad` is empty until the layer has run a backward pass
/// (inference-only models never pay for gradient storage).
template <Real T>
struct Parameter {
  std::string name;  ///< "weight" or "bias" (the model prefixes the layer index: "0.weight")
  TensorView<T> value;  ///< the values, a view into the layer's own storage
  TensorView<T> grad;  ///< the gradient, same shape; empty until zero_grad() or a backward pass
};

/// A named tensor of a layer, read-only: what saving or copying a model needs, from a model that
/// may be const (a served model, whose packed weights reading leaves in place).
template <Real T>
struct ConstParameter {
  std::string name;  ///< "weight" or "bias" (the model prefixes the layer index: "0.weight")
  TensorView<const T> value;  ///< the values, a view into the layer's own storage
};

/// The same named tensors, read-only.
template <Real T>
std::vector<ConstParameter<T>> read_only(const std::vector<Parameter<T>>& ps) {
  std::vector<ConstParameter<T>> out;
  out.reserve(ps.size());
  for (const auto& p : ps) out.push_back({p.name, p.value});
  return out;
}

/// A layer's kind and configuration as plain values: what a weights file stores so a model can be
/// rebuilt from the file alone (see `make_layer` in nn/layer_factory.hpp). `type` is `name()`.
struct LayerSpec {
  std::string type;  ///< the layer kind, as returned by name()
  std::map<std::string, std::uint64_t> integers;  ///< sizes, seeds: {"in": 784, "out": 512}
  std::map<std::string, double> reals;            ///< rates, slopes: {"p": 0.2}
  /// Equal kind and equal settings.
  friend bool operator==(const LayerSpec&, const LayerSpec&) = default;
};

/// A 64-bit FNV-1a hash built field by field: how model fingerprints and graph architecture
/// hashes are computed, so that equal architectures hash equally on every platform (integers are
/// mixed as 8 little-endian bytes, strings with their length first).
struct Fnv1a {
  std::uint64_t value = 0xcbf29ce484222325ull;  ///< the hash so far
  /// Mixes `n` bytes.
  void bytes(const void* p, std::size_t n) noexcept {
    const auto* b = static_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < n; ++i) value = (value ^ b[i]) * 0x100000001b3ull;
  }
  /// Mixes an integer.
  void u64(std::uint64_t v) noexcept {
    unsigned char b[8];
    for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(v >> (8 * i));
    bytes(b, 8);
  }
  /// Mixes a string, its length first.
  void str(std::string_view s) noexcept {
    u64(s.size());
    bytes(s.data(), s.size());
  }
  /// Mixes a layer's kind and every setting.
  void spec(const LayerSpec& s) noexcept {
    str(s.type);
    for (const auto& [k, v] : s.integers) str(k), u64(v);
    for (const auto& [k, v] : s.reals) str(k), u64(std::bit_cast<std::uint64_t>(v));
  }
  /// The hash, never 0 (0 means "no check" where hashes are compared).
  std::uint64_t result() const noexcept { return value == 0 ? 1 : value; }
};

/// How a Dense keeps its weights in the layout its GEMM kernel reads. Eigen's product copies the
/// whole weight matrix into that layout on every batched call; a kept pack skips the copy (a
/// batched forward 1.15-1.4x faster at batch 16-64, twice at batch 8) and gives the same result,
/// bit for bit. Batch 1 (a matrix-vector product) never packs.
enum class WeightPacking {
  /// The default: the first inference-mode forward at batch >= 2 packs; each later one checks a
  /// checksum of the weights (one pass over them, kernels::word_checksum) and packs again in
  /// place when they changed, however they were written. Costs memory equal to the weights.
  automatic,
  /// pack_weights(): packed now and used without checking, for weights that stay fixed (a
  /// served tail). Handing the weights out for writing (parameters(), Dense::weight(), backward)
  /// returns to automatic; writes through views taken before the call are not seen.
  fixed,
  /// Never pack: saves the pack's memory (equal to the weights) on memory-tight edges.
  off,
};

/// One stage of a model.
///
/// Contract (checked once, in the public non-virtual functions, so implementations can trust
/// their arguments):
/// - inputs have rank >= 2 (batch first) and a batch of at least 1;
/// - `forward(in, out)` requires `out.shape() == output_shape(in.shape())`, reads `in` only, and
///   allocates nothing once the layer has seen the shape (implementations keep that promise);
/// - `backward(in, out, grad_out, grad_in)` takes the `in`/`out` pair of the latest forward pass,
///   adds the parameter gradients into `grad` (callers zero them between steps), and writes the
///   input gradient into `grad_in` unless `grad_in` is empty (the first layer needs none).
template <Real T>
class Layer {
 public:
  virtual ~Layer() = default;

  /// Short kind name ("Dense", "ReLU", ...), stable: file formats use it.
  virtual std::string_view name() const noexcept = 0;
  /// Human-readable description with the layer's configuration, e.g. "Dense(784 -> 512)".
  virtual std::string describe() const { return std::string(name()); }
  /// A deep copy (weights included): how `Sequential::split` hands out independent halves.
  virtual std::unique_ptr<Layer> clone() const = 0;

  /// Output shape for an input of shape `in`; errc::shape_mismatch or errc::invalid_argument when
  /// this layer cannot take `in`.
  Shape output_shape(const Shape& in) const {
    check_input(in);
    return output_shape_impl(in);
  }

  /// Computes `out` from `in` after checking both shapes against this layer's rules.
  void forward(TensorView<const T> in, TensorView<T> out) {
    check_output(out.shape(), output_shape(in.shape()), "output");
    forward_impl(in, out);
  }

  /// Accumulates the parameter gradients and writes the input gradient (unless `grad_in` is empty), after
  /// checking every shape.
  void backward(TensorView<const T> in, TensorView<const T> out, TensorView<const T> grad_out,
                TensorView<T> grad_in) {
    const Shape os = output_shape(in.shape());
    check_output(out.shape(), os, "output");
    check_output(grad_out.shape(), os, "output gradient");
    if (grad_in.data() != nullptr) check_output(grad_in.shape(), in.shape(), "input gradient");
    backward_impl(in, out, grad_out, grad_in);
  }

  /// Floating-point operations of one forward pass on `in` (multiply and add count as two).
  std::uint64_t flops(const Shape& in) const {
    check_input(in);
    return flops_impl(in);
  }

  /// Kind and configuration, enough for `make_layer` to build an equal layer (weights aside).
  virtual LayerSpec spec() const { return {std::string(name()), {}, {}}; }

  /// The trainable tensors, named as in file formats ("weight", "bias"), for writing (training,
  /// loading): drops packed weights (pack_weights()), since the views may be written through.
  std::vector<Parameter<T>> parameters() {
    weights_may_change();
    return parameters_impl();
  }
  /// The trainable tensors, read-only: for saving or copying weights without a mutable model;
  /// packed weights stay packed.
  std::vector<ConstParameter<T>> parameters() const { return const_parameters_impl(); }
  /// State that is saved with the model but not trained (a Standardizer's mean and std), named
  /// like parameters; `grad` is always empty.
  std::vector<Parameter<T>> buffers() { return buffers_impl(); }
  /// The saved-but-not-trained state, read-only.
  std::vector<ConstParameter<T>> buffers() const { return const_buffers_impl(); }
  /// Number of trainable scalars.
  virtual std::size_t parameter_count() const { return 0; }
  /// Sets every parameter gradient to zero, allocating gradient storage the first time.
  virtual void zero_grad() {}

  /// How a layer keeps its weights in its GEMM kernel's layout (a Dense: see WeightPacking). The
  /// default does nothing (layers without such weights).
  virtual void set_weight_packing(WeightPacking) {}
  /// Packs now for weights that stay fixed, as a server's copy of a tail's do:
  /// set_weight_packing(WeightPacking::fixed).
  void pack_weights() { set_weight_packing(WeightPacking::fixed); }

  /// Training mode changes what some layers do (Dropout); inference is the default.
  void set_training(bool on) noexcept { training_ = on; }
  bool training() const noexcept { return training_; }  ///< true in training mode

 protected:
  Layer() = default;
  /// Copyable only by the derived classes, whose clone() uses it.
  Layer(const Layer&) = default;
  /// Copyable only by the derived classes.
  Layer& operator=(const Layer&) = default;

  /// Rejects inputs this layer cannot take. The default accepts any rank >= 2 with batch >= 1.
  virtual void check_input(const Shape& in) const {
    if (in.rank() < 2)
      fail(errc::shape_mismatch,
           std::string(name()) + " needs a batch-first input of rank >= 2, got " + in.str());
    if (in.batch() == 0) fail(errc::invalid_argument, std::string(name()) + " got an empty batch");
  }
  /// The output shape for an input that passed check_input().
  virtual Shape output_shape_impl(const Shape& in) const = 0;
  /// The forward pass on shapes already checked: allocates nothing once the shape has been seen.
  virtual void forward_impl(TensorView<const T> in, TensorView<T> out) = 0;
  /// The backward pass on shapes already checked (see the contract above).
  virtual void backward_impl(TensorView<const T> in, TensorView<const T> out,
                             TensorView<const T> grad_out, TensorView<T> grad_in) = 0;
  /// The FLOPs of a forward pass on an input that passed check_input().
  virtual std::uint64_t flops_impl(const Shape& in) const = 0;
  /// The trainable tensors; none by default. Views only, with no other effect: the const
  /// overloads of parameters() call it too (anything to undo before the weights change, such as a
  /// pack, belongs in weights_may_change()).
  virtual std::vector<Parameter<T>> parameters_impl() { return {}; }
  /// Saved, non-trained state; none by default. Views only, as parameters_impl().
  virtual std::vector<Parameter<T>> buffers_impl() { return {}; }
  /// Called before the mutable parameters() hands out views that may be written through.
  virtual void weights_may_change() {}
  /// Read-only parameters: by default parameters_impl()'s views, made const (a layer whose
  /// parameters_impl has effects, such as a GraphLayer reaching into its nodes, overrides it).
  virtual std::vector<ConstParameter<T>> const_parameters_impl() const {
    return read_only(const_cast<Layer*>(this)->parameters_impl());  // views only: nothing is written
  }
  /// Read-only buffers, as const_parameters_impl().
  virtual std::vector<ConstParameter<T>> const_buffers_impl() const {
    return read_only(const_cast<Layer*>(this)->buffers_impl());
  }


 private:
  void check_output(const Shape& got, const Shape& want, const char* what) const {
    if (!(got == want))
      fail(errc::shape_mismatch, std::string(name()) + " " + what + " has shape " + got.str() +
                                     ", expected " + want.str());
  }

  bool training_ = false;
};

}  // namespace edgesplit

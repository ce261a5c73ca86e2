// edgesplit/nn/dataset.hpp - a labelled classification data set held in memory.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "edgesplit/core/error.hpp"
#include "edgesplit/core/random.hpp"
#include "edgesplit/core/tensor.hpp"

namespace edgesplit {

/// Inputs {N, features...} and one class label per row, each in [0, classes).
template <Real T>
struct Dataset {
  Tensor<T> inputs;  ///< {N, features...}
  std::vector<std::int32_t> labels;  ///< one class per row, in [0, classes)
  std::size_t classes = 0;  ///< number of classes

  std::size_t size() const noexcept { return labels.size(); }  ///< number of samples

  /// errc::invalid_argument unless there is one label per input row, each in [0, classes).
  void validate() const {
    if (inputs.shape().rank() < 2 || inputs.shape().batch() != labels.size())
      fail(errc::invalid_argument, "data set has inputs " + inputs.shape().str() + " and " +
                                       std::to_string(labels.size()) + " labels");
    if (classes == 0 || classes > static_cast<std::size_t>(INT32_MAX))
      fail(errc::invalid_argument, "data set needs a class count in [1, 2^31)");
    for (std::int32_t y : labels)
      if (y < 0 || static_cast<std::size_t>(y) >= classes)
        fail(errc::invalid_argument, "label " + std::to_string(y) + " outside [0, " + std::to_string(classes) + ")");
  }

  /// A copy of rows [begin, end).
  Dataset slice(std::size_t begin, std::size_t end) const {
    Dataset d;
    const auto view = inputs.batch(begin, end);  // errc::out_of_range when outside
    d.inputs = Tensor<T>(view.shape());
    copy(view, d.inputs.view());
    d.labels.assign(labels.begin() + static_cast<std::ptrdiff_t>(begin), labels.begin() + static_cast<std::ptrdiff_t>(end));
    d.classes = classes;
    return d;
  }

  /// Holds out the last `fraction` of the rows, as Keras' `validation_split` does: {the first
  /// rows, the last round(N x fraction) rows}. Take the validation set from the training data,
  /// never from the test set, whose accuracy must stay unseen. Shuffle first if the rows are
  /// ordered (by class, by time). errc::invalid_argument unless fraction is in (0, 1) and both
  /// parts get at least one row.
  std::pair<Dataset, Dataset> split(double fraction) const {
    const std::size_t n = size();
    if (!(fraction > 0 && fraction < 1)) fail(errc::invalid_argument, "Dataset::split needs a fraction in (0, 1)");
    const auto held = static_cast<std::size_t>(std::llround(static_cast<double>(n) * fraction));
    if (held == 0 || held >= n)
      fail(errc::invalid_argument, "Dataset::split of " + std::to_string(n) + " rows by " + std::to_string(fraction) +
                                       " leaves a part empty");
    return {slice(0, n - held), slice(n - held, n)};
  }
};

/// Random shifts and mirror images of a batch of NCHW images, in place: each image is moved by
/// up to `max_shift` pixels in each direction (uncovered pixels become 0, as after zero padding and
/// a random crop) and, with `flip`, mirrored left to right with probability 1/2. The usual
/// augmentation for small images (Fashion-MNIST, CIFAR); pass it to Trainer::set_augment.
/// `scratch` holds one plane (its capacity is reused). errc::shape_mismatch unless rank 4.
template <Real T>
void shift_and_flip(TensorView<T> batch, Rng& rng, std::size_t max_shift, bool flip, std::vector<T>& scratch) {
  const Shape& s = batch.shape();
  if (s.rank() != 4) fail(errc::shape_mismatch, "shift_and_flip needs NCHW images, got " + s.str());
  const std::size_t h = s[2], w = s[3], plane = h * w, image = s[1] * plane;
  scratch.resize(plane);
  const auto span = static_cast<std::uint64_t>(2 * max_shift + 1);
  for (std::size_t n = 0; n < s[0]; ++n) {
    const auto dy = static_cast<std::ptrdiff_t>(rng.below(span)) - static_cast<std::ptrdiff_t>(max_shift);
    const auto dx = static_cast<std::ptrdiff_t>(rng.below(span)) - static_cast<std::ptrdiff_t>(max_shift);
    const bool mirror = flip && rng.below(2) == 1;
    for (std::size_t c = 0; c < s[1]; ++c) {
      T* p = batch.data() + n * image + c * plane;
      std::copy_n(p, plane, scratch.data());
      for (std::size_t y = 0; y < h; ++y)
        for (std::size_t x = 0; x < w; ++x) {
          const std::ptrdiff_t sy = static_cast<std::ptrdiff_t>(y) - dy;
          const std::ptrdiff_t sx0 = static_cast<std::ptrdiff_t>(mirror ? w - 1 - x : x) - dx;
          const bool inside = sy >= 0 && sx0 >= 0 && sy < static_cast<std::ptrdiff_t>(h) && sx0 < static_cast<std::ptrdiff_t>(w);
          p[y * w + x] = inside ? scratch[static_cast<std::size_t>(sy) * w + static_cast<std::size_t>(sx0)] : T(0);
        }
    }
  }
}

}  // namespace edgesplit

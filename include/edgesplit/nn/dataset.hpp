// edgesplit/nn/dataset.hpp - a labelled classification data set held in memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "edgesplit/core/error.hpp"
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
};

}  // namespace edgesplit

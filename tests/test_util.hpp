// Helpers shared by the test files.
#pragma once

#include <catch2/catch.hpp>

#include "edgesplit/core/error.hpp"

namespace edgesplit_test {

/// Runs `f` and requires it to throw edgesplit::error with code `code`.
template <class F>
void expect_errc(edgesplit::errc code, F&& f) {
  try {
    f();
    FAIL("expected edgesplit::error(" << edgesplit::to_string(code) << "), nothing was thrown");
  } catch (const edgesplit::error& e) {
    INFO(e.what());
    CHECK(e.code() == code);
  }
}

}  // namespace edgesplit_test

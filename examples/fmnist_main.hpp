// examples/fmnist_main.hpp - how every Fashion-MNIST example starts and ends: its arguments
// parsed, the data set found, and what the run throws reported with the program's name.
#pragma once

#include <cstdio>
#include <exception>

#include <edgesplit/core/error.hpp>
#include <edgesplit/io/idx.hpp>

namespace edgesplit_examples {

/// main() of an example: `parse(argc, argv)` gives the arguments (a struct with a `data` folder),
/// `body(args)` runs and returns the exit status. Exit status 2 when `parse` refuses an argument
/// (its typed error printed), 77 when Fashion-MNIST is not in `args.data` (the test suite's
/// "skipped"), 1 when `body` throws. Standard output is line-buffered, so that its lines stay in
/// order with progress written to standard error.
template <class Parse, class Body>
int fmnist_main(const char* program, int argc, char** argv, Parse&& parse, Body&& body) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  decltype(parse(argc, argv)) args;
  try {
    args = parse(argc, argv);
  } catch (const edgesplit::error& e) {
    std::fprintf(stderr, "%s: %s\n", program, e.what());
    return 2;
  }
  if (!edgesplit::fashion_mnist_available(args.data)) {
    std::fprintf(stderr, "%s: Fashion-MNIST not found in %s (Debian package dataset-fashion-mnist)\n", program,
                 args.data.c_str());
    return 77;
  }
  try {
    return body(args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", program, e.what());
    return 1;
  }
}

}  // namespace edgesplit_examples

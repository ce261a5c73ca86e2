// examples/cli.hpp - the command-line numbers of every example, checked the same way: the whole
// argument must be a number inside the option's range, or the example stops with
// errc::invalid_argument naming the option (arguments are input from outside the process).
#pragma once

#include <charconv>
#include <concepts>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <edgesplit/core/error.hpp>

namespace cli {

/// `s` as a T in [lo, hi]: whole numbers for integral T, decimal or exponent notation for
/// floating T; no sign on unsigned T, no spaces, nothing after the number.
template <class T>
  requires std::integral<T> || std::floating_point<T>
T number(std::string_view s, std::string_view what, T lo, T hi) {
  T v{};
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || end != s.data() + s.size() || !(v >= lo && v <= hi)) {
    std::ostringstream msg;
    msg << what << " must be " << (std::integral<T> ? "a whole number" : "a number") << " in [" << lo << ", " << hi
        << "], got '" << s << "'";
    edgesplit::fail(edgesplit::errc::invalid_argument, msg.str());
  }
  return v;
}

/// A comma-separated list of numbers, each as `number` reads it; empty items are refused.
template <class T>
std::vector<T> numbers(std::string_view s, std::string_view what, T lo, T hi) {
  std::vector<T> out;
  while (true) {
    const auto comma = s.find(',');
    out.push_back(number<T>(s.substr(0, comma), what, lo, hi));
    if (comma == std::string_view::npos) return out;
    s.remove_prefix(comma + 1);
  }
}

/// Calls `f(option, value)` for each `--option value` pair of argv[1..argc), in order;
/// errc::invalid_argument naming the option when the last one has no value.
template <class F>
void options(int argc, char** argv, F&& f) {
  for (int i = 1; i < argc; i += 2) {
    const std::string_view option = argv[i];
    if (i + 1 >= argc) edgesplit::fail(edgesplit::errc::invalid_argument, "option " + std::string(option) + " needs a value");
    f(option, std::string_view(argv[i + 1]));
  }
}

}  // namespace cli

// edgesplit/core/dtype.hpp - the element types a Tensor may hold, as values and as traits.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

namespace edgesplit {

/// Element type tag. The numeric values are part of the file and wire formats: never renumber.
enum class dtype : std::uint8_t { f32 = 1, f64 = 2, i8 = 3, u8 = 4, i32 = 5 };

/// The element types a Tensor may hold.
template <class T>
concept Element = std::same_as<T, float> || std::same_as<T, double> ||
                  std::same_as<T, std::int8_t> || std::same_as<T, std::uint8_t> ||
                  std::same_as<T, std::int32_t>;

/// The element types layers compute in.
template <class T>
concept Real = std::same_as<T, float> || std::same_as<T, double>;

/// The dtype tag of element type `T`, for headers and files.
template <Element T>
constexpr dtype dtype_of() noexcept {
  if constexpr (std::is_same_v<T, float>) return dtype::f32;
  else if constexpr (std::is_same_v<T, double>) return dtype::f64;
  else if constexpr (std::is_same_v<T, std::int8_t>) return dtype::i8;
  else if constexpr (std::is_same_v<T, std::uint8_t>) return dtype::u8;
  else return dtype::i32;
}

/// Bytes per element, or 0 for a value that is not a known dtype (input from outside).
constexpr std::size_t size_of(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return 4;
    case dtype::f64: return 8;
    case dtype::i8: return 1;
    case dtype::u8: return 1;
    case dtype::i32: return 4;
  }
  return 0;
}

/// The dtype's name ("f32", ...), for messages.
constexpr std::string_view to_string(dtype t) noexcept {
  switch (t) {
    case dtype::f32: return "f32";
    case dtype::f64: return "f64";
    case dtype::i8: return "i8";
    case dtype::u8: return "u8";
    case dtype::i32: return "i32";
  }
  return "unknown";
}

}  // namespace edgesplit

# Compile options for edgesplit's own binaries (tests, examples, benchmarks): warnings and the
# target ISA. Consumers of the edgesplit::edgesplit target get none of these.
add_library(edgesplit_dev_flags INTERFACE)
target_compile_options(edgesplit_dev_flags INTERFACE -Wall -Wextra -Wpedantic)
if(EDGESPLIT_WERROR)
  target_compile_options(edgesplit_dev_flags INTERFACE -Werror)
endif()
if(EDGESPLIT_ISA STREQUAL "native")
  target_compile_options(edgesplit_dev_flags INTERFACE -march=native -mtune=generic)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # GCC 12 reports false maybe-uninitialized warnings inside its own AVX-512 intrinsics headers
    # when Eigen's AVX-512 paths are inlined.
    target_compile_options(edgesplit_dev_flags INTERFACE -Wno-maybe-uninitialized)
  endif()
elseif(EDGESPLIT_ISA STREQUAL "x86-64-v3")
  target_compile_options(edgesplit_dev_flags INTERFACE -march=x86-64-v3 -mtune=generic)
elseif(NOT EDGESPLIT_ISA STREQUAL "none")
  message(FATAL_ERROR "EDGESPLIT_ISA must be native, x86-64-v3 or none, not '${EDGESPLIT_ISA}'")
endif()

# Sanitizers for edgesplit's own binaries: -DEDGESPLIT_SANITIZE=address,undefined or =thread.
set(EDGESPLIT_SANITIZE "" CACHE STRING "Comma-separated -fsanitize= list for tests/examples (empty: none)")
if(EDGESPLIT_SANITIZE)
  target_compile_options(edgesplit_dev_flags INTERFACE -fsanitize=${EDGESPLIT_SANITIZE}
                         -fno-sanitize-recover=all -fno-omit-frame-pointer)
  target_link_options(edgesplit_dev_flags INTERFACE -fsanitize=${EDGESPLIT_SANITIZE})
endif()

# Cross build for 64-bit ARM boards (Debian's g++-aarch64-linux-gnu). Tests run under
# qemu-aarch64 (Debian's qemu-user) through the crosscompiling emulator.
#   cmake -S . -B build/aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
# Eigen, xsimd and Catch2 are header-only: the build host's headers serve every target.
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
find_program(EDGESPLIT_QEMU_AARCH64 qemu-aarch64)
if(EDGESPLIT_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${EDGESPLIT_QEMU_AARCH64} -L /usr/aarch64-linux-gnu)
endif()
# xsimd's (header-only) CMake package lives under the build host's multiarch directory.
if(NOT xsimd_DIR)
  file(GLOB _edgesplit_xsimd_dirs /usr/lib/*/cmake/xsimd)
  if(_edgesplit_xsimd_dirs)
    list(GET _edgesplit_xsimd_dirs 0 _edgesplit_xsimd_dir)
    set(xsimd_DIR ${_edgesplit_xsimd_dir} CACHE PATH "xsimd CMake package (header-only, host copy)" FORCE)
  endif()
endif()

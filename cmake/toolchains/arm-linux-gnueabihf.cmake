# Cross build for 32-bit ARM hard-float boards (Debian's g++-arm-linux-gnueabihf), with NEON
# enabled (-mfpu=neon-vfpv4: Cortex-A7 and later, e.g. Raspberry Pi 2 and up). Tests run under
# qemu-arm (Debian's qemu-user).
#   cmake -S . -B build/armhf -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/arm-linux-gnueabihf.cmake
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR armv7l)
set(CMAKE_C_COMPILER arm-linux-gnueabihf-gcc)
set(CMAKE_CXX_COMPILER arm-linux-gnueabihf-g++)
set(CMAKE_C_FLAGS_INIT "-mfpu=neon-vfpv4")
set(CMAKE_CXX_FLAGS_INIT "-mfpu=neon-vfpv4")
set(CMAKE_FIND_ROOT_PATH /usr/arm-linux-gnueabihf)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
find_program(EDGESPLIT_QEMU_ARM qemu-arm)
if(EDGESPLIT_QEMU_ARM)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${EDGESPLIT_QEMU_ARM} -L /usr/arm-linux-gnueabihf)
endif()
# xsimd's (header-only) CMake package lives under the build host's multiarch directory.
if(NOT xsimd_DIR)
  file(GLOB _edgesplit_xsimd_dirs /usr/lib/*/cmake/xsimd)
  if(_edgesplit_xsimd_dirs)
    list(GET _edgesplit_xsimd_dirs 0 _edgesplit_xsimd_dir)
    set(xsimd_DIR ${_edgesplit_xsimd_dir} CACHE PATH "xsimd CMake package (header-only, host copy)" FORCE)
  endif()
endif()

# vcpkg overlay port for edgesplit, built from the source tree this file lives in:
#   vcpkg install edgesplit --overlay-ports=<edgesplit>/packaging/vcpkg
# or, in a manifest project, list "edgesplit" in vcpkg.json and pass the same --overlay-ports (or
# set it in vcpkg-configuration.json). edgesplit needs xsimd 8 (its CMake package accepts only
# the same major version): pin it in the consuming manifest with
#   "overrides": [ { "name": "xsimd", "version": "8.1.0" } ]
# Header-only: the build configures edgesplit with its tests, examples and benchmarks off and
# installs the headers, the CMake package and the pkg-config file.
set(VCPKG_BUILD_TYPE release)  # nothing is compiled, so one configuration is enough
get_filename_component(SOURCE_PATH "${CMAKE_CURRENT_LIST_DIR}/../.." ABSOLUTE)

# Each feature turns its optional dependency on, and its absence turns it off explicitly, so a
# package that happens to be installed does not change what edgesplit links.
vcpkg_check_features(OUT_FEATURE_OPTIONS FEATURE_OPTIONS
  FEATURES
    json EDGESPLIT_WITH_JSON
    zlib EDGESPLIT_WITH_ZLIB
    zstd EDGESPLIT_WITH_ZSTD
    zmq EDGESPLIT_WITH_ZMQ
    tls EDGESPLIT_WITH_TLS
    onnx EDGESPLIT_WITH_ONNX
    grpc EDGESPLIT_WITH_GRPC
)

vcpkg_cmake_configure(
  SOURCE_PATH "${SOURCE_PATH}"
  OPTIONS
    -DEDGESPLIT_BUILD_TESTS=OFF
    -DEDGESPLIT_BUILD_EXAMPLES=OFF
    -DEDGESPLIT_BUILD_BENCH=OFF
    -DEDGESPLIT_INSTALL=ON
    # The HTTP front end needs cpp-httplib built as a library with its pkg-config file (as Debian
    # ships it); vcpkg's port is header-only, so the port leaves it out.
    -DEDGESPLIT_WITH_HTTP=OFF
    ${FEATURE_OPTIONS}
)
vcpkg_cmake_install()
# edgesplit installs its CMake package to share/cmake/edgesplit; vcpkg wants share/edgesplit.
vcpkg_cmake_config_fixup(CONFIG_PATH share/cmake/edgesplit)
vcpkg_fixup_pkgconfig()

file(REMOVE_RECURSE "${CURRENT_PACKAGES_DIR}/debug" "${CURRENT_PACKAGES_DIR}/lib")
file(INSTALL "${CMAKE_CURRENT_LIST_DIR}/usage" DESTINATION "${CURRENT_PACKAGES_DIR}/share/${PORT}")
vcpkg_install_copyright(FILE_LIST "${SOURCE_PATH}/LICENSE")

"""Conan 2 recipe for edgesplit (header-only), built from the source tree it lives in.

    conan create packaging/conan --build=missing                       # default options
    conan create packaging/conan -o "edgesplit/*:with_zstd=False"      # without zstd
    conan create packaging/conan -o "edgesplit/*:with_tls=True"        # with TLS (OpenSSL)

The package is what `cmake --install` writes (headers, CMake package, pkg-config file); consumers
use the CMakeDeps / PkgConfigDeps files Conan generates from package_info(), which name the same
CMake target, `edgesplit::edgesplit`.
"""
import os

from conan import ConanFile
from conan.tools.build import check_min_cppstd
from conan.tools.cmake import CMake, CMakeDeps, CMakeToolchain, cmake_layout
from conan.tools.files import copy, rmdir

required_conan_version = ">=2.0"


class EdgesplitConan(ConanFile):
    name = "edgesplit"
    version = "0.1.0"
    description = "Split and collaborative edge-cloud neural-network inference (header-only, C++20)"
    license = "Apache-2.0"
    topics = ("neural-networks", "edge-computing", "split-inference", "quantization", "header-only")
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"
    # Each optional dependency is used by its own headers only (see the top CMakeLists.txt).
    options = {"with_json": [True, False], "with_zlib": [True, False], "with_zstd": [True, False],
               "with_zmq": [True, False], "with_tls": [True, False], "with_onnx": [True, False],
               "with_grpc": [True, False]}
    default_options = {"with_json": True, "with_zlib": True, "with_zstd": True, "with_zmq": False,
                       "with_tls": False, "with_onnx": False, "with_grpc": False}
    no_copy_source = True

    def export_sources(self):
        root = os.path.join(self.recipe_folder, "..", "..")
        for pattern in ("CMakeLists.txt", "LICENSE", "cmake/*", "include/*"):
            copy(self, pattern, root, self.export_sources_folder)

    def layout(self):
        cmake_layout(self)

    def requirements(self):
        self.requires("eigen/3.4.0")
        # xsimd 8 only: edgesplit uses its 8.x API, and xsimd's CMake package accepts only the
        # major version asked for.
        self.requires("xsimd/8.1.0")
        if self.options.with_json:
            self.requires("nlohmann_json/3.11.3")
        if self.options.with_zlib:
            self.requires("zlib/[>=1.2.11 <2]")
        if self.options.with_zstd:
            self.requires("zstd/[>=1.5 <2]")
        if self.options.with_zmq:
            self.requires("cppzmq/[>=4.7 <5]")
        if self.options.with_tls:
            self.requires("openssl/[>=1.1.1 <4]")
        if self.options.with_onnx:
            self.requires("onnx/[>=1.12 <2]")
        if self.options.with_grpc:
            self.requires("grpc/[>=1.50 <2]")

    def package_id(self):
        # Nothing is compiled: the package is the same for every compiler, OS and build type.
        # The options stay in the id, because they change which dependencies the headers use.
        self.info.settings.clear()

    def validate(self):
        if self.settings.get_safe("compiler.cppstd"):
            check_min_cppstd(self, 20)

    def generate(self):
        tc = CMakeToolchain(self)
        tc.cache_variables["EDGESPLIT_BUILD_TESTS"] = False
        tc.cache_variables["EDGESPLIT_BUILD_EXAMPLES"] = False
        tc.cache_variables["EDGESPLIT_BUILD_BENCH"] = False
        tc.cache_variables["EDGESPLIT_INSTALL"] = True
        tc.cache_variables["EDGESPLIT_WITH_JSON"] = bool(self.options.with_json)
        tc.cache_variables["EDGESPLIT_WITH_ZLIB"] = bool(self.options.with_zlib)
        tc.cache_variables["EDGESPLIT_WITH_ZSTD"] = bool(self.options.with_zstd)
        tc.cache_variables["EDGESPLIT_WITH_ZMQ"] = bool(self.options.with_zmq)
        tc.cache_variables["EDGESPLIT_WITH_TLS"] = bool(self.options.with_tls)
        tc.cache_variables["EDGESPLIT_WITH_ONNX"] = bool(self.options.with_onnx)
        tc.cache_variables["EDGESPLIT_WITH_GRPC"] = bool(self.options.with_grpc)
        # The HTTP front end needs cpp-httplib built as a library with its pkg-config file (as
        # Debian ships it); Conan Center's is header-only, so the recipe leaves it out.
        tc.cache_variables["EDGESPLIT_WITH_HTTP"] = False
        tc.generate()
        CMakeDeps(self).generate()

    def build(self):
        cmake = CMake(self)
        cmake.configure()

    def package(self):
        copy(self, "LICENSE", self.source_folder, os.path.join(self.package_folder, "licenses"))
        cmake = CMake(self)
        cmake.install()
        # Conan generates the consumers' CMake and pkg-config files from package_info().
        rmdir(self, os.path.join(self.package_folder, "share"))

    def package_info(self):
        self.cpp_info.set_property("cmake_file_name", "edgesplit")
        self.cpp_info.set_property("cmake_target_name", "edgesplit::edgesplit")
        self.cpp_info.set_property("pkg_config_name", "edgesplit")
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []
        self.cpp_info.requires = ["eigen::eigen", "xsimd::xsimd"]
        if self.options.with_json:
            self.cpp_info.requires.append("nlohmann_json::nlohmann_json")
        if self.options.with_zlib:
            self.cpp_info.requires.append("zlib::zlib")
        if self.options.with_zstd:
            self.cpp_info.requires.append("zstd::zstd")
            self.cpp_info.defines.append("EDGESPLIT_HAS_ZSTD=1")
        if self.options.with_zmq:
            self.cpp_info.requires.append("cppzmq::cppzmq")
        if self.options.with_tls:
            self.cpp_info.requires.extend(["openssl::ssl", "openssl::crypto"])
            self.cpp_info.defines.append("EDGESPLIT_HAS_TLS=1")
        if self.options.with_onnx:
            self.cpp_info.requires.append("onnx::onnx")  # brings onnx_proto and protobuf
            self.cpp_info.defines.append("EDGESPLIT_HAS_ONNX=1")
        if self.options.with_grpc:
            self.cpp_info.requires.append("grpc::grpc++")
            self.cpp_info.defines.append("EDGESPLIT_HAS_GRPC=1")
        if self.settings.os in ("Linux", "FreeBSD"):
            self.cpp_info.system_libs = ["pthread"]

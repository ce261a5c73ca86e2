# Finds cpp-httplib 0.11 or later (Debian's libcpp-httplib-dev: a header and a compiled library)
# for the Open Inference Protocol front end (runtime/oip_http.hpp) and defines the imported target
# edgesplit::httplib; sets edgesplit_httplib_FOUND. Debian builds the library with OpenSSL, zlib
# and Brotli support, which changes the layout of its types, so every file that includes httplib.h
# must see the same CPPHTTPLIB_* macros: they are taken from the library's pkg-config file. Cross
# builds find no library for their target (CMAKE_FIND_ROOT_PATH), so there it stays not found.
set(edgesplit_httplib_FOUND FALSE)
find_path(EDGESPLIT_HTTPLIB_INCLUDE_DIR httplib.h)
find_library(EDGESPLIT_HTTPLIB_LIBRARY NAMES cpp-httplib)
if(EDGESPLIT_HTTPLIB_INCLUDE_DIR AND EDGESPLIT_HTTPLIB_LIBRARY)
  find_package(PkgConfig QUIET)
  if(PKG_CONFIG_FOUND)
    pkg_check_modules(_EDGESPLIT_HTTPLIB_PC QUIET cpp-httplib>=0.11)
  endif()
  if(_EDGESPLIT_HTTPLIB_PC_FOUND)
    set(_edgesplit_httplib_defs "")
    foreach(_flag IN LISTS _EDGESPLIT_HTTPLIB_PC_CFLAGS_OTHER)
      if(_flag MATCHES "^-D(.+)$")
        list(APPEND _edgesplit_httplib_defs "${CMAKE_MATCH_1}")
      endif()
    endforeach()
    if(NOT TARGET edgesplit::httplib)
      add_library(edgesplit::httplib INTERFACE IMPORTED)
      set_target_properties(edgesplit::httplib PROPERTIES
        INTERFACE_LINK_LIBRARIES "${EDGESPLIT_HTTPLIB_LIBRARY}"
        INTERFACE_COMPILE_DEFINITIONS "${_edgesplit_httplib_defs}")
      # /usr/include is searched anyway; naming it again (-isystem) breaks libstdc++'s #include_next.
      if(NOT EDGESPLIT_HTTPLIB_INCLUDE_DIR IN_LIST CMAKE_CXX_IMPLICIT_INCLUDE_DIRECTORIES
         AND NOT EDGESPLIT_HTTPLIB_INCLUDE_DIR STREQUAL "/usr/include")
        set_target_properties(edgesplit::httplib PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${EDGESPLIT_HTTPLIB_INCLUDE_DIR}")
      endif()
    endif()
    set(edgesplit_httplib_FOUND TRUE)
  endif()
endif()

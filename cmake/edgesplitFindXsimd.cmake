# Finds xsimd 8 and repairs a packaging fault seen in Debian 12: its exported xsimd target names
# `xtl` as a link dependency, but xtl is not packaged, so linking fails with "cannot find -lxtl".
# xsimd needs xtl only for its optional xtl-complex support, which edgesplit does not use. When
# no real xtl package exists, an empty imported `xtl` target stands in for it.
find_package(xsimd 8 REQUIRED)
if(TARGET xsimd AND NOT TARGET xtl)
  get_target_property(_edgesplit_xsimd_deps xsimd INTERFACE_LINK_LIBRARIES)
  if(_edgesplit_xsimd_deps MATCHES "(^|;)xtl(;|$)")
    find_package(xtl QUIET CONFIG)
    if(NOT TARGET xtl)
      add_library(xtl INTERFACE IMPORTED GLOBAL)
    endif()
  endif()
endif()

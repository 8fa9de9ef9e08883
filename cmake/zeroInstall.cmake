# Installs the headers and the exported zero::zero target, with zeroConfig.cmake and a version
# file, so that `find_package(zero)` works after `cmake --install`.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/zero DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS zero EXPORT zeroTargets)
install(EXPORT zeroTargets NAMESPACE zero:: DESTINATION ${CMAKE_INSTALL_DATADIR}/cmake/zero)

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/zeroConfig.cmake.in
  ${PROJECT_BINARY_DIR}/zeroConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_DATADIR}/cmake/zero)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/zeroConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES ${PROJECT_BINARY_DIR}/zeroConfig.cmake ${PROJECT_BINARY_DIR}/zeroConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_DATADIR}/cmake/zero)

# Packages: a .deb and an .rpm of the daemon, built together by
#     cmake --build BUILD --target package        (or packaging/build-packages.sh)
# into BUILD/packages/. Included once from the top-level CMakeLists.txt; see packaging/README.md.
#
# The version is the project's (project(... VERSION)), the package release UNIFAAS_PACKAGE_RELEASE.
# Package contents are the project's install rules: /usr/bin/unifaas (top level), the systemd
# units (systemd/) and the D-Bus files (dbus/) from their own directories, and from here the
# default configuration, the empty registry, the manual pages, copyright and changelog.

set(UNIFAAS_PACKAGE_RELEASE "1" CACHE STRING "Package release: the N of VERSION-N")
set(UNIFAAS_PACKAGE_MAINTAINER "unifaas maintainers <maintainers@unifaas.invalid>"
    CACHE STRING "Maintainer of the .deb and .rpm (\"Name <address>\")")

set(UNIFAAS_PKG_SRC ${CMAKE_CURRENT_LIST_DIR})
set(UNIFAAS_PKG_OUT ${CMAKE_BINARY_DIR}/packaging)
set(UNIFAAS_DEB_VERSION "${PROJECT_VERSION}-${UNIFAAS_PACKAGE_RELEASE}")
set(UNIFAAS_RPM_VERSION "${PROJECT_VERSION}-${UNIFAAS_PACKAGE_RELEASE}")
set(UNIFAAS_MAINTAINER "${UNIFAAS_PACKAGE_MAINTAINER}")
set(UNIFAAS_VERSION "${PROJECT_VERSION}")

# Files with the version filled in, then gzip -9n (no name, no timestamp: reproducible) as
# Debian policy wants for manual pages and changelogs.
configure_file(${UNIFAAS_PKG_SRC}/man/unifaas.8 ${UNIFAAS_PKG_OUT}/unifaas.8 @ONLY)
configure_file(${UNIFAAS_PKG_SRC}/man/unifaas.toml.5 ${UNIFAAS_PKG_OUT}/unifaas.toml.5 @ONLY)
configure_file(${UNIFAAS_PKG_SRC}/deb/changelog.in ${UNIFAAS_PKG_OUT}/changelog.Debian @ONLY)
configure_file(${UNIFAAS_PKG_SRC}/rpm/changelog.in ${UNIFAAS_PKG_OUT}/changelog.rpm @ONLY)
set(UNIFAAS_PKG_GZIPPED "")
foreach(name unifaas.8 unifaas.toml.5 changelog.Debian)
  add_custom_command(
    OUTPUT ${UNIFAAS_PKG_OUT}/${name}.gz
    COMMAND sh -c "gzip -9n -c \"$1\" > \"$2\"" sh ${UNIFAAS_PKG_OUT}/${name}
            ${UNIFAAS_PKG_OUT}/${name}.gz
    DEPENDS ${UNIFAAS_PKG_OUT}/${name}
    VERBATIM)
  list(APPEND UNIFAAS_PKG_GZIPPED ${UNIFAAS_PKG_OUT}/${name}.gz)
endforeach()
add_custom_target(package_files ALL DEPENDS ${UNIFAAS_PKG_GZIPPED})

# Directories 0755 whatever the umask of whoever builds the package.
set(CMAKE_INSTALL_DEFAULT_DIRECTORY_PERMISSIONS
    OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE WORLD_READ WORLD_EXECUTE)

# FHS places, absolute: the same in the packages and in a plain `cmake --install`.
install(FILES ${UNIFAAS_PKG_SRC}/unifaas.toml DESTINATION /etc/unifaas)
install(DIRECTORY DESTINATION /var/lib/unifaas/functions)
# Below the install prefix (/usr in the packages).
install(FILES ${UNIFAAS_PKG_OUT}/unifaas.8.gz DESTINATION share/man/man8)
install(FILES ${UNIFAAS_PKG_OUT}/unifaas.toml.5.gz DESTINATION share/man/man5)
install(FILES ${UNIFAAS_PKG_SRC}/copyright ${UNIFAAS_PKG_OUT}/changelog.Debian.gz
        DESTINATION share/doc/unifaas)
# Several nodes behind HAProxy (docs/FLEET.md).
install(FILES ${CMAKE_SOURCE_DIR}/examples/fleet/haproxy.cfg
        DESTINATION share/doc/unifaas/examples)

# --- CPack: common -------------------------------------------------------------------------
set(CPACK_GENERATOR "DEB;RPM")
set(CPACK_PACKAGE_NAME unifaas)
set(CPACK_PACKAGE_VENDOR "The unifaas authors")
set(CPACK_PACKAGE_CONTACT "${UNIFAAS_PACKAGE_MAINTAINER}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
set(CPACK_PACKAGE_DESCRIPTION
    "unifaas starts functions on demand in sandboxes (Docker containers and QEMU or
Firecracker microVMs) and routes HTTP invocations to them. A function is a
directory with a function.toml in the registry; instances are started when
requests arrive, kept warm for a while and stopped when idle.

The daemon is socket-activated by systemd (unifaas.socket), runs its instances
in unifaas.slice and is configured in /etc/unifaas/unifaas.toml.")
set(CPACK_RESOURCE_FILE_LICENSE ${CMAKE_SOURCE_DIR}/LICENSE)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_PACKAGE_DIRECTORY ${CMAKE_BINARY_DIR}/packages)
set(CPACK_STRIP_FILES ON)
# Absolute destinations (/etc, /var, /usr/lib/systemd, /usr/share/dbus-1) are intended.
set(CPACK_WARN_ON_ABSOLUTE_INSTALL_DESTINATION OFF)
# Per-generator adjustments made after the staging install (see the script).
set(CPACK_PRE_BUILD_SCRIPTS ${UNIFAAS_PKG_SRC}/cpack-prebuild.cmake)

# --- .deb ------------------------------------------------------------------------------------
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_RELEASE "${UNIFAAS_PACKAGE_RELEASE}")
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# The sandboxes: microVMs need QEMU, container functions a Docker engine.
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "qemu-system-x86, docker.io")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${UNIFAAS_PKG_SRC}/deb/conffiles ${UNIFAAS_PKG_SRC}/deb/postinst
    ${UNIFAAS_PKG_SRC}/deb/prerm ${UNIFAAS_PKG_SRC}/deb/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_DEBIAN_COMPRESSION_TYPE xz)

# --- .rpm ------------------------------------------------------------------------------------
set(CPACK_RPM_FILE_NAME RPM-DEFAULT)
set(CPACK_RPM_PACKAGE_RELEASE "${UNIFAAS_PACKAGE_RELEASE}")
set(CPACK_RPM_PACKAGE_LICENSE MIT)
set(CPACK_RPM_PACKAGE_GROUP "System Environment/Daemons")
set(CPACK_RPM_PACKAGE_AUTOREQ ON)
# /etc and /var cannot move with a prefix: not relocatable.
set(CPACK_PACKAGE_RELOCATABLE OFF)
# CPack 3.25 has no variable for weak dependencies; these lines land in the spec preamble.
# No /usr/lib/.build-id links: they would only point at /usr/bin/unifaas and collide with
# debuginfo packages nobody ships.
set(CPACK_RPM_SPEC_MORE_DEFINE "%define _build_id_links none
Recommends: (qemu-kvm or qemu-system-x86)
Recommends: (moby-engine or docker)")
set(CPACK_RPM_POST_INSTALL_SCRIPT_FILE ${UNIFAAS_PKG_SRC}/rpm/post.sh)
set(CPACK_RPM_PRE_UNINSTALL_SCRIPT_FILE ${UNIFAAS_PKG_SRC}/rpm/preun.sh)
set(CPACK_RPM_POST_UNINSTALL_SCRIPT_FILE ${UNIFAAS_PKG_SRC}/rpm/postun.sh)
set(CPACK_RPM_CHANGELOG_FILE ${UNIFAAS_PKG_OUT}/changelog.rpm)
# The configuration survives upgrades and removal as the administrator left it.
set(CPACK_RPM_USER_FILELIST "%config(noreplace) /etc/unifaas/unifaas.toml")
# Directories other packages own (filesystem, systemd, dbus, man-pages): not ours to list.
set(CPACK_RPM_EXCLUDE_FROM_AUTO_FILELIST_ADDITION
    /var /var/lib /usr/lib/systemd /usr/lib/systemd/system
    /usr/share/dbus-1 /usr/share/dbus-1/system.d /usr/share/dbus-1/system-services
    /usr/share/dbus-1/interfaces /usr/share/man /usr/share/man/man5 /usr/share/man/man8
    /usr/share/licenses)

include(CPack)

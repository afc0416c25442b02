# CPACK_PRE_BUILD_SCRIPTS: runs once per generator after the project was installed into the
# staging directory and before the package is made from it. Only the .rpm needs changes; the
# .deb is the staging tree as installed.
if(NOT CPACK_GENERATOR STREQUAL "RPM")
  return()
endif()

set(_root "${CPACK_TEMPORARY_DIRECTORY}")

# RPM conventions for documentation: the license goes to /usr/share/licenses/<name> (%license),
# the changelog into the package header (%changelog, CPACK_RPM_CHANGELOG_FILE). The Debian
# copyright and changelog.Debian.gz stay out of the .rpm; the examples (haproxy.cfg) stay in.
file(REMOVE "${_root}/usr/share/doc/unifaas/copyright"
     "${_root}/usr/share/doc/unifaas/changelog.Debian.gz")
file(MAKE_DIRECTORY "${_root}/usr/share/licenses/unifaas")
file(COPY_FILE "${CPACK_RESOURCE_FILE_LICENSE}" "${_root}/usr/share/licenses/unifaas/LICENSE")
list(APPEND CPACK_RPM_USER_FILELIST "%license /usr/share/licenses/unifaas/LICENSE")

# CPackRPM marks every file installed to an absolute destination as %config, which would make
# unit files, D-Bus files and the registry directory "configuration". Only what
# CPACK_RPM_USER_FILELIST names is configuration (/etc/unifaas/unifaas.toml, noreplace); the rest
# stays in the ordinary file list.
set(CPACK_ABSOLUTE_DESTINATION_FILES "")

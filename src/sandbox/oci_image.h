// OciImageCache: the root filesystems of engine = "oci" functions. A plain directory is used as
// it is (no image config). An OCI image layout directory or a docker-archive .tar is unpacked
// once (skopeo turns an archive into a layout, `umoci raw unpack` applies the layers with their
// whiteouts) into <cache>/<digest>/rootfs, written to a temporary directory and renamed into
// place, so a crash never leaves a half-unpacked image where it would be used. The digest is the
// image manifest's (layout) or the archive file's sha256.
#pragma once

#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "config/function_spec.h"
#include "sandbox/oci_bundle.h"

namespace unifaas {

struct OciImage {
    std::filesystem::path rootfs;
    std::optional<ImageProcess> process;  // from the image config; none for a plain directory
};

class OciImageCache {
  public:
    explicit OciImageCache(std::filesystem::path dir);

    // The image of a function, unpacked when not yet cached. Throws SandboxError 500 naming the
    // function, the image and the cause (missing, corrupt, no manifest ...).
    OciImage prepare(const FunctionSpec& spec);
    // Removes half-unpacked temporary directories a crash left; returns the count.
    unsigned remove_leftovers();

  private:
    OciImage unpack(const FunctionSpec& spec, const std::filesystem::path& layout,
                    const std::string& digest, const std::filesystem::path& work);

    std::filesystem::path dir_;
    std::mutex mu_;  // one unpack at a time
};

// Reads the process settings from an OCI image config blob (Entrypoint, Cmd, Env, WorkingDir,
// numeric User). Throws std::runtime_error naming the problem.
ImageProcess parse_image_config(const std::string& json_text);

}  // namespace unifaas

#include "sandbox/oci_image.h"

#include <fstream>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "sandbox/child_process.h"
#include "sandbox/sandbox.h"
#include "sandbox/vm_common.h"
#include "util/random.h"

namespace unifaas {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kTag = "unifaas";

std::string read_file(const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    if (!in) {
        throw std::runtime_error("cannot read " + file.string());
    }
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

// "sha256:abc..." -> <layout>/blobs/sha256/abc...
fs::path blob_path(const fs::path& layout, const std::string& digest) {
    auto colon = digest.find(':');
    if (colon == std::string::npos || digest.find('/') != std::string::npos ||
        digest.find("..") != std::string::npos) {
        throw std::runtime_error("bad digest \"" + digest + "\"");
    }
    return layout / "blobs" / digest.substr(0, colon) / digest.substr(colon + 1);
}

struct LayoutManifest {
    std::string digest;  // of the manifest
    std::string tag;     // its ref name, "" when untagged
    std::string config_digest;
};

LayoutManifest first_manifest(const fs::path& layout) {
    json index = json::parse(read_file(layout / "index.json"));
    const json& manifests = index.at("manifests");
    if (manifests.empty()) {
        throw std::runtime_error("index.json lists no manifest");
    }
    LayoutManifest m;
    m.digest = manifests.at(0).at("digest").get<std::string>();
    if (auto it = manifests.at(0).find("annotations"); it != manifests.at(0).end()) {
        m.tag = it->value("org.opencontainers.image.ref.name", "");
    }
    json manifest = json::parse(read_file(blob_path(layout, m.digest)));
    m.config_digest = manifest.at("config").at("digest").get<std::string>();
    return m;
}

std::vector<std::string> strings_or_empty(const json& config, const char* key) {
    auto it = config.find(key);
    if (it == config.end() || it->is_null()) {
        return {};
    }
    return it->get<std::vector<std::string>>();
}

std::uint32_t numeric_id(const std::string& text, const std::string& user) {
    if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos ||
        text.size() > 9) {
        throw std::runtime_error("image user \"" + user +
                                 "\" is not numeric (uid[:gid]); names are not resolved");
    }
    return static_cast<std::uint32_t>(std::stoul(text));
}

std::string sha256_of(const fs::path& file, const fs::path& work) {
    fs::path out = work / "sha256.txt";
    if (run_command({"sha256sum", file.string()}, out) != 0) {
        throw std::runtime_error("sha256sum failed: " + tail_lines(out, 3));
    }
    std::string text = read_file(out);
    return "sha256:" + text.substr(0, text.find(' '));
}

void run_tool(const std::vector<std::string>& argv, const fs::path& log) {
    int status = run_command(argv, log);
    if (status != 0) {
        throw std::runtime_error(
            fmt::format("{} failed (status {}): {}", argv.at(0), status, tail_lines(log, 5)));
    }
}

// A directory removed on destruction unless released.
class TempDir {
  public:
    explicit TempDir(fs::path path) : path_(std::move(path)) { fs::create_directories(path_); }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const fs::path& path() const { return path_; }

  private:
    fs::path path_;
};

}  // namespace

ImageProcess parse_image_config(const std::string& json_text) {
    json blob = json::parse(json_text);
    ImageProcess p;
    auto it = blob.find("config");
    if (it == blob.end() || it->is_null()) {
        return p;
    }
    const json& config = *it;
    p.entrypoint = strings_or_empty(config, "Entrypoint");
    p.cmd = strings_or_empty(config, "Cmd");
    p.env = strings_or_empty(config, "Env");
    p.cwd = config.value("WorkingDir", "");
    std::string user = config.value("User", "");
    if (!user.empty()) {
        auto colon = user.find(':');
        p.uid = numeric_id(user.substr(0, colon), user);
        p.gid = colon == std::string::npos ? 0 : numeric_id(user.substr(colon + 1), user);
    }
    return p;
}

OciImageCache::OciImageCache(fs::path dir) : dir_(std::move(dir)) {}

OciImage OciImageCache::prepare(const FunctionSpec& spec) {
    const fs::path& image = spec.container().image_path;
    auto failure = [&](const std::string& cause) {
        return SandboxError(
            500, fmt::format("function \"{}\": image {}: {}", spec.name, image.string(), cause));
    };
    std::error_code ec;
    if (!fs::exists(image, ec)) {
        throw failure("does not exist");
    }
    bool layout = fs::exists(image / "oci-layout", ec);
    if (fs::is_directory(image, ec) && !layout) {
        return {image, std::nullopt};  // a plain root filesystem
    }
    std::lock_guard lock(mu_);
    try {
        fs::create_directories(dir_);
        TempDir work(dir_ / (".tmp-" + random_hex(6)));
        std::string digest = layout ? first_manifest(image).digest : sha256_of(image, work.path());
        return unpack(spec, layout ? image : fs::path(), digest, work.path());
    } catch (const SandboxError&) {
        throw;
    } catch (const std::exception& e) {
        throw failure(e.what());
    }
}

OciImage OciImageCache::unpack(const FunctionSpec& spec, const fs::path& given_layout,
                               const std::string& digest, const fs::path& work) {
    fs::path cached =
        dir_ / (digest.substr(0, digest.find(':')) + "-" + digest.substr(digest.find(':') + 1));
    auto cached_image = [&] {
        return OciImage{cached / "rootfs", parse_image_config(read_file(cached / "config.json"))};
    };
    if (fs::exists(cached / "rootfs")) {
        return cached_image();
    }
    fs::path layout = given_layout;
    std::string tag;
    if (layout.empty()) {  // a docker-archive: into an OCI layout first
        layout = work / "layout";
        run_tool({"skopeo", "--insecure-policy", "copy", "--quiet",
                  "docker-archive:" + spec.container().image_path.string(),
                  "oci:" + layout.string() + ":" + kTag},
                 work / "skopeo.log");
        tag = kTag;
    }
    LayoutManifest manifest = first_manifest(layout);
    if (tag.empty()) {
        tag = manifest.tag;
    }
    if (tag.empty()) {
        throw std::runtime_error("the layout's first manifest has no ref name (tag)");
    }
    fs::path staged = work / "image";
    fs::create_directories(staged);
    run_tool({"umoci", "raw", "unpack", "--image", layout.string() + ":" + tag,
              (staged / "rootfs").string()},
             work / "umoci.log");
    fs::copy_file(blob_path(layout, manifest.config_digest), staged / "config.json");
    fs::rename(staged, cached);
    return cached_image();
}

unsigned OciImageCache::remove_leftovers() {
    unsigned removed = 0;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir_, ec)) {
        if (entry.path().filename().string().starts_with(".tmp-")) {
            fs::remove_all(entry.path(), ec);
            ++removed;
        }
    }
    return removed;
}

}  // namespace unifaas

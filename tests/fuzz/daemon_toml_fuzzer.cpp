// libFuzzer target: load_daemon_config on arbitrary unifaas.toml text.
#include <cstddef>
#include <cstdint>

#include "config/daemon_config.h"
#include "config_fuzzer.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace unifaas;
    const auto file = fuzz::scratch_dir() / "unifaas.toml";
    fuzz::write_file(file, reinterpret_cast<const char*>(data), size);
    fuzz::expect_config_error_or_success([&] { load_daemon_config(file); });
    return 0;
}

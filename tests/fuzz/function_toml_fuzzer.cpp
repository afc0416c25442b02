// libFuzzer target: load_function_spec on arbitrary function.toml text. Anything but a loaded
// spec or a ConfigError (another exception, a crash, a sanitizer report) is a finding.
#include <cstddef>
#include <cstdint>

#include "config_fuzzer.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace unifaas;
    const auto dir = fuzz::scratch_dir() / "fn";
    fuzz::write_file(dir / "function.toml", reinterpret_cast<const char*>(data), size);
    fuzz::expect_config_error_or_success([&] { load_function_spec(dir); });
    return 0;
}

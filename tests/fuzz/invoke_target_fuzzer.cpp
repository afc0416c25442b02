// libFuzzer target: invocation targets and percent-decoding.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "gateway/invoke_target.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view raw(reinterpret_cast<const char*>(data), size);
    if (auto target = unifaas::parse_invoke_target(raw)) {
        if (target->upstream_target.empty() || target->upstream_target.front() != '/') {
            std::abort();
        }
    }
    if (unifaas::percent_decode(raw).size() > raw.size()) {
        std::abort();
    }
    return 0;
}

// libFuzzer target: parse_request_head on arbitrary bytes. Checks the parser's own promises: a
// Complete head lies inside the buffer and its views point into it; a failure has a status.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "http/request_head.h"

namespace {

bool inside(std::string_view part, std::string_view whole) {
    return part.empty() || (part.data() >= whole.data() &&
                            part.data() + part.size() <= whole.data() + whole.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view buffer(reinterpret_cast<const char*>(data), size);
    unifaas::http::RequestHead head;
    unifaas::http::ParseError error;
    auto state = unifaas::http::parse_request_head(buffer, 8192, head, error);
    if (state == unifaas::http::ParseState::Complete) {
        if (head.size > buffer.size() || !inside(head.method, buffer) ||
            !inside(head.target, buffer) || head.method.empty() || head.target.empty()) {
            std::abort();
        }
        for (const auto& field : head.headers) {
            if (!inside(field.name, buffer) || !inside(field.value, buffer)) {
                std::abort();
            }
        }
    } else if (state == unifaas::http::ParseState::Failed && error.status < 400) {
        std::abort();
    }
    return 0;
}

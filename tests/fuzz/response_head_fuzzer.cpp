// libFuzzer target: parse_response_head on arbitrary bytes, as the answer to GET and to HEAD.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "http/response_head.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    std::string_view buffer(reinterpret_cast<const char*>(data), size);
    for (std::string_view method : {"GET", "HEAD"}) {
        unifaas::http::ResponseHead head;
        unifaas::http::ParseError error;
        auto state = unifaas::http::parse_response_head(buffer, 8192, method, head, error);
        if (state == unifaas::http::ParseState::Complete &&
            (head.size == 0 || head.size > buffer.size() || head.status < 100 ||
             head.status > 999)) {
            std::abort();
        }
        if (state == unifaas::http::ParseState::Failed && error.status != 502) {
            std::abort();
        }
    }
    return 0;
}

// libFuzzer target: the chunked decoder fed the same bytes whole and split at every position
// chosen by the first input byte; both ways must agree (bytes may arrive split anywhere).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "http/chunked.h"

namespace {

struct Outcome {
    std::string body;
    std::size_t consumed = 0;
    bool done = false;
    bool failed = false;
};

Outcome decode(std::string_view in, std::size_t step) {
    unifaas::http::ChunkedDecoder decoder(1 << 16);
    Outcome out;
    while (out.consumed < in.size() && !decoder.done() && !decoder.failed()) {
        std::string_view piece = in.substr(out.consumed, step);
        std::size_t used = decoder.feed(piece, out.body);
        if (used > piece.size()) {
            std::abort();
        }
        out.consumed += used;
        if (used < piece.size() && !decoder.done() && !decoder.failed()) {
            std::abort();  // stopped short without a reason
        }
    }
    out.done = decoder.done();
    out.failed = decoder.failed();
    if (decoder.decoded_size() != out.body.size() || out.body.size() > (1u << 16) ||
        (out.failed && decoder.error().empty())) {
        std::abort();
    }
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) {
        return 0;
    }
    std::size_t step = 1 + data[0] % 16;
    std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
    Outcome whole = decode(in, in.size() + 1);
    Outcome split = decode(in, step);
    if (whole.done != split.done || whole.failed != split.failed ||
        (whole.done && (whole.body != split.body || whole.consumed != split.consumed))) {
        std::abort();
    }
    return 0;
}

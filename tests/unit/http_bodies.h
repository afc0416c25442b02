// Bodies for HTTP tests: a recognisable byte pattern and its chunked encoding.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

namespace unifaas::test {

// n bytes of lowercase letters in a pattern that does not repeat within a few KiB.
inline std::string pattern(std::size_t n) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i) {
        s[i] = static_cast<char>('a' + (i * 7 + i / 251) % 26);
    }
    return s;
}

// `body` in the chunked transfer coding, in chunks of `piece` bytes.
inline std::string chunked(std::string_view body, std::size_t piece) {
    std::string out;
    char size[32];
    for (std::size_t at = 0; at < body.size(); at += piece) {
        auto part = body.substr(at, piece);
        std::snprintf(size, sizeof(size), "%zx\r\n", part.size());
        out += size;
        out += part;
        out += "\r\n";
    }
    return out + "0\r\n\r\n";
}

}  // namespace unifaas::test

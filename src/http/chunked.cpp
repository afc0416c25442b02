#include "http/chunked.h"

#include <algorithm>
#include <limits>

#include "http/message.h"

namespace unifaas::http {

namespace {

// Controls other than HTAB, and DEL: never part of an extension or a trailer field.
bool is_control(char c) {
    auto u = static_cast<unsigned char>(c);
    return (u < 0x20 && u != '\t') || u == 0x7f;
}

}  // namespace

ChunkedDecoder::ChunkedDecoder(std::uint64_t max_body) : max_body_(max_body) {}

void ChunkedDecoder::reset(std::uint64_t max_body) {
    max_body_ = max_body;
    decoded_ = 0;
    chunk_size_ = 0;
    line_bytes_ = 0;
    digits_ = 0;
    trailer_bytes_ = 0;
    state_ = State::Size;
    too_large_ = false;
    error_.clear();
}

void ChunkedDecoder::fail(std::string_view message, bool too_large) {
    state_ = State::Failed;
    too_large_ = too_large;
    error_.assign(message);
}

void ChunkedDecoder::end_size_line() {
    if (chunk_size_ == 0) {
        state_ = State::TrailerLine;
    } else {
        state_ = State::Data;
    }
}

std::size_t ChunkedDecoder::feed(std::string_view in, std::string& out) {
    std::size_t i = 0;
    while (i < in.size()) {
        if (state_ == State::Data) {
            auto n = static_cast<std::size_t>(std::min<std::uint64_t>(chunk_size_, in.size() - i));
            out.append(in.data() + i, n);
            i += n;
            chunk_size_ -= n;
            decoded_ += n;
            if (chunk_size_ == 0) {
                state_ = State::DataCR;
            }
            continue;
        }
        if (state_ == State::Done || state_ == State::Failed) {
            break;
        }
        char c = in[i];
        switch (state_) {
            case State::Size:
            case State::SizeSpace:
            case State::Extension:
                if (++line_bytes_ > kMaxSizeLine) {
                    fail("chunk size line too long");
                    return i;
                }
                break;
            case State::TrailerLine:
            case State::Trailer:
            case State::TrailerLF:
            case State::FinalLF:
                if (++trailer_bytes_ > kMaxTrailerBytes) {
                    fail("trailer section too large");
                    return i;
                }
                break;
            default:
                break;
        }
        switch (state_) {
            case State::Size:
                if (int digit = hex_value(c); digit >= 0) {
                    if (chunk_size_ > (std::numeric_limits<std::uint64_t>::max() -
                                       static_cast<std::uint64_t>(digit)) /
                                          16) {
                        fail("chunk size overflows", true);
                        return i;
                    }
                    chunk_size_ = chunk_size_ * 16 + static_cast<std::uint64_t>(digit);
                    if (chunk_size_ > max_body_ - decoded_) {
                        fail("body larger than the limit", true);
                        return i;
                    }
                    ++digits_;
                } else if (digits_ == 0) {
                    fail("invalid chunk size");
                    return i;
                } else if (c == ';') {
                    state_ = State::Extension;
                } else if (c == ' ' || c == '\t') {
                    state_ = State::SizeSpace;
                } else if (c == '\r') {
                    state_ = State::SizeLF;
                } else if (c == '\n') {
                    end_size_line();
                } else {
                    fail("invalid chunk size");
                    return i;
                }
                break;
            case State::SizeSpace:
                if (c == ';') {
                    state_ = State::Extension;
                } else if (c == '\r') {
                    state_ = State::SizeLF;
                } else if (c == '\n') {
                    end_size_line();
                } else if (c != ' ' && c != '\t') {
                    fail("invalid chunk size");
                    return i;
                }
                break;
            case State::Extension:
                if (c == '\r') {
                    state_ = State::SizeLF;
                } else if (c == '\n') {
                    end_size_line();
                } else if (is_control(c)) {
                    fail("invalid character in chunk extension");
                    return i;
                }
                break;
            case State::SizeLF:
                if (c != '\n') {
                    fail("CR without LF after chunk size");
                    return i;
                }
                end_size_line();
                break;
            case State::DataCR:
                if (c == '\r') {
                    state_ = State::DataLF;
                    break;
                }
                [[fallthrough]];
            case State::DataLF:
                if (c != '\n') {
                    fail("chunk data not followed by CRLF");
                    return i;
                }
                state_ = State::Size;
                chunk_size_ = 0;
                digits_ = 0;
                line_bytes_ = 0;
                break;
            case State::TrailerLine:
                if (c == '\r') {
                    state_ = State::FinalLF;
                } else if (c == '\n') {
                    state_ = State::Done;
                } else if (c == ' ' || c == '\t' || c == ':' || is_control(c)) {
                    fail("malformed trailer field");
                    return i;
                } else {
                    state_ = State::Trailer;
                }
                break;
            case State::Trailer:
                if (c == '\r') {
                    state_ = State::TrailerLF;
                } else if (c == '\n') {
                    state_ = State::TrailerLine;
                } else if (is_control(c)) {
                    fail("malformed trailer field");
                    return i;
                }
                break;
            case State::TrailerLF:
            case State::FinalLF:
                if (c != '\n') {
                    fail("CR without LF in trailer section");
                    return i;
                }
                state_ = state_ == State::FinalLF ? State::Done : State::TrailerLine;
                break;
            default:
                break;
        }
        ++i;
    }
    return i;
}

}  // namespace unifaas::http

// Incremental decoder for the chunked transfer coding (RFC 9112 7.1).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace unifaas::http {

// Bytes may arrive split anywhere. Chunk sizes are hex (overflow is rejected), chunk extensions
// are ignored, trailer fields are consumed and discarded. Lines end with CRLF or a bare LF.
class ChunkedDecoder {
  public:
    // Longest chunk-size line (size, extensions) and trailer section accepted.
    static constexpr std::size_t kMaxSizeLine = 4096;
    static constexpr std::size_t kMaxTrailerBytes = 8192;

    explicit ChunkedDecoder(std::uint64_t max_body);

    // Consumes from `in`, appends decoded data to `out` and returns the bytes consumed. Stops
    // consuming at the end of the message (after the trailers): what follows belongs to the next
    // message. Consumes nothing once done() or failed().
    std::size_t feed(std::string_view in, std::string& out);

    bool done() const { return state_ == State::Done; }
    bool failed() const { return state_ == State::Failed; }
    // Failed because the decoded size would exceed max_body.
    bool too_large() const { return too_large_; }
    // Why it failed; empty unless failed().
    const std::string& error() const { return error_; }
    // Decoded bytes so far.
    std::uint64_t decoded_size() const { return decoded_; }

    // Ready for the next message.
    void reset(std::uint64_t max_body);

  private:
    enum class State : std::uint8_t {
        Size,         // chunk-size digits
        SizeSpace,    // whitespace after the digits
        Extension,    // after ';' up to the line end
        SizeLF,       // CR seen at the end of the size line
        Data,         // chunk data
        DataCR,       // after the data: CR or LF
        DataLF,       // after the data and its CR
        TrailerLine,  // at the start of a trailer line or of the final empty line
        Trailer,      // inside a trailer line
        TrailerLF,    // CR seen at the end of a trailer line
        FinalLF,      // CR seen at the start of the final empty line
        Done,
        Failed,
    };

    void fail(std::string_view message, bool too_large = false);
    void end_size_line();

    std::uint64_t max_body_;
    std::uint64_t decoded_ = 0;
    std::uint64_t chunk_size_ = 0;  // while reading a size line: the size; in Data: what is left
    std::size_t line_bytes_ = 0;    // of the current size line
    std::size_t digits_ = 0;
    std::size_t trailer_bytes_ = 0;
    State state_ = State::Size;
    bool too_large_ = false;
    std::string error_;
};

}  // namespace unifaas::http

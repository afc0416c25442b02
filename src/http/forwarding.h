// Writing heads: the request the daemon sends to an instance, the response it returns to its
// client, and responses it makes itself. Hop-by-hop handling per RFC 9110 7.6.1.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "http/message.h"
#include "http/request_head.h"
#include "http/response_head.h"

namespace unifaas::http {

// Fields never forwarded in either direction (also dropped: every field the Connection fields
// name). Content-Length and X-Forwarded-For are rewritten by the functions below.
bool is_dropped_when_forwarding(std::string_view name);

// Appends "METHOD upstream_target HTTP/1.1\r\n", the client's end-to-end headers in order (dropping
// Connection, Keep-Alive, Proxy-Connection, Proxy-Authenticate, Proxy-Authorization, TE, Trailer,
// Transfer-Encoding, Upgrade, Expect, Content-Length, X-Forwarded-For, and every header the
// Connection header(s) name), then "Host: <upstream_host>" only when no Host is forwarded (the
// client sent none), then "X-Forwarded-For: <client's X-Forwarded-For values joined by ", ">,
// <client_address>" (or just the client address), then "Content-Length: <body_length>" when
// body_length > 0 or the method is POST, PUT or PATCH (instead "Transfer-Encoding: chunked" when
// chunked_body: a body of unknown length, relayed as it arrives), then "\r\n".
// "Connection: Upgrade" and "Upgrade: <upgrade>" at the end of the fields when `upgrade` is not
// empty (see upgrade_protocol).
void append_upstream_request_head(std::string& out, const RequestHead& in,
                                  std::string_view upstream_target, std::string_view upstream_host,
                                  std::string_view client_address, std::uint64_t body_length,
                                  bool chunked_body = false, std::string_view upgrade = {});

// The Upgrade field's value of an HTTP/1.1 request whose Connection field names "upgrade" and
// that has no body (e.g. a WebSocket handshake); empty otherwise.
std::string_view upgrade_protocol(const RequestHead& in);

// The head of a 101 Switching Protocols for the client: as append_streamed_response_head but
// without any framing, and with "Connection: Upgrade" and the instance's "Upgrade" field.
void append_upgrade_response_head(std::string& out, const ResponseHead& in);

// Appends "HTTP/1.1 <status> <reason>\r\n", the instance's end-to-end headers in order (same drop
// list; Content-Length is dropped and rewritten as "Content-Length: <body_length>" - except when
// the response has no body by definition (in.framing == None because of HEAD/204/304/1xx): then
// the instance's own Content-Length header, if any, is kept as is and none is added), then
// "Connection: close" when !keep_alive, then "\r\n". Reason: the instance's own phrase, or
// reason_phrase().
void append_downstream_response_head(std::string& out, const ResponseHead& in,
                                     std::uint64_t body_length, bool keep_alive);

// How a streamed response's body is delimited towards the client.
enum class DownstreamFraming { Length, Chunked, UntilClose };

// As append_downstream_response_head for a body that is relayed while it arrives: Length writes
// "Content-Length: <body_length>", Chunked "Transfer-Encoding: chunked", UntilClose neither (and
// "Connection: close" whatever keep_alive says: the end of the body is the end of the connection).
void append_streamed_response_head(std::string& out, const ResponseHead& in,
                                   DownstreamFraming framing, std::uint64_t body_length,
                                   bool keep_alive);

// A response the daemon makes itself: status line, "Content-Type: <content_type>" (unless empty),
// "Content-Length: <body size>", the `extra` headers (e.g. Retry-After), "Connection: close" when
// !keep_alive, blank line, body. For 1xx and 204 neither Content-Length nor body is written, so
// append_simple_response(out, 100, "", "", true) writes kContinueResponse.
void append_simple_response(std::string& out, int status, std::string_view content_type,
                            std::string_view body, bool keep_alive,
                            std::span<const HeaderField> extra = {});

}  // namespace unifaas::http

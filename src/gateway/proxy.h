// Proxy: forwards one invocation to the instance behind a Lease over a keep-alive connection that
// lives in the lease's slot, and copies the answer back.
#pragma once

#include <httplib.h>

#include <stdexcept>
#include <string>

#include "config/function_spec.h"
#include "pool/pool.h"

namespace unifaas {

// The instance did not answer: status 502 (connection failed) or 504 (request-timeout).
class ProxyError : public std::runtime_error {
  public:
    ProxyError(int status, const std::string& what) : std::runtime_error(what), status_(status) {}
    int status() const { return status_; }

  private:
    int status_;
};

// Headers to send upstream: the client's minus hop-by-hop ones (and those the Connection header
// names), plus X-Forwarded-For.
httplib::Headers upstream_request_headers(const httplib::Request& in);
// Headers to return: the instance's minus hop-by-hop ones and the framing the server redoes.
httplib::Headers downstream_response_headers(const httplib::Headers& in);

// Sends `in` (method, headers, body) to `upstream_target` on the leased instance.
// Returns the instance's response; throws ProxyError.
httplib::Response forward(Lease& lease, const httplib::Request& in,
                          const std::string& upstream_target, Seconds timeout);

}  // namespace unifaas

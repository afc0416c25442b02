// Random identifiers from the kernel's CSPRNG (getrandom).
#pragma once

#include <cstddef>
#include <string>

namespace unifaas {

// `bytes` random bytes as lowercase hex (2 * bytes characters).
std::string random_hex(std::size_t bytes);

}  // namespace unifaas

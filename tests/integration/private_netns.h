// in_private_netns: runs test code on a thread inside a new, anonymous network namespace.
#pragma once

#include <functional>

namespace unifaas::test {

// Runs `body` on a new thread inside a new network namespace (threads and children it starts
// inherit it); the namespace goes away with the thread. Exceptions become test failures. The
// body never runs unless the thread demonstrably left the namespace it started in.
void in_private_netns(const std::function<void()>& body);

}  // namespace unifaas::test

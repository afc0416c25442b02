// Shared by the config fuzzers: writes the input to a file in a private temporary directory
// (the loaders read files) and calls the loader; ConfigError is the expected way to refuse.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "config/function_spec.h"

namespace unifaas::fuzz {

inline const std::filesystem::path& scratch_dir() {
    static const std::filesystem::path dir = [] {
        std::string tmpl =
            (std::filesystem::temp_directory_path() / "unifaas-fuzz-XXXXXX").string();
        if (::mkdtemp(tmpl.data()) == nullptr) {
            std::abort();
        }
        std::filesystem::create_directories(std::filesystem::path(tmpl) / "fn");
        return std::filesystem::path(tmpl);
    }();
    return dir;
}

inline void write_file(const std::filesystem::path& file, const char* data, std::size_t size) {
    std::ofstream(file, std::ios::binary | std::ios::trunc).write(data, static_cast<long>(size));
}

// Runs `load`; only ConfigError may escape it.
template <typename F>
void expect_config_error_or_success(F load) {
    try {
        load();
    } catch (const ConfigError&) {
    }
}

}  // namespace unifaas::fuzz

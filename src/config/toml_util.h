// Private helpers for reading config files with toml++: typed getters that report problems as
// ConfigErrors "<file>: <dotted key>: <problem>", and a check that rejects keys nobody read.
// Only src/config/*.cpp include this.
#pragma once

#include <concepts>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <toml++/toml.h>

#include "config/function_spec.h"

namespace unifaas::config_detail {

// Reads and parses a TOML file. ConfigError "<file>: cannot read: <reason>" or
// "<file>:<line>:<col>: <parser description>".
toml::table parse_toml_file(const std::filesystem::path& file);

// `text` in double quotes, escaped and shortened for an error message.
std::string in_quotes(std::string_view text);

// A number as it reads best in a message: "0", "0.5", "1e+12", "nan".
std::string format_number(double value);

// "an integer", "a string", ... / "integer", "string", ...
std::string_view type_name(toml::node_type type);

// "(got -1)"-style suffix for out-of-range integers.
std::string got(std::int64_t value);

// Lower bound of a duration in seconds.
enum class SecondsMin { Zero, AboveZero };

// One TOML table, read key by key. Every getter records the key as known whether or not it is
// present; finish() then reports the first key (in file order) nobody asked for.
class TableReader {
  public:
    TableReader(const toml::table& table, std::string file, std::string prefix = "");

    // "<prefix>.<key>", with the key quoted when it is not a bare TOML key.
    std::string key_path(std::string_view key) const;
    [[noreturn]] void fail(std::string_view key, const std::string& problem) const;
    // A problem with the table itself, e.g. "<file>: vm.hypervisor: required".
    [[noreturn]] void fail_here(const std::string& problem) const;

    bool has(std::string_view key);
    std::optional<bool> boolean(std::string_view key);
    std::optional<std::string> string(std::string_view key);
    std::optional<std::string> non_empty_string(std::string_view key);
    std::string required_string(std::string_view key);
    // A non-empty array of non-empty strings.
    std::optional<std::vector<std::string>> string_array(std::string_view key);
    // A path; relative ones resolve against `base`. Absolute and lexically normal.
    std::optional<std::filesystem::path> path(std::string_view key,
                                              const std::filesystem::path& base);
    std::filesystem::path required_path(std::string_view key, const std::filesystem::path& base);

    // Integers with one bound: "must be at least <min>" (and, above T's range, "at most").
    template <std::integral T>
    std::optional<T> integer(std::string_view key, T min) {
        return checked_integer<T>(key, min, std::numeric_limits<T>::max(), false);
    }
    // Integers with two bounds: "must be between <min> and <max>".
    template <std::integral T>
    std::optional<T> integer(std::string_view key, T min, T max) {
        return checked_integer<T>(key, min, max, true);
    }

    // A duration given as an integer or float number of seconds.
    std::optional<Seconds> seconds(std::string_view key, SecondsMin min);

    std::optional<TableReader> table(std::string_view key);
    TableReader required_table(std::string_view key);

    // Calls fn(key, node) for every entry and marks all keys known (for free-form tables).
    void for_each(const std::function<void(const std::string& key, const toml::node&)>& fn);

    // Throws for the first key (in file order) that no getter asked for.
    void finish() const;

    const std::string& file() const { return file_; }
    const std::string& prefix() const { return prefix_; }

  private:
    const toml::node* get(std::string_view key);
    [[noreturn]] void wrong_type(std::string_view key, std::string_view expected,
                                 const toml::node& node) const;
    std::optional<std::int64_t> raw_integer(std::string_view key);
    [[noreturn]] void out_of_range(std::string_view key, std::int64_t value, std::int64_t min,
                                   std::uint64_t max, bool two_bounds) const;

    template <std::integral T>
    std::optional<T> checked_integer(std::string_view key, T min, T max, bool two_bounds) {
        auto value = raw_integer(key);
        if (!value) {
            return std::nullopt;
        }
        if (std::cmp_less(*value, min) || std::cmp_greater(*value, max)) {
            out_of_range(key, *value, static_cast<std::int64_t>(min),
                         static_cast<std::uint64_t>(max), two_bounds);
        }
        return static_cast<T>(*value);
    }

    const toml::table& table_;
    std::string file_;
    std::string prefix_;
    std::set<std::string, std::less<>> known_;
};

}  // namespace unifaas::config_detail

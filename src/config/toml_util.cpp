#include "config/toml_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <system_error>

namespace unifaas::config_detail {

namespace {

// Longest duration accepted anywhere (about 31 years): keeps every Seconds value convertible to
// std::chrono::nanoseconds and clock time points without overflow.
constexpr double kMaxSeconds = 1e9;
constexpr std::size_t kMaxQuoted = 80;

std::string errno_text(int err) {
    return std::error_code(err, std::generic_category()).message();
}

std::string read_file(const std::filesystem::path& file) {
    int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        throw ConfigError(file.string() + ": cannot read: " + errno_text(errno));
    }
    std::string content;
    char buffer[16384];
    for (;;) {
        ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            int err = errno;
            ::close(fd);
            throw ConfigError(file.string() + ": cannot read: " + errno_text(err));
        }
        if (n == 0) {
            break;
        }
        content.append(buffer, static_cast<std::size_t>(n));
    }
    ::close(fd);
    return content;
}

bool is_bare_key(std::string_view key) {
    return !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               c == '_' || c == '-';
    });
}

// "Concurrent_Requests" -> "concurrent-requests", to suggest the key that was probably meant.
std::string canonical_key(std::string_view key) {
    std::string out(key);
    for (char& c : out) {
        if (c == '_') {
            c = '-';
        } else if (c >= 'A' && c <= 'Z') {
            c = static_cast<char>(c - 'A' + 'a');
        }
    }
    return out;
}

}  // namespace

toml::table parse_toml_file(const std::filesystem::path& file) {
    std::string content = read_file(file);
    try {
        return toml::parse(content, file.string());
    } catch (const toml::parse_error& e) {
        const auto& begin = e.source().begin;
        throw ConfigError(file.string() + ":" + std::to_string(begin.line) + ":" +
                          std::to_string(begin.column) + ": " + std::string(e.description()));
    }
}

std::string in_quotes(std::string_view text) {
    std::string out = "\"";
    std::size_t shown = 0;
    for (unsigned char c : text) {
        if (++shown > kMaxQuoted) {
            out += "...";
            break;
        }
        if (c == '"' || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c < 0x20 || c == 0x7f) {
            static constexpr char kHex[] = "0123456789abcdef";
            out += "\\x";
            out += kHex[c >> 4];
            out += kHex[c & 0xf];
        } else {
            out += static_cast<char>(c);
        }
    }
    return out + "\"";
}

std::string format_number(double value) {
    if (std::isnan(value)) {
        return "nan";
    }
    if (std::isinf(value)) {
        return value < 0 ? "-inf" : "inf";
    }
    char buffer[64];
    // Whole numbers read best without an exponent: 1000000000, not 1e+09.
    bool whole = std::trunc(value) == value && std::fabs(value) < 1e18;
    auto result =
        whole ? std::to_chars(buffer, buffer + sizeof buffer, value, std::chars_format::fixed)
              : std::to_chars(buffer, buffer + sizeof buffer, value);
    return std::string(buffer, result.ptr);
}

std::string_view type_name(toml::node_type type) {
    switch (type) {
        case toml::node_type::table:
            return "table";
        case toml::node_type::array:
            return "array";
        case toml::node_type::string:
            return "string";
        case toml::node_type::integer:
            return "integer";
        case toml::node_type::floating_point:
            return "float";
        case toml::node_type::boolean:
            return "boolean";
        case toml::node_type::date:
            return "date";
        case toml::node_type::time:
            return "time";
        case toml::node_type::date_time:
            return "date-time";
        case toml::node_type::none:
            break;
    }
    return "nothing";
}

std::string got(std::int64_t value) {
    return " (got " + std::to_string(value) + ")";
}

TableReader::TableReader(const toml::table& table, std::string file, std::string prefix)
    : table_(table), file_(std::move(file)), prefix_(std::move(prefix)) {}

std::string TableReader::key_path(std::string_view key) const {
    std::string part = is_bare_key(key) ? std::string(key) : in_quotes(key);
    return prefix_.empty() ? part : prefix_ + "." + part;
}

void TableReader::fail(std::string_view key, const std::string& problem) const {
    throw ConfigError(file_ + ": " + key_path(key) + ": " + problem);
}

void TableReader::fail_here(const std::string& problem) const {
    throw ConfigError(file_ + ": " + (prefix_.empty() ? "" : prefix_ + ": ") + problem);
}

const toml::node* TableReader::get(std::string_view key) {
    known_.emplace(key);
    return table_.get(key);
}

void TableReader::wrong_type(std::string_view key, std::string_view expected,
                             const toml::node& node) const {
    fail(key, "expected " + std::string(expected) + ", got " + std::string(type_name(node.type())));
}

bool TableReader::has(std::string_view key) {
    return get(key) != nullptr;
}

std::optional<bool> TableReader::boolean(std::string_view key) {
    const toml::node* node = get(key);
    if (!node) {
        return std::nullopt;
    }
    if (!node->is_boolean()) {
        wrong_type(key, "a boolean (true or false)", *node);
    }
    return node->as_boolean()->get();
}

std::optional<std::string> TableReader::string(std::string_view key) {
    const toml::node* node = get(key);
    if (!node) {
        return std::nullopt;
    }
    if (!node->is_string()) {
        wrong_type(key, "a string", *node);
    }
    const std::string& value = node->as_string()->get();
    if (value.find('\0') != std::string::npos) {
        fail(key, "must not contain a NUL character");
    }
    return value;
}

std::optional<std::string> TableReader::non_empty_string(std::string_view key) {
    auto value = string(key);
    if (value && value->empty()) {
        fail(key, "must not be empty");
    }
    return value;
}

std::optional<std::vector<std::string>> TableReader::string_array(std::string_view key) {
    const toml::node* node = get(key);
    if (!node) {
        return std::nullopt;
    }
    const toml::array* array = node->as_array();
    if (array == nullptr) {
        wrong_type(key, "an array of strings", *node);
    }
    std::vector<std::string> out;
    for (const toml::node& item : *array) {
        const auto* text = item.as_string();
        if (text == nullptr || text->get().empty() || text->get().find('\0') != std::string::npos) {
            fail(key, "every element must be a non-empty string without NUL characters");
        }
        out.push_back(text->get());
    }
    if (out.empty()) {
        fail(key, "must not be empty");
    }
    return out;
}

std::string TableReader::required_string(std::string_view key) {
    auto value = non_empty_string(key);
    if (!value) {
        fail(key, "required");
    }
    return *value;
}

std::optional<std::filesystem::path> TableReader::path(std::string_view key,
                                                       const std::filesystem::path& base) {
    auto value = non_empty_string(key);
    if (!value) {
        return std::nullopt;
    }
    std::filesystem::path path(*value);
    if (path.is_relative()) {
        path = base / path;
    }
    path = path.lexically_normal();
    if (path.has_parent_path() && path.filename().empty()) {
        path = path.parent_path();  // "dir/" -> "dir"
    }
    return path;
}

std::filesystem::path TableReader::required_path(std::string_view key,
                                                 const std::filesystem::path& base) {
    auto value = path(key, base);
    if (!value) {
        fail(key, "required");
    }
    return *value;
}

std::optional<std::int64_t> TableReader::raw_integer(std::string_view key) {
    const toml::node* node = get(key);
    if (!node) {
        return std::nullopt;
    }
    if (!node->is_integer()) {
        wrong_type(key, "an integer", *node);
    }
    return node->as_integer()->get();
}

void TableReader::out_of_range(std::string_view key, std::int64_t value, std::int64_t min,
                               std::uint64_t max, bool two_bounds) const {
    if (two_bounds) {
        fail(key,
             "must be between " + std::to_string(min) + " and " + std::to_string(max) + got(value));
    }
    if (value < min) {
        fail(key, "must be at least " + std::to_string(min) + got(value));
    }
    fail(key, "must be at most " + std::to_string(max) + got(value));
}

std::optional<Seconds> TableReader::seconds(std::string_view key, SecondsMin min) {
    const toml::node* node = get(key);
    if (!node) {
        return std::nullopt;
    }
    double value = 0;
    if (node->is_integer()) {
        value = static_cast<double>(node->as_integer()->get());
    } else if (node->is_floating_point()) {
        value = node->as_floating_point()->get();
    } else {
        wrong_type(key, "a number of seconds", *node);
    }
    std::string suffix = " (got " + format_number(value) + ")";
    if (!std::isfinite(value)) {
        fail(key, "must be a finite number of seconds" + suffix);
    }
    if (min == SecondsMin::Zero && value < 0) {
        fail(key, "must be at least 0" + suffix);
    }
    if (min == SecondsMin::AboveZero && value <= 0) {
        fail(key, "must be greater than 0" + suffix);
    }
    if (value > kMaxSeconds) {
        fail(key, "must be at most " + format_number(kMaxSeconds) + suffix);
    }
    return Seconds(value);
}

std::optional<TableReader> TableReader::table(std::string_view key) {
    const toml::node* node = get(key);
    if (!node) {
        return std::nullopt;
    }
    if (!node->is_table()) {
        wrong_type(key, "a table", *node);
    }
    return TableReader(*node->as_table(), file_, key_path(key));
}

TableReader TableReader::required_table(std::string_view key) {
    auto value = table(key);
    if (!value) {
        fail(key, "required");
    }
    return *value;
}

void TableReader::for_each(
    const std::function<void(const std::string& key, const toml::node&)>& fn) {
    for (auto&& [key, node] : table_) {
        known_.emplace(key.str());
        fn(std::string(key.str()), node);
    }
}

void TableReader::finish() const {
    const toml::key* first = nullptr;
    for (auto&& [key, node] : table_) {
        if (known_.contains(key.str())) {
            continue;
        }
        if (!first || key.source().begin < first->source().begin) {
            first = &key;
        }
    }
    if (!first) {
        return;
    }
    std::string problem = "unknown key";
    std::string canonical = canonical_key(first->str());
    if (canonical != first->str() && known_.contains(canonical)) {
        problem += " (did you mean " + canonical + "?)";
    }
    fail(first->str(), problem);
}

}  // namespace unifaas::config_detail

#include "fake_systemd.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace unifaas::test {

namespace fs = std::filesystem;

namespace {

constexpr const char* kManagerPath = "/org/freedesktop/systemd1";
constexpr const char* kManagerInterface = "org.freedesktop.systemd1.Manager";

std::string errno_text(int negative) {
    return std::strerror(-negative);
}

void check(int r, const std::string& what) {
    if (r < 0) {
        throw std::runtime_error("fake systemd: " + what + ": " + errno_text(r));
    }
}

// "PIDs" -> "au:1234", "MemoryMax" -> "t:123", "Slice" -> "s:unifaas.slice".
int read_properties(sd_bus_message* m, std::map<std::string, std::string>& out) {
    int r = sd_bus_message_enter_container(m, 'a', "(sv)");
    if (r < 0) {
        return r;
    }
    while ((r = sd_bus_message_enter_container(m, 'r', "sv")) > 0) {
        const char* name = nullptr;
        const char* contents = nullptr;
        char type = 0;
        if ((r = sd_bus_message_read(m, "s", &name)) < 0 ||
            (r = sd_bus_message_peek_type(m, &type, &contents)) < 0 ||
            (r = sd_bus_message_enter_container(m, 'v', contents)) < 0) {
            return r;
        }
        std::string sig = contents;
        std::string value;
        if (sig == "s") {
            const char* s = nullptr;
            r = sd_bus_message_read(m, "s", &s);
            value = s ? s : "";
        } else if (sig == "b") {
            int b = 0;
            r = sd_bus_message_read(m, "b", &b);
            value = b ? "true" : "false";
        } else if (sig == "t") {
            std::uint64_t t = 0;
            r = sd_bus_message_read(m, "t", &t);
            value = std::to_string(t);
        } else if (sig == "au") {
            const void* data = nullptr;
            std::size_t size = 0;
            r = sd_bus_message_read_array(m, 'u', &data, &size);
            for (std::size_t i = 0; i < size / sizeof(std::uint32_t); ++i) {
                value +=
                    (i ? "," : "") + std::to_string(static_cast<const std::uint32_t*>(data)[i]);
            }
        } else {
            r = sd_bus_message_skip(m, sig.c_str());
            value = "?";
        }
        if (r < 0 || (r = sd_bus_message_exit_container(m)) < 0 ||
            (r = sd_bus_message_exit_container(m)) < 0) {
            return r;
        }
        out[name] = sig + ":" + value;
    }
    if (r < 0) {
        return r;
    }
    return sd_bus_message_exit_container(m);
}

struct JobRemoved {
    FakeSystemd* fake;
    std::uint32_t id;
    std::string job, unit, result;
};

}  // namespace

// --- PermissiveBus ---

PermissiveBus::PermissiveBus() {
    char tmpl[] = "/tmp/unifaas-fakebus-XXXXXX";
    if (!mkdtemp(tmpl)) {
        throw std::runtime_error("mkdtemp failed");
    }
    dir_ = tmpl;
    std::string socket = dir_ + "/system_bus_socket";
    {
        std::ofstream conf(dir_ + "/bus.conf");
        conf << "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration "
                "1.0//EN\"\n"
                " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
                "<busconfig>\n"
                "  <type>system</type>\n"
                "  <listen>unix:path="
             << socket
             << "</listen>\n"
                "  <auth>EXTERNAL</auth>\n"
                "  <policy context=\"default\">\n"
                "    <allow user=\"*\"/>\n"
                "    <allow own=\"*\"/>\n"
                "    <allow send_destination=\"*\"/>\n"
                "    <allow receive_sender=\"*\"/>\n"
                "  </policy>\n"
                "</busconfig>\n";
    }
    std::string command =
        "dbus-daemon --config-file=" + dir_ + "/bus.conf --print-address=1 --print-pid=1 --fork";
    FILE* out = popen(command.c_str(), "r");
    if (!out) {
        throw std::runtime_error("cannot run dbus-daemon");
    }
    char line[512];
    std::string address, pid;
    if (fgets(line, sizeof(line), out)) {
        address = line;
    }
    if (fgets(line, sizeof(line), out)) {
        pid = line;
    }
    pclose(out);
    if (address.empty() || pid.empty()) {
        fs::remove_all(dir_);
        throw std::runtime_error("dbus-daemon did not start");
    }
    address_ = address.substr(0, address.find_first_of(",\n"));
    pid_ = std::stoi(pid);
}

PermissiveBus::~PermissiveBus() {
    if (pid_ > 0) {
        ::kill(pid_, SIGTERM);
    }
    std::error_code ec;
    fs::remove_all(dir_, ec);
}

// --- FakeSystemd ---

struct FakeSystemd::Unit {
    FakeSystemd* fake = nullptr;
    std::string name;
    std::string path;
    sd_bus_slot* slot = nullptr;
    bool collected = false;
};

FakeSystemd::FakeSystemd(const std::string& bus_address) : FakeSystemd(bus_address, Behaviour{}) {}

FakeSystemd::FakeSystemd(const std::string& bus_address, Behaviour behaviour)
    : behaviour_(std::move(behaviour)) {
    static const sd_bus_vtable manager_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Version", "s", &FakeSystemd::get_version, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_METHOD("StartTransientUnit", "ssa(sv)a(sa(sv))", "o",
                      &FakeSystemd::start_transient_unit, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("StopUnit", "ss", "o", &FakeSystemd::stop_unit, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("GetUnit", "s", "o", &FakeSystemd::get_unit, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_SIGNAL("JobRemoved", "uoss", 0),
        SD_BUS_VTABLE_END,
    };
    check(sd_event_new(&event_), "sd_event_new");
    check(sd_bus_new(&bus_), "sd_bus_new");
    check(sd_bus_set_address(bus_, bus_address.c_str()), "sd_bus_set_address");
    check(sd_bus_set_bus_client(bus_, 1), "sd_bus_set_bus_client");
    check(sd_bus_start(bus_), "sd_bus_start");
    check(sd_bus_add_object_vtable(bus_, nullptr, kManagerPath, kManagerInterface, manager_vtable,
                                   this),
          "add manager vtable");
    check(sd_bus_request_name(bus_, "org.freedesktop.systemd1", 0), "request name");
    check(sd_bus_attach_event(bus_, event_, 0), "attach event");
    stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    check(sd_event_add_io(
              event_, nullptr, stop_fd_, EPOLLIN,
              [](sd_event_source* s, int, uint32_t, void*) {
                  return sd_event_exit(sd_event_source_get_event(s), 0);
              },
              nullptr),
          "add stop fd");
    thread_ = std::thread([this] { sd_event_loop(event_); });
}

FakeSystemd::~FakeSystemd() {
    std::uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(stop_fd_, &one, sizeof(one));
    thread_.join();
    for (auto& [name, unit] : units_) {
        sd_bus_slot_unref(unit->slot);
    }
    sd_bus_flush_close_unref(bus_);
    sd_event_unref(event_);
    ::close(stop_fd_);
}

std::vector<FakeSystemd::StartCall> FakeSystemd::starts() const {
    std::lock_guard lock(mu_);
    return starts_;
}

std::vector<FakeSystemd::StopCall> FakeSystemd::stops() const {
    std::lock_guard lock(mu_);
    return stops_;
}

std::vector<std::string> FakeSystemd::units() const {
    std::lock_guard lock(mu_);
    std::vector<std::string> out;
    for (const auto& [name, unit] : units_) {
        if (!unit->collected) {
            out.push_back(name);
        }
    }
    return out;
}

bool FakeSystemd::wait_for_stops(std::size_t n, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return stops_.size() >= n; });
}

void FakeSystemd::collect(const std::string& unit) {
    std::lock_guard lock(mu_);
    auto it = units_.find(unit);
    if (it != units_.end()) {
        it->second->collected = true;
    }
}

std::string FakeSystemd::new_job(std::string& path_out) {
    std::uint32_t id = next_job_++;
    path_out = "/org/freedesktop/systemd1/job/" + std::to_string(id);
    return std::to_string(id);
}

void FakeSystemd::emit_job_removed(std::uint32_t id, const std::string& job,
                                   const std::string& unit, const std::string& result) {
    sd_bus_emit_signal(bus_, kManagerPath, kManagerInterface, "JobRemoved", "uoss", id, job.c_str(),
                       unit.c_str(), result.c_str());
}

int FakeSystemd::start_transient_unit(sd_bus_message* m, void* userdata, sd_bus_error* error) {
    auto* self = static_cast<FakeSystemd*>(userdata);
    StartCall call;
    const char* name = nullptr;
    const char* mode = nullptr;
    int r = sd_bus_message_read(m, "ss", &name, &mode);
    if (r < 0) {
        return r;
    }
    call.unit = name;
    call.mode = mode;
    if ((r = read_properties(m, call.properties)) < 0) {
        return r;
    }
    char type = 0;
    const char* contents = nullptr;
    if ((r = sd_bus_message_peek_type(m, &type, &contents)) < 0) {
        return r;
    }
    call.aux_signature = std::string(1, type) + (contents ? contents : "");
    if ((r = sd_bus_message_enter_container(m, 'a', "(sa(sv))")) < 0) {
        return r;
    }
    while (sd_bus_message_at_end(m, 0) == 0) {
        if ((r = sd_bus_message_skip(m, "(sa(sv))")) < 0) {
            return r;
        }
        ++call.aux_count;
    }
    sd_bus_message_exit_container(m);

    auto unit = std::make_unique<Unit>();
    unit->fake = self;
    unit->name = call.unit;
    {
        std::lock_guard lock(self->mu_);
        self->starts_.push_back(call);
        auto it = self->units_.find(call.unit);
        if (it != self->units_.end() && !it->second->collected) {
            return sd_bus_error_setf(error, "org.freedesktop.systemd1.UnitExists",
                                     "Unit %s already exists.", call.unit.c_str());
        }
    }
    char* path = nullptr;
    sd_bus_path_encode("/org/freedesktop/systemd1/unit", call.unit.c_str(), &path);
    unit->path = path;
    std::free(path);
    static const sd_bus_vtable scope_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Slice", "s", &FakeSystemd::get_counter, 0, 0),
        SD_BUS_PROPERTY("MemoryCurrent", "t", &FakeSystemd::get_counter, 0, 0),
        SD_BUS_PROPERTY("CPUUsageNSec", "t", &FakeSystemd::get_counter, 0, 0),
        SD_BUS_PROPERTY("ControlGroup", "s", &FakeSystemd::get_counter, 0, 0),
        SD_BUS_PROPERTY("TasksCurrent", "t", &FakeSystemd::get_counter, 0, 0),
        SD_BUS_VTABLE_END,
    };
    sd_bus_add_object_vtable(self->bus_, &unit->slot, unit->path.c_str(),
                             "org.freedesktop.systemd1.Scope", scope_vtable, unit.get());

    std::string job;
    std::uint32_t id = std::stoul(self->new_job(job));
    std::string result = self->behaviour_.job_result;
    if (result == "done") {
        std::lock_guard lock(self->mu_);
        self->units_[call.unit] = std::move(unit);
    } else {
        sd_bus_slot_unref(unit->slot);
    }
    if (self->behaviour_.send_job_removed && self->behaviour_.job_removed_before_reply) {
        self->emit_job_removed(id, job, call.unit, result);
    }
    r = sd_bus_reply_method_return(m, "o", job.c_str());
    if (self->behaviour_.send_job_removed && !self->behaviour_.job_removed_before_reply) {
        auto* payload = new JobRemoved{self, id, job, call.unit, result};
        sd_event_add_time_relative(
            self->event_, nullptr, CLOCK_MONOTONIC,
            static_cast<std::uint64_t>(self->behaviour_.job_delay.count()) * 1000, 1,
            [](sd_event_source*, uint64_t, void* p) {
                std::unique_ptr<JobRemoved> jr(static_cast<JobRemoved*>(p));
                jr->fake->emit_job_removed(jr->id, jr->job, jr->unit, jr->result);
                return 0;
            },
            payload);
    }
    return r;
}

int FakeSystemd::stop_unit(sd_bus_message* m, void* userdata, sd_bus_error* error) {
    auto* self = static_cast<FakeSystemd*>(userdata);
    const char* name = nullptr;
    const char* mode = nullptr;
    int r = sd_bus_message_read(m, "ss", &name, &mode);
    if (r < 0) {
        return r;
    }
    bool known;
    {
        std::lock_guard lock(self->mu_);
        self->stops_.push_back({name, mode});
        auto it = self->units_.find(name);
        known = it != self->units_.end() && !it->second->collected;
        if (known) {
            it->second->collected = true;
        }
    }
    self->cv_.notify_all();
    if (!known) {
        return sd_bus_error_setf(error, "org.freedesktop.systemd1.NoSuchUnit",
                                 "Unit %s not loaded.", name);
    }
    std::string job;
    std::uint32_t id = std::stoul(self->new_job(job));
    r = sd_bus_reply_method_return(m, "o", job.c_str());
    self->emit_job_removed(id, job, name, "done");
    return r;
}

int FakeSystemd::get_unit(sd_bus_message* m, void* userdata, sd_bus_error* error) {
    auto* self = static_cast<FakeSystemd*>(userdata);
    const char* name = nullptr;
    int r = sd_bus_message_read(m, "s", &name);
    if (r < 0) {
        return r;
    }
    std::string path;
    {
        std::lock_guard lock(self->mu_);
        auto it = self->units_.find(name);
        if (it != self->units_.end() && !it->second->collected) {
            path = it->second->path;
        }
    }
    if (path.empty()) {
        return sd_bus_error_setf(error, "org.freedesktop.systemd1.NoSuchUnit",
                                 "Unit %s not loaded.", name);
    }
    return sd_bus_reply_method_return(m, "o", path.c_str());
}

int FakeSystemd::get_version(sd_bus*, const char*, const char*, const char*, sd_bus_message* reply,
                             void*, sd_bus_error*) {
    return sd_bus_message_append(reply, "s", "252-fake");
}

int FakeSystemd::get_counter(sd_bus*, const char*, const char*, const char* property,
                             sd_bus_message* reply, void* userdata, sd_bus_error*) {
    auto* unit = static_cast<Unit*>(userdata);
    const Behaviour& b = unit->fake->behaviour_;
    std::string p = property;
    if (p == "Slice") {
        return sd_bus_message_append(reply, "s", "unifaas.slice");
    }
    if (p == "ControlGroup") {
        return sd_bus_message_append(reply, "s", ("/unifaas.slice/" + unit->name).c_str());
    }
    std::uint64_t v = p == "MemoryCurrent"  ? b.memory_current
                      : p == "CPUUsageNSec" ? b.cpu_usage_nsec
                                            : b.tasks_current;
    return sd_bus_message_append(reply, "t", v);
}

}  // namespace unifaas::test

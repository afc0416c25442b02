// Choice of QEMU acceleration: KVM where it can really run guests, TCG otherwise.
#pragma once

#include <string>

namespace unifaas {

enum class Accel { Kvm, Tcg };

// Runs a few real-mode instructions in a throw-away KVM VM (/dev/kvm): true when the VM performs
// them and halts. False where /dev/kvm is missing or, as on software hypervisors (PVM), cannot
// run ordinary guests. `why` receives the reason when false.
bool kvm_runs_guests(std::string* why = nullptr);

// "auto" (probe), "kvm" or "tcg" -> the accelerator, logging the choice once.
Accel choose_accel(const std::string& setting);

const char* to_string(Accel a);

}  // namespace unifaas

// cpu.h — pinning a thread to a CPU (crypto workers, poll lcores).
#pragma once

namespace mailseal::base {

// PinThisThread: the calling thread runs only on `cpu` from now on. False (nothing changed)
// when that CPU does not exist or is not in the process's allowed set.
bool PinThisThread(int cpu);

}  // namespace mailseal::base

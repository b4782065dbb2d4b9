// crypto_ring.h — the crypto stage's rings as rte_rings (issue #17), for the DPDK back end.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "dataplane/crypto/pointer_ring.h"

namespace mailseal::dpdk {

// MakeCryptoRing: an SP/SC rte_ring of at least `capacity` slots in EAL memory (EAL must be
// initialised: DpdkBackend::Start did it); null when EAL cannot make it. A crypto::RingFactory.
std::unique_ptr<crypto::PointerRing> MakeCryptoRing(const std::string& name, size_t capacity);

}  // namespace mailseal::dpdk

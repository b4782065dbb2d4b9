// crypto_ring.cc — see crypto_ring.h.
#include "dataplane/dpdk/crypto_ring.h"

#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_ring.h>

#include <atomic>

#include "dataplane/base/log.h"

namespace mailseal::dpdk {
namespace {

class RteRing : public crypto::PointerRing {
 public:
  explicit RteRing(rte_ring* r) : r_(r) {}
  ~RteRing() override { rte_ring_free(r_); }
  bool Enqueue(void* p) override { return rte_ring_sp_enqueue(r_, p) == 0; }
  void* Dequeue() override {
    void* p = nullptr;
    return rte_ring_sc_dequeue(r_, &p) == 0 ? p : nullptr;
  }
  const char* kind() const override { return "rte_ring"; }

 private:
  rte_ring* r_;
};

}  // namespace

std::unique_ptr<crypto::PointerRing> MakeCryptoRing(const std::string& name, size_t capacity) {
  // Names are unique in EAL memory for the process's life: a stage started again (tests) gets
  // new ones.
  static std::atomic<unsigned> generation{0};
  std::string unique = name + "_" + std::to_string(generation.fetch_add(1));
  if (unique.size() >= RTE_RING_NAMESIZE) unique = unique.substr(unique.size() - (RTE_RING_NAMESIZE - 1));
  rte_ring* r = rte_ring_create(unique.c_str(), static_cast<unsigned>(capacity), SOCKET_ID_ANY,
                                RING_F_SP_ENQ | RING_F_SC_DEQ | RING_F_EXACT_SZ);
  if (!r) {
    base::Log(base::LogLevel::kError, "dpdk", "cannot make a crypto ring",
              {{"ring", unique}, {"error", rte_strerror(rte_errno)}});
    return nullptr;
  }
  return std::make_unique<RteRing>(r);
}

}  // namespace mailseal::dpdk

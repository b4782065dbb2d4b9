// aes_gcm_bench — AES-256-GCM bulk encryption on one core: OpenSSL EVP (what the S/MIME seal
// uses) against DPDK cryptodev's AES-NI PMDs (crypto_aesni_gcm, crypto_aesni_mb from
// intel-ipsec-mb), same buffers, same run. For tools/bench/aesgcm: issue #4 asks to measure the
// cryptodev fast path against EVP and keep what wins.
//
//   aes_gcm_bench SECONDS SIZE      prints one JSON object per engine
// DPDK runs with --no-huge -m 256 --no-pci --no-shconf (machine facts); the PMDs are vdevs.
#include <openssl/evp.h>
#include <rte_bus_vdev.h>
#include <rte_cryptodev.h>
#include <rte_eal.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {
using Clock = std::chrono::steady_clock;
constexpr uint16_t kIvOffset = sizeof(struct rte_crypto_op) + sizeof(struct rte_crypto_sym_op);

double Seconds(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double EvpGbps(double seconds, size_t size) {
  std::vector<unsigned char> key(32, 7), iv(12, 9), in(size, 'a'), out(size + 16), tag(16);
  EVP_CIPHER* gcm = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  uint64_t bytes = 0;
  auto t0 = Clock::now();
  while (Seconds(t0) < seconds) {
    for (int i = 0; i < 64; ++i) {
      int len = 0;
      EVP_EncryptInit_ex2(ctx, gcm, key.data(), iv.data(), nullptr);
      EVP_EncryptUpdate(ctx, out.data(), &len, in.data(), static_cast<int>(size));
      EVP_EncryptFinal_ex(ctx, out.data() + len, &len);
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag.data());
      bytes += size;
    }
  }
  double gbps = bytes * 8 / Seconds(t0) / 1e9;
  EVP_CIPHER_CTX_free(ctx);
  EVP_CIPHER_free(gcm);
  return gbps;
}

// CryptodevGbps: AEAD AES-256-GCM encrypt through vdev `pmd`, bursts of 32, one queue pair.
double CryptodevGbps(const char* pmd, double seconds, size_t size, std::string* error) {
  std::string name = std::string(pmd) + "_bench";
  if (rte_vdev_init(name.c_str(), nullptr) != 0) return *error = "rte_vdev_init failed (PMD not available)", 0;
  int dev = rte_cryptodev_get_dev_id(name.c_str());
  int socket = static_cast<int>(rte_socket_id());
  rte_cryptodev_config conf{};
  conf.socket_id = socket;
  conf.nb_queue_pairs = 1;
  rte_mempool* sessions = rte_cryptodev_sym_session_pool_create(
      (name + "_s").c_str(), 8, rte_cryptodev_sym_get_private_session_size(static_cast<uint8_t>(dev)), 0, 0, socket);
  rte_cryptodev_qp_conf qp{2048, sessions};
  if (dev < 0 || !sessions || rte_cryptodev_configure(static_cast<uint8_t>(dev), &conf) != 0 ||
      rte_cryptodev_queue_pair_setup(static_cast<uint8_t>(dev), 0, &qp, socket) != 0 ||
      rte_cryptodev_start(static_cast<uint8_t>(dev)) != 0)
    return *error = "device set-up failed", 0;
  static uint8_t key[32] = {7};
  rte_crypto_sym_xform x{};
  x.type = RTE_CRYPTO_SYM_XFORM_AEAD;
  x.aead.op = RTE_CRYPTO_AEAD_OP_ENCRYPT;
  x.aead.algo = RTE_CRYPTO_AEAD_AES_GCM;
  x.aead.key = {key, 32};
  x.aead.iv = {kIvOffset, 12};
  x.aead.digest_length = 16;
  x.aead.aad_length = 0;
  void* sess = rte_cryptodev_sym_session_create(static_cast<uint8_t>(dev), &x, sessions);
  if (!sess) return *error = "session create failed", 0;
  constexpr int kOps = 256, kBurst = 32;
  rte_mempool* ops = rte_crypto_op_pool_create((name + "_o").c_str(), RTE_CRYPTO_OP_TYPE_SYMMETRIC, kOps * 2, 0, 16,
                                               socket);
  rte_mempool* mbufs = rte_pktmbuf_pool_create((name + "_m").c_str(), kOps * 2, 0, 0,
                                               static_cast<uint16_t>(size + 16 + RTE_PKTMBUF_HEADROOM), socket);
  if (!ops || !mbufs) return *error = "pool create failed", 0;
  static uint8_t aad[16];
  std::vector<rte_crypto_op*> pool(kOps);
  if (rte_crypto_op_bulk_alloc(ops, RTE_CRYPTO_OP_TYPE_SYMMETRIC, pool.data(), kOps) != kOps)
    return *error = "op alloc failed", 0;
  for (rte_crypto_op* op : pool) {
    rte_mbuf* m = rte_pktmbuf_alloc(mbufs);
    char* data = rte_pktmbuf_append(m, static_cast<uint16_t>(size + 16));
    std::memset(data, 'a', size);
    op->sym->m_src = m;
    op->sym->aead.data.offset = 0;
    op->sym->aead.data.length = static_cast<uint32_t>(size);
    op->sym->aead.digest.data = rte_pktmbuf_mtod_offset(m, uint8_t*, size);
    op->sym->aead.digest.phys_addr = rte_pktmbuf_iova_offset(m, size);
    op->sym->aead.aad.data = aad;
    std::memset(rte_crypto_op_ctod_offset(op, uint8_t*, kIvOffset), 9, 12);
    rte_crypto_op_attach_sym_session(op, sess);
  }
  uint64_t bytes = 0;
  size_t next = 0;
  int inflight = 0;
  std::vector<rte_crypto_op*> done(kBurst);
  auto t0 = Clock::now();
  while (Seconds(t0) < seconds) {
    if (inflight + kBurst <= kOps) {
      uint16_t n = rte_cryptodev_enqueue_burst(static_cast<uint8_t>(dev), 0, &pool[next], kBurst);
      inflight += n;
      next = (next + n) % kOps;
    }
    uint16_t got = rte_cryptodev_dequeue_burst(static_cast<uint8_t>(dev), 0, done.data(), kBurst);
    for (uint16_t i = 0; i < got; ++i) {
      if (done[i]->status != RTE_CRYPTO_OP_STATUS_SUCCESS) return *error = "op failed", 0;
      bytes += size;
    }
    inflight -= got;
  }
  double gbps = bytes * 8 / Seconds(t0) / 1e9;
  while (inflight > 0) inflight -= rte_cryptodev_dequeue_burst(static_cast<uint8_t>(dev), 0, done.data(), kBurst);
  rte_cryptodev_stop(static_cast<uint8_t>(dev));
  return gbps;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: aes_gcm_bench SECONDS SIZE\n");
    return 2;
  }
  double seconds = std::atof(argv[1]);
  size_t size = static_cast<size_t>(std::atol(argv[2]));
  std::string pmd_dir = "-d/usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0/librte_crypto_ipsec_mb.so";
  std::vector<std::string> eal = {"aes_gcm_bench", "--no-huge", "-m", "256", "--no-pci", "--no-shconf",
                                  "--log-level=*:error", "-l", "0", pmd_dir};
  std::vector<char*> eal_argv;
  for (std::string& a : eal) eal_argv.push_back(a.data());
  if (rte_eal_init(static_cast<int>(eal_argv.size()), eal_argv.data()) < 0) {
    std::fprintf(stderr, "rte_eal_init failed\n");
    return 1;
  }
  std::printf("{\"engine\":\"openssl-evp\",\"size\":%zu,\"gbps\":%.2f}\n", size, EvpGbps(seconds, size));
  for (const char* pmd : {"crypto_aesni_gcm", "crypto_aesni_mb"}) {
    std::string error;
    double g = CryptodevGbps(pmd, seconds, size, &error);
    if (!error.empty()) std::printf("{\"engine\":\"%s\",\"size\":%zu,\"error\":\"%s\"}\n", pmd, size, error.c_str());
    else std::printf("{\"engine\":\"%s\",\"size\":%zu,\"gbps\":%.2f}\n", pmd, size, g);
    std::fflush(stdout);
  }
  rte_eal_cleanup();
  return 0;
}

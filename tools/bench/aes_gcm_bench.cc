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

#include <algorithm>
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

struct Device {
  int dev = -1;
  rte_mempool* sessions = nullptr;
};

// SetUpDevice: vdev `name` of PMD `pmd`, one queue pair, started.
Device SetUpDevice(const char* pmd, const std::string& name, std::string* error) {
  Device d;
  if (rte_vdev_init(name.c_str(), nullptr) != 0) return *error = "rte_vdev_init failed (PMD not available)", d;
  int dev = rte_cryptodev_get_dev_id(name.c_str());
  int socket = static_cast<int>(rte_socket_id());
  rte_cryptodev_config conf{};
  conf.socket_id = socket;
  conf.nb_queue_pairs = 1;
  rte_mempool* sessions = rte_cryptodev_sym_session_pool_create(
      (name + "_s").c_str(), 64, rte_cryptodev_sym_get_private_session_size(static_cast<uint8_t>(dev)), 0, 0, socket);
  rte_cryptodev_qp_conf qp{2048, sessions};
  if (dev < 0 || !sessions || rte_cryptodev_configure(static_cast<uint8_t>(dev), &conf) != 0 ||
      rte_cryptodev_queue_pair_setup(static_cast<uint8_t>(dev), 0, &qp, socket) != 0 ||
      rte_cryptodev_start(static_cast<uint8_t>(dev)) != 0)
    return *error = "device set-up failed", d;
  (void)pmd;
  d.dev = dev;
  d.sessions = sessions;
  return d;
}

rte_crypto_sym_xform GcmXform(uint8_t* key) {
  rte_crypto_sym_xform x{};
  x.type = RTE_CRYPTO_SYM_XFORM_AEAD;
  x.aead.op = RTE_CRYPTO_AEAD_OP_ENCRYPT;
  x.aead.algo = RTE_CRYPTO_AEAD_AES_GCM;
  x.aead.key = {key, 32};
  x.aead.iv = {kIvOffset, 12};
  x.aead.digest_length = 16;
  x.aead.aad_length = 0;
  return x;
}

// CryptodevGbps: AEAD AES-256-GCM encrypt through vdev `pmd`, bursts of 32, one queue pair.
double CryptodevGbps(const char* pmd, double seconds, size_t size, std::string* error) {
  std::string name = std::string(pmd) + "_bench";
  Device d = SetUpDevice(pmd, name, error);
  if (d.dev < 0) return 0;
  int dev = d.dev;
  rte_mempool* sessions = d.sessions;
  int socket = static_cast<int>(rte_socket_id());
  static uint8_t key[32] = {7};
  rte_crypto_sym_xform x = GcmXform(key);
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

// PerMessageGbps: what a seal would get — one message at a time, a fresh content key each
// (RFC 5083: a session per message), the message's own contiguous buffer lent to the device as
// external-buffer mbufs (no copy; a chain of <= 60 KiB segments, mbuf lengths are 16-bit),
// encrypted in place, waited for. EVP for comparison: a fresh key per message, same buffer.
void NoFree(void*, void*) {}

double PerMessageGbps(const char* pmd, double seconds, size_t size, std::string* error) {
  std::string name = std::string(pmd) + "_msg";
  Device d = SetUpDevice(pmd, name, error);
  if (d.dev < 0) return 0;
  uint8_t dev = static_cast<uint8_t>(d.dev);
  rte_cryptodev_info info{};
  rte_cryptodev_info_get(dev, &info);
  constexpr size_t kSeg = 60 * 1024;
  size_t segs = (size + kSeg - 1) / kSeg;
  if (segs > 1 && !(info.feature_flags & RTE_CRYPTODEV_FF_IN_PLACE_SGL))
    return *error = "no in-place scatter-gather: a message over 60 KiB would be copied into one mbuf", 0;
  int socket = static_cast<int>(rte_socket_id());
  rte_mempool* ops = rte_crypto_op_pool_create((name + "_o").c_str(), RTE_CRYPTO_OP_TYPE_SYMMETRIC, 64, 0, 16, socket);
  rte_mempool* heads = rte_pktmbuf_pool_create((name + "_m").c_str(), static_cast<unsigned>(segs + 64), 0, 0, 0, socket);
  if (!ops || !heads) return *error = "pool create failed", 0;
  std::vector<uint8_t> msg(size + 16, 'a');
  std::vector<rte_mbuf_ext_shared_info> shinfo(segs);
  static uint8_t aad[16];
  uint8_t key[32] = {};
  uint64_t bytes = 0, n = 0;
  std::vector<rte_mbuf*> chain(segs);
  auto t0 = Clock::now();
  while (Seconds(t0) < seconds) {
    key[n % 32] = static_cast<uint8_t>(n);
    ++n;
    rte_crypto_sym_xform x = GcmXform(key);
    void* sess = rte_cryptodev_sym_session_create(dev, &x, d.sessions);
    if (!sess) return *error = "session create failed", 0;
    if (rte_pktmbuf_alloc_bulk(heads, chain.data(), static_cast<unsigned>(segs)) != 0) return *error = "mbuf alloc", 0;
    for (size_t i = 0; i < segs; ++i) {
      size_t off = i * kSeg, len = std::min(kSeg, size - off);
      shinfo[i].free_cb = NoFree;
      shinfo[i].fcb_opaque = nullptr;
      rte_mbuf_ext_refcnt_set(&shinfo[i], 1);
      rte_pktmbuf_attach_extbuf(chain[i], msg.data() + off, rte_mem_virt2iova(msg.data() + off),
                                static_cast<uint16_t>(len), &shinfo[i]);
      chain[i]->data_off = 0;
      chain[i]->data_len = static_cast<uint16_t>(len);
      chain[i]->pkt_len = static_cast<uint32_t>(len);
      if (i > 0 && rte_pktmbuf_chain(chain[0], chain[i]) != 0) return *error = "chain", 0;
    }
    rte_crypto_op* op = rte_crypto_op_alloc(ops, RTE_CRYPTO_OP_TYPE_SYMMETRIC);
    op->sym->m_src = chain[0];
    op->sym->aead.data.offset = 0;
    op->sym->aead.data.length = static_cast<uint32_t>(size);
    op->sym->aead.digest.data = msg.data() + size;
    op->sym->aead.digest.phys_addr = rte_mem_virt2iova(msg.data() + size);
    op->sym->aead.aad.data = aad;
    std::memset(rte_crypto_op_ctod_offset(op, uint8_t*, kIvOffset), 9, 12);
    rte_crypto_op_attach_sym_session(op, sess);
    if (rte_cryptodev_enqueue_burst(dev, 0, &op, 1) != 1) return *error = "enqueue", 0;
    rte_crypto_op* done = nullptr;
    while (rte_cryptodev_dequeue_burst(dev, 0, &done, 1) == 0) {
    }
    if (done->status != RTE_CRYPTO_OP_STATUS_SUCCESS) return *error = "op failed", 0;
    if (n == 1) {   // the first message: the scatter-gather output is what EVP makes of it
      std::vector<uint8_t> in(size, 'a'), out(size + 16), tag(16), iv(12, 9);
      EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
      int len = 0;
      EVP_EncryptInit_ex2(ctx, EVP_aes_256_gcm(), key, iv.data(), nullptr);
      EVP_EncryptUpdate(ctx, out.data(), &len, in.data(), static_cast<int>(size));
      EVP_EncryptFinal_ex(ctx, out.data() + len, &len);
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag.data());
      EVP_CIPHER_CTX_free(ctx);
      if (std::memcmp(out.data(), msg.data(), size) != 0 || std::memcmp(tag.data(), msg.data() + size, 16) != 0)
        return *error = "ciphertext or tag differs from OpenSSL's", 0;
    }
    rte_pktmbuf_free(chain[0]);
    rte_crypto_op_free(done);
    rte_cryptodev_sym_session_free(dev, sess);
    bytes += size;
  }
  double gbps = bytes * 8 / Seconds(t0) / 1e9;
  rte_cryptodev_stop(dev);
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
    double g = size + 16 + RTE_PKTMBUF_HEADROOM <= UINT16_MAX ? CryptodevGbps(pmd, seconds, size, &error) : 0;
    if (g == 0 && error.empty()) error = "one mbuf holds at most 64 KiB";
    if (!error.empty()) std::printf("{\"engine\":\"%s\",\"size\":%zu,\"error\":\"%s\"}\n", pmd, size, error.c_str());
    else std::printf("{\"engine\":\"%s\",\"size\":%zu,\"gbps\":%.2f}\n", pmd, size, g);
    std::fflush(stdout);
    error.clear();
    g = PerMessageGbps(pmd, seconds, size, &error);
    if (!error.empty()) std::printf("{\"engine\":\"%s/msg\",\"size\":%zu,\"error\":\"%s\"}\n", pmd, size, error.c_str());
    else std::printf("{\"engine\":\"%s/msg\",\"size\":%zu,\"gbps\":%.2f}\n", pmd, size, g);
    std::fflush(stdout);
  }
  rte_eal_cleanup();
  return 0;
}

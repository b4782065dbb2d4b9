// hsm_bench — private-key operations through mailseal's PKCS#11 path (Google Benchmark).
// Run by tools/bench/hsm, which puts the same run's `openssl speed` figures beside them.
// Needs SOFTHSM2_CONF pointing at an empty SoftHSM token directory: the benchmark initialises
// a token "bench" there with fixture PINs (benchmark only, never a real token).
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <memory>

#include "hsm/keys.h"
#include "hsm/module.h"

#include <openssl/rsa.h>

namespace {
using namespace mailseal;
using namespace mailseal::hsm;

struct Env {
  std::unique_ptr<Module> module;
  std::unique_ptr<SessionPool> pool;
  KeyPair rsa, ec, dca;
  std::string oaep_ct, pkcs1_ct;
};

Env* env = nullptr;

std::string Encrypt(EVP_PKEY* pub, bool oaep) {
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new(pub, nullptr);
  EVP_PKEY_encrypt_init(ctx);
  EVP_PKEY_CTX_set_rsa_padding(ctx, oaep ? RSA_PKCS1_OAEP_PADDING : RSA_PKCS1_PADDING);
  std::string cek(32, 'k');
  size_t len = 512;
  std::string out(len, '\0');
  EVP_PKEY_encrypt(ctx, reinterpret_cast<unsigned char*>(out.data()), &len,
                   reinterpret_cast<const unsigned char*>(cek.data()), cek.size());
  EVP_PKEY_CTX_free(ctx);
  out.resize(len);
  return out;
}

void Setup() {
  const char* module = std::getenv("MAILSEAL_BENCH_MODULE");
  auto m = Module::Load(module ? module : "/usr/lib/softhsm/libsofthsm2.so");
  if (!m.ok()) { std::fprintf(stderr, "%s\n", m.status().ToString().c_str()); std::exit(1); }
  env = new Env;
  env->module = std::move(m.value());
  auto slots = env->module->Slots();
  for (const SlotInfo& si : *slots) {
    if (si.token_present && !si.initialized) {
      Status st = env->module->InitializeToken(si.slot, "bench", Secret("bench-so-pin"), Secret("bench-pin"));
      if (!st.ok()) { std::fprintf(stderr, "%s\n", st.ToString().c_str()); std::exit(1); }
      break;
    }
  }
  auto slot = env->module->FindToken("bench");
  if (!slot.ok()) { std::fprintf(stderr, "%s\n", slot.status().ToString().c_str()); std::exit(1); }
  auto pool = SessionPool::Open(env->module.get(), *slot, 2, Secret("bench-pin"));
  if (!pool.ok()) { std::fprintf(stderr, "%s\n", pool.status().ToString().c_str()); std::exit(1); }
  env->pool = std::move(pool.value());
  auto l = env->pool->Acquire();
  env->rsa = *GenerateKeyPair(*l, {KeyType::kRsa2048, Purpose::kDsaSign, "bench-rsa"});
  env->dca = *GenerateKeyPair(*l, {KeyType::kRsa2048, Purpose::kDcaEncrypt, "bench-dca"});
  env->ec = *GenerateKeyPair(*l, {KeyType::kEcP256, Purpose::kDsaSign, "bench-ec"});
  EVP_PKEY* pub = *PublicKey(*l, env->dca.pub);
  env->oaep_ct = Encrypt(pub, true);
  env->pkcs1_ct = Encrypt(pub, false);
  EVP_PKEY_free(pub);
}

void BM_SignRsa2048(benchmark::State& st) {
  auto l = env->pool->Acquire();
  std::string digest(32, 'd');
  for (auto _ : st) {
    auto sig = SignDigest(*l, env->rsa.priv, SignMechanism::kRsaPkcs1Sha256, digest);
    if (!sig.ok()) st.SkipWithError(sig.status().message().c_str());
  }
  st.SetItemsProcessed(st.iterations());
}

void BM_SignP256(benchmark::State& st) {
  auto l = env->pool->Acquire();
  std::string digest(32, 'd');
  for (auto _ : st) {
    auto sig = SignDigest(*l, env->ec.priv, SignMechanism::kEcdsaSha256, digest);
    if (!sig.ok()) st.SkipWithError(sig.status().message().c_str());
  }
  st.SetItemsProcessed(st.iterations());
}

void BM_UnwrapRsa2048Oaep(benchmark::State& st) {
  auto l = env->pool->Acquire();
  for (auto _ : st) {
    auto cek = Decrypt(*l, env->dca.priv, DecryptMechanism::kRsaOaepSha1, env->oaep_ct);
    if (!cek.ok()) st.SkipWithError(cek.status().message().c_str());
  }
  st.SetItemsProcessed(st.iterations());
}

void BM_UnwrapRsa2048Pkcs1(benchmark::State& st) {
  auto l = env->pool->Acquire();
  for (auto _ : st) {
    auto cek = Decrypt(*l, env->dca.priv, DecryptMechanism::kRsaPkcs1, env->pkcs1_ct);
    if (!cek.ok()) st.SkipWithError(cek.status().message().c_str());
  }
  st.SetItemsProcessed(st.iterations());
}

BENCHMARK(BM_SignRsa2048)->Threads(1)->Threads(2)->UseRealTime()->MinTime(2);
BENCHMARK(BM_SignP256)->Threads(1)->Threads(2)->UseRealTime()->MinTime(2);
BENCHMARK(BM_UnwrapRsa2048Oaep)->Threads(1)->Threads(2)->UseRealTime()->MinTime(2);
BENCHMARK(BM_UnwrapRsa2048Pkcs1)->Threads(1)->Threads(2)->UseRealTime()->MinTime(2);

}  // namespace

int main(int argc, char** argv) {
  Setup();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

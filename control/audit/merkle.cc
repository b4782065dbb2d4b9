// merkle.cc — see merkle.h. STANDARDS: RFC 9162 §2.1.
#include "control/audit/merkle.h"

#include <openssl/evp.h>

namespace mailseal::audit {
namespace {

Hash Sha256(std::string_view a, std::string_view b = {}, std::string_view c = {}) {
  static EVP_MD* sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);  // fetched once (OpenSSL 3)
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, sha256, nullptr);
  EVP_DigestUpdate(ctx, a.data(), a.size());
  EVP_DigestUpdate(ctx, b.data(), b.size());
  EVP_DigestUpdate(ctx, c.data(), c.size());
  Hash out(32, '\0');
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx, reinterpret_cast<unsigned char*>(out.data()), &n);
  EVP_MD_CTX_free(ctx);
  return out;
}

// Split: the largest power of two smaller than n (n >= 2).
size_t Split(size_t n) {
  size_t k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

void Path(const std::vector<Hash>& leaves, size_t m, size_t begin, size_t end, std::vector<Hash>* out) {
  size_t n = end - begin;
  if (n <= 1) return;
  size_t k = Split(n);
  if (m < k) {
    Path(leaves, m, begin, begin + k, out);
    out->push_back(Root(leaves, begin + k, end));
  } else {
    Path(leaves, m - k, begin + k, end, out);
    out->push_back(Root(leaves, begin, begin + k));
  }
}

void SubProof(const std::vector<Hash>& leaves, size_t m, size_t begin, size_t end, bool complete,
              std::vector<Hash>* out) {
  size_t n = end - begin;
  if (m == n) {
    if (!complete) out->push_back(Root(leaves, begin, end));
    return;
  }
  size_t k = Split(n);
  if (m <= k) {
    SubProof(leaves, m, begin, begin + k, complete, out);
    out->push_back(Root(leaves, begin + k, end));
  } else {
    SubProof(leaves, m - k, begin + k, end, false, out);
    out->push_back(Root(leaves, begin, begin + k));
  }
}

}  // namespace

Hash LeafHash(std::string_view leaf) { return Sha256(std::string_view("\0", 1), leaf); }
Hash NodeHash(const Hash& left, const Hash& right) { return Sha256(std::string_view("\1", 1), left, right); }

Hash Root(const std::vector<Hash>& leaves, size_t begin, size_t end) {
  size_t n = end - begin;
  if (n == 0) return Sha256({});
  if (n == 1) return leaves[begin];
  size_t k = Split(n);
  return NodeHash(Root(leaves, begin, begin + k), Root(leaves, begin + k, end));
}

std::vector<Hash> InclusionProof(const std::vector<Hash>& leaves, size_t index, size_t size) {
  std::vector<Hash> out;
  if (index < size && size <= leaves.size()) Path(leaves, index, 0, size, &out);
  return out;
}

bool VerifyInclusion(const Hash& leaf_hash, uint64_t index, uint64_t size, const std::vector<Hash>& proof,
                     const Hash& root) {
  if (index >= size) return false;
  uint64_t fn = index, sn = size - 1;
  Hash r = leaf_hash;
  for (const Hash& p : proof) {
    if (sn == 0) return false;
    if ((fn & 1) || fn == sn) {
      r = NodeHash(p, r);
      if (!(fn & 1))
        while (!(fn & 1) && fn != 0) {
          fn >>= 1;
          sn >>= 1;
        }
    } else {
      r = NodeHash(r, p);
    }
    fn >>= 1;
    sn >>= 1;
  }
  return sn == 0 && r == root;
}

std::vector<Hash> ConsistencyProof(const std::vector<Hash>& leaves, size_t old_size, size_t new_size) {
  std::vector<Hash> out;
  if (old_size == 0 || old_size >= new_size || new_size > leaves.size()) return out;
  SubProof(leaves, old_size, 0, new_size, true, &out);
  return out;
}

bool VerifyConsistency(uint64_t old_size, uint64_t new_size, const Hash& old_root, const Hash& new_root,
                       const std::vector<Hash>& proof_in) {
  if (old_size > new_size) return false;
  if (old_size == new_size) return proof_in.empty() && old_root == new_root;
  if (old_size == 0) return proof_in.empty();  // the empty tree is consistent with every tree
  std::vector<Hash> proof = proof_in;
  if ((old_size & (old_size - 1)) == 0) proof.insert(proof.begin(), old_root);  // a power of two
  if (proof.empty()) return false;
  uint64_t fn = old_size - 1, sn = new_size - 1;
  while (fn & 1) {
    fn >>= 1;
    sn >>= 1;
  }
  Hash fr = proof[0], sr = proof[0];
  for (size_t i = 1; i < proof.size(); ++i) {
    const Hash& c = proof[i];
    if (sn == 0) return false;
    if ((fn & 1) || fn == sn) {
      fr = NodeHash(c, fr);
      sr = NodeHash(c, sr);
      if (!(fn & 1))
        while (!(fn & 1) && fn != 0) {
          fn >>= 1;
          sn >>= 1;
        }
    } else {
      sr = NodeHash(sr, c);
    }
    fn >>= 1;
    sn >>= 1;
  }
  return fr == old_root && sr == new_root && sn == 0;
}

}  // namespace mailseal::audit

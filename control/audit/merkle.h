// merkle.h — the Merkle tree of RFC 9162 (Certificate Transparency 2.0) §2.1 over SHA-256:
// leaf hash = H(0x00 || leaf), node hash = H(0x01 || left || right); the tree over n leaves
// splits at the largest power of two below n. Inclusion and consistency proofs and their
// verification follow §2.1.3 and §2.1.4.
//
// SECURITY: proofs come from a server the verifier need not trust: sizes and indexes are checked
// before use, and a proof longer than the tree's height is refused.
//
// STANDARDS: RFC 9162 §2.1.1–2.1.4.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mailseal::audit {

using Hash = std::string;  // 32 bytes

Hash LeafHash(std::string_view leaf);
Hash NodeHash(const Hash& left, const Hash& right);

// Root: the tree hash over `leaves` (leaf hashes). The empty tree's hash is H("").
Hash Root(const std::vector<Hash>& leaves, size_t begin, size_t end);
inline Hash Root(const std::vector<Hash>& leaves) { return Root(leaves, 0, leaves.size()); }

// InclusionProof for leaf `index` in the tree over leaves[0, size).
std::vector<Hash> InclusionProof(const std::vector<Hash>& leaves, size_t index, size_t size);
bool VerifyInclusion(const Hash& leaf_hash, uint64_t index, uint64_t size, const std::vector<Hash>& proof,
                     const Hash& root);

// ConsistencyProof between the trees over leaves[0, old_size) and leaves[0, new_size).
std::vector<Hash> ConsistencyProof(const std::vector<Hash>& leaves, size_t old_size, size_t new_size);
bool VerifyConsistency(uint64_t old_size, uint64_t new_size, const Hash& old_root, const Hash& new_root,
                       const std::vector<Hash>& proof);

}  // namespace mailseal::audit

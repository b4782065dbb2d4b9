// keys.h — gateway keys on the token: generation, lookup, and the private-key operations.
//
// SECURITY: private keys are generated on the token with CKA_SENSITIVE and CKA_PRIVATE true and
// CKA_EXTRACTABLE false; only keys made "backup-wrappable" (for the backup ceremony) are
// extractable, and then (being sensitive) only wrapped. CKA_WRAP_WITH_TRUSTED would narrow that
// to CKA_TRUSTED wrapping keys, but setting CKA_TRUSTED needs the SO, so it belongs to the
// backup ceremony, not to key generation.
// No function here returns private key material. Every key carries a label and CKA_ID that
// tie it to its purpose and its certificate: CKA_ID = purpose byte + 8 random bytes.
// STANDARDS: PKCS#11 v2.40 mechanisms; RFC 8017 (PKCS#1 v1.5, PSS, OAEP); FIPS 186-4 ECDSA;
// RFC 3394/5649 AES key wrap.
#pragma once

#include <openssl/evp.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "dataplane/base/status.h"
#include "hsm/module.h"
#include "hsm/secret.h"

namespace mailseal::hsm {

enum class KeyType { kRsa2048, kRsa3072, kRsa4096, kEcP256, kEcP384 };
enum class Purpose : uint8_t {
  kDsaSign = 1,      // domain-signing-authority: signs outbound mail
  kDcaEncrypt = 2,   // domain-confidentiality-authority: unwraps inbound content keys
  kTls = 3,
  kAudit = 4,        // signs audit tree heads and ceremony transcripts
  kSpool = 5,        // AES: wraps spool data keys
  kArchive = 6,      // AES: wraps archive data keys (DE-21)
  kBackup = 7,       // AES: wraps keys for backup (ceremony only)
};
const char* PurposeName(Purpose p);
const char* KeyTypeName(KeyType t);

struct KeyPairSpec {
  KeyType type = KeyType::kRsa2048;
  Purpose purpose = Purpose::kDsaSign;
  std::string label;              // e.g. "dsa-sign-2026"; must be unique on the token
  bool backup_wrappable = false;  // extractable only when wrapped under a trusted key
  int64_t created_unix_s = 0;     // CKA_START_DATE of the pair (key age, SEE-2.3); 0: now
};

struct KeyPair {
  CK_OBJECT_HANDLE priv = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE;
  std::string label;
  std::vector<uint8_t> id;        // CKA_ID shared by key pair and certificate
  Purpose purpose = Purpose::kDsaSign;
};

enum class SignMechanism { kRsaPkcs1Sha256, kRsaPssSha256, kEcdsaSha256, kRsaPkcs1Sha384, kEcdsaSha384 };
// OAEP with SHA-256 is what RFC 8551 prefers; SoftHSM 2.6 implements OAEP with SHA-1 only and
// answers CKR_ARGUMENTS_BAD (INVALID_ARGUMENT here) to SHA-256, so callers fall back.
enum class DecryptMechanism { kRsaOaepSha256, kRsaOaepSha1, kRsaPkcs1 };

Result<KeyPair> GenerateKeyPair(Session& s, const KeyPairSpec& spec);
// FindKeyPair: by label; NotFound when absent.
Result<KeyPair> FindKeyPair(Session& s, const std::string& label);
// Sign hashes `data` (SHA-256/384) and signs the digest inside the token.
Result<std::string> Sign(Session& s, CK_OBJECT_HANDLE key, SignMechanism mech, std::string_view data);
// SignDigest signs an already computed digest (CMS signed attributes are hashed by OpenSSL).
Result<std::string> SignDigest(Session& s, CK_OBJECT_HANDLE key, SignMechanism mech, std::string_view digest);
Result<std::string> Decrypt(Session& s, CK_OBJECT_HANDLE key, DecryptMechanism mech, std::string_view ciphertext);
// PublicKey builds an OpenSSL public key from the token's public object (caller frees).
Result<EVP_PKEY*> PublicKey(Session& s, CK_OBJECT_HANDLE pub);
// Attribute reads one attribute (public ones only; sensitive ones fail with PERMISSION_DENIED).
Result<std::string> Attribute(Session& s, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type);
Result<bool> BoolAttribute(Session& s, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type);

// AES keys for wrapping (spool, archive, backup). `trusted` marks a key that may wrap
// CKA_WRAP_WITH_TRUSTED keys; the token refuses it outside an SO session
// (CKR_ATTRIBUTE_READ_ONLY). Never extractable.
Result<CK_OBJECT_HANDLE> GenerateAesKey(Session& s, const std::string& label, Purpose purpose,
                                        size_t bits = 256, bool trusted = false);
Result<CK_OBJECT_HANDLE> FindSecretKey(Session& s, const std::string& label);
// WrapKey / UnwrapKey with AES key wrap with padding (RFC 5649). SoftHSM 2.6 numbers this
// mechanism 0x210A (its CKM_AES_KEY_WRAP_PAD); PKCS#11 3.0's CKM_AES_KEY_WRAP_KWP is 0x210B.
Result<std::string> WrapKey(Session& s, CK_OBJECT_HANDLE wrapping, CK_OBJECT_HANDLE key);
// UnwrapPrivateKey creates a sensitive, non-extractable private key from `wrapped` with the
// given label, CKA_ID and purpose.
Result<CK_OBJECT_HANDLE> UnwrapPrivateKey(Session& s, CK_OBJECT_HANDLE wrapping, std::string_view wrapped,
                                          CK_KEY_TYPE key_type, const std::string& label,
                                          const std::vector<uint8_t>& id, Purpose purpose);

// Envelope encryption for bulk data (spool files DE-22, archive copies DE-21): the data key
// is a random AES-256 key used in software (AES-NI); only its wrapped form is stored. The KEK
// (a Purpose::kSpool / kArchive key made by GenerateAesKey) never leaves the token.
// NewDataKey draws a fresh 256-bit data key from OpenSSL's DRBG.
Result<Secret> NewDataKey();
// WrapDataKey wraps `data_key` under `kek` inside the token (RFC 5649).
Result<std::string> WrapDataKey(Session& s, CK_OBJECT_HANDLE kek, const Secret& data_key);
// UnwrapDataKey gives the data key back for use in software; the token does the unwrapping.
Result<Secret> UnwrapDataKey(Session& s, CK_OBJECT_HANDLE kek, std::string_view wrapped);

// The same envelope through any PKCS#11 front end: RFC 3394 AES key wrap computed from AES
// block operations (CKM_AES_ECB) done by the token with `kek`, which must be an AES key made
// for it (GenerateAesBlockKek: CKA_ENCRYPT/CKA_DECRYPT, never extractable). p11-kit's RPC
// (the token holder, issue #18) forwards only mechanisms it can serialise — of AES, ECB and
// key generation — so CKM_AES_KEY_WRAP(_PAD) cannot reach the token through it. Unwrapping
// checks RFC 3394's integrity value: a damaged or foreign wrapped key is DataLoss.
Result<CK_OBJECT_HANDLE> GenerateAesBlockKek(Session& s, const std::string& label, Purpose purpose);
Result<std::string> KwWrapDataKey(Session& s, CK_OBJECT_HANDLE kek, const Secret& data_key);
Result<Secret> KwUnwrapDataKey(Session& s, CK_OBJECT_HANDLE kek, std::string_view wrapped);

}  // namespace mailseal::hsm

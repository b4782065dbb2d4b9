// backup.h — key backup and restore under an M-of-N quorum (the backup/restore ceremonies).
//
// Backup: a fresh 256-bit key-encryption key (KEK) is drawn from OpenSSL's DRBG, imported into
// the token as a session object (never stored), every backup-wrappable key is wrapped under it
// inside the token (AES key wrap with padding), the KEK is split M of N with Shamir, and share
// i is encrypted to custodian i's certificate (CMS AuthEnvelopedData, AES-256-GCM). The KEK is
// then destroyed on the token and wiped in memory. What is left: one KeyBackup (wrapped keys,
// public keys, a check value of the KEK) and N share files, each readable only by its custodian
// (with `openssl cms -decrypt`, so no mailseal software is needed on a custodian's machine).
//
// Restore: M decrypted shares rebuild the KEK; it must match kek_check (a wrong, repeated or
// foreign share is refused); the keys are unwrapped into the target token as sensitive,
// non-extractable keys with their labels and CKA_IDs, and each is proved by a test signature
// against its backed-up public key. On any failure nothing stays on the token.
//
// SECURITY: the KEK exists in clear only in this process's memory during the ceremony (and in
// the token); shares travel encrypted to their custodians. Keys that were not generated
// backup-wrappable cannot be backed up (the token refuses to wrap them).
#pragma once

#include <openssl/evp.h>

#include <string>
#include <vector>

#include "dataplane/base/status.h"
#include "hsm/keys.h"
#include "mailseal/v1/hsm.pb.h"

namespace mailseal::hsm {

struct Custodian {
  std::string name;
  std::string cert_pem;   // the custodian's X.509 certificate; the share is encrypted to it
};

struct BackupBundle {
  mailseal::v1::KeyBackup backup;
  std::vector<std::string> share_files;   // CMS DER, share_files[i] for custodians[i]
};

Result<BackupBundle> CreateBackup(Session& s, const std::string& token_label,
                                  const std::vector<std::string>& key_labels,
                                  const std::vector<Custodian>& custodians, unsigned threshold);

// OpenShareFile: what a custodian does with their key (or `openssl cms -decrypt`).
Result<mailseal::v1::KeyShare> OpenShareFile(const std::string& cms_der, EVP_PKEY* custodian_key,
                                             const std::string& custodian_cert_pem);

// RestoreBackup puts the backed-up keys on the token of `s` (logged in as user).
Result<std::vector<KeyPair>> RestoreBackup(Session& s, const mailseal::v1::KeyBackup& backup,
                                           const std::vector<mailseal::v1::KeyShare>& shares);

}  // namespace mailseal::hsm
